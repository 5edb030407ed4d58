"""A training run's pure parts: seeding, the model sized by its dataset, the optimizer and
friends, the run's state after each epoch, and one epoch of training plus validation.

No store and no registry here: :mod:`workers.jobs.training` wires these to a job context.
Each epoch reseeds from ``(seed, epoch)``, so a resumed run follows the same path as one
that was never interrupted.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.errors import InvalidJob, TrainingDiverged
from shared.jobs import EpochRecord, Scalar, TrainJob
from workers.train.checkpoint import (
    Tensors,
    prefixed,
)
from workers.train.data import Loader
from workers.train.init import init_weights
from workers.train.loop import (
    EarlyStopping,
    ProgressReporter,
    TrainParts,
    amp_dtype_for,
    evaluate,
    make_scaler,
    train_epoch,
)
from workers.train.losses import build_loss
from workers.train.optim import build_optimizer, build_scheduler
from workers.zoo.datasets import DatasetBundle
from workers.zoo.models import create_model


# ------------------------------------------------------------------ seeding
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed % 2**63)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: depends on nothing but the job's seed and the epoch number."""
    return (seed * 1_000_003 + epoch) % 2**63


def reseed_epoch(seed: int, epoch: int, shuffle: torch.Generator) -> None:
    """Fix the shuffle order and every random draw (augmentation, dropout) of one epoch."""
    torch.manual_seed(epoch_seed(seed, epoch))
    shuffle.manual_seed(epoch_seed(seed, epoch) + 1)


# ------------------------------------------------------------------ building
def build_model(job: TrainJob, bundle: DatasetBundle) -> tuple[nn.Module, dict[str, Scalar]]:
    """The architecture sized by the dataset (the job's ``arch_kwargs`` win), initialised.

    One sample goes through it first, so an architecture that does not fit the input is an
    :class:`InvalidJob` before any training starts.
    """
    channels, size, _ = bundle.input_shape
    arch_kwargs: dict[str, Scalar] = {
        "num_classes": bundle.num_classes,
        "in_channels": channels,
        "image_size": size,
        **job.arch_kwargs,
    }
    model = create_model(job.arch, **arch_kwargs)
    init_weights(model, job.init)
    check_fits(model, bundle, job.arch)
    return model, arch_kwargs


def check_fits(model: nn.Module, bundle: DatasetBundle, arch: str) -> None:
    """A dry forward pass of one training sample; wrong shapes become :class:`InvalidJob`."""
    sample = bundle.train[0][0].unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample)
    except (RuntimeError, ValueError) as e:
        raise InvalidJob(
            f"architecture {arch!r} does not fit inputs of shape {list(sample.shape[1:])}: {e}"
        ) from e
    finally:
        model.train(was_training)
    if tuple(out.shape) != (1, bundle.num_classes):
        raise InvalidJob(
            f"architecture {arch!r} gives outputs of shape {list(out.shape[1:])} for a "
            f"{bundle.num_classes}-class dataset; leave num_classes out of arch_kwargs"
        )


def build_parts(
    job: TrainJob, model: nn.Module, num_classes: int, steps_per_epoch: int, device: torch.device
) -> TrainParts:
    """Optimizer, schedule, loss, mixed precision and step options for ``model`` on ``device``."""
    optimizer = build_optimizer(model, job.optimizer)
    amp_dtype = amp_dtype_for(device, job.amp)
    return TrainParts(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, job.schedule, steps_per_epoch, job.epochs),
        loss_fn=build_loss(job.loss, num_classes),
        scaler=make_scaler(amp_dtype),
        device=device,
        amp_dtype=amp_dtype,
        l2_penalty=job.optimizer.l2_penalty,
        grad_clip=job.grad_clip,
        augment=job.augment,
    )


# ------------------------------------------------------------------ run state
@dataclass
class RunState:
    """What a run knows after each epoch: the history, the best epoch and its weights."""

    stopper: EarlyStopping | None = None
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    best_weights: Tensors = field(default_factory=dict)
    stopped_early: bool = False
    version: int | None = None  # reserved in the registry; a redelivery re-uses it

    @property
    def epoch(self) -> int:
        """Epochs finished so far."""
        return len(self.history)

    def add(self, record: EpochRecord, model: nn.Module) -> None:
        """Record one epoch; keep the weights if its validation accuracy is the best yet."""
        self.history.append(record)
        if record.val_accuracy > self.best_val_accuracy:
            self.best_epoch, self.best_val_accuracy = record.epoch, record.val_accuracy
            self.best_weights = prefixed(model.state_dict(), "")
        if self.stopper is not None:
            self.stopped_early = self.stopper.update(record.val_loss)

    def meta(self) -> dict[str, Any]:
        return {
            "history": [r.model_dump(mode="json") for r in self.history],
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "early_stopping": asdict(self.stopper) if self.stopper else None,
            "stopped_early": self.stopped_early,
            "version": self.version,
        }

    def restore(self, meta: dict[str, Any], best_weights: Tensors) -> None:
        self.history = [EpochRecord.model_validate(r) for r in meta["history"]]
        self.best_epoch = meta["best_epoch"]
        self.best_val_accuracy = meta["best_val_accuracy"]
        self.best_weights = best_weights
        if self.stopper is not None and meta["early_stopping"]:
            self.stopper = EarlyStopping(**meta["early_stopping"])
        self.stopped_early = meta["stopped_early"]
        self.version = meta["version"]


# ------------------------------------------------------------------ training
def run_epoch(
    parts: TrainParts, train: Loader, val: Loader, epoch: int, reporter: ProgressReporter
) -> EpochRecord:
    """Train one epoch, then validate; the record that goes into the history."""
    started = time.perf_counter()

    def report(step: int, loss: float, accuracy: float) -> None:
        reporter.step(epoch, step, loss, accuracy)

    stats = train_epoch(parts, train, epoch, report)
    val_loss, val_accuracy = evaluate(parts, val)
    if not math.isfinite(val_loss):
        raise TrainingDiverged(
            f"the loss became {val_loss} on the validation set at epoch {epoch}, step "
            f"{len(train)} (the epoch's last); lower the learning rate or clip gradients"
        )
    return EpochRecord(
        epoch=epoch,
        train_loss=stats.loss,
        train_accuracy=stats.accuracy,
        val_loss=val_loss,
        val_accuracy=val_accuracy,
        lr=stats.lr,
        seconds=time.perf_counter() - started,
    )
