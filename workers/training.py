"""Training jobs: ``execute(job, ctx)`` trains, checkpoints every epoch, registers the best epoch.

The pieces (loaders, optimizers, schedules, losses, initialisation, the epoch loop) live in
``workers.train``; this module wires them to a :class:`JobContext`: the artifact store for
checkpoints and weights, the registry for versions and aliases, the progress callback.

A job that finds a checkpoint under its id (a redelivery after its worker died) resumes
after the last finished epoch. Each epoch reseeds from ``(seed, epoch)``, so a resumed run
follows the same path as one that was never interrupted.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import redis
import torch
from torch import nn

from shared.errors import BrokerUnavailable, InvalidJob, ResourceExhausted, TrainingDiverged
from shared.jobs import EpochRecord, Scalar, TrainJob, TrainResult
from shared.manifest import Manifest
from shared.registry import BASE_VARIANT, VariantRecord
from workers.context import JobContext
from workers.modelio import count_parameters
from workers.train.checkpoint import (
    Tensors,
    optimizer_from_flat,
    optimizer_to_flat,
    prefixed,
    unprefixed,
)
from workers.train.data import Loader, build_loaders, check_batch_size
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
from workers.zoo.datasets import DatasetBundle, load_dataset
from workers.zoo.models import create_model

__all__ = [
    "RunState",
    "build_model",
    "build_parts",
    "execute",
    "fit",
    "run_epoch",
    "seed_everything",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
MODEL_PREFIX = "model."
BEST_PREFIX = "best."


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


# ------------------------------------------------------------------ checkpoints
def job_digest(job: TrainJob) -> str:
    """Fingerprint of the spec, so a checkpoint is only resumed by the job that wrote it."""
    return hashlib.sha256(job.model_dump_json(exclude={"aliases"}).encode()).hexdigest()


def save_checkpoint(ctx: JobContext, job: TrainJob, parts: TrainParts, run: RunState) -> None:
    """Model, best weights and optimizer state as tensors; the rest as JSON."""
    optim_tensors, optim_meta = optimizer_to_flat(parts.optimizer)
    tensors = {
        **prefixed(parts.model.state_dict(), MODEL_PREFIX),
        **prefixed(run.best_weights, BEST_PREFIX),
        **optim_tensors,
    }
    meta = {
        "format": CHECKPOINT_FORMAT,
        "job_digest": job_digest(job),
        "epoch": run.epoch,
        "seed": job.seed,
        "optimizer": optim_meta,
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        **run.meta(),
    }
    ctx.store.put_checkpoint(ctx.job_id, tensors, meta)


def resume(ctx: JobContext, job: TrainJob, parts: TrainParts, run: RunState) -> int | None:
    """Load the job's checkpoint if there is one; returns the epochs it had finished."""
    found = ctx.store.get_checkpoint(ctx.job_id)
    if found is None:
        return None
    tensors, meta = found
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("job_digest") != job_digest(job):
        log.warning("job %s: ignoring a checkpoint written for another spec", ctx.job_id)
        return None
    parts.model.load_state_dict(unprefixed(tensors, MODEL_PREFIX))
    optimizer_from_flat(parts.optimizer, tensors, meta["optimizer"])
    parts.scheduler.load_state_dict(meta["scheduler"])
    if meta["scaler"]:
        parts.scaler.load_state_dict(meta["scaler"])
    run.restore(meta, unprefixed(tensors, BEST_PREFIX))
    log.info("job %s: resuming after epoch %d", ctx.job_id, run.epoch)
    return run.epoch


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


def fit(
    job: TrainJob,
    ctx: JobContext,
    parts: TrainParts,
    run: RunState,
    loaders: tuple[Loader, Loader],
    shuffle: torch.Generator,
) -> None:
    """Train the epochs the run has not finished yet, checkpointing and reporting after each."""
    train, val = loaders
    reporter = ProgressReporter(
        ctx.progress, epochs=job.epochs, steps=len(train), first_epoch=run.epoch + 1
    )
    try:
        for epoch in range(run.epoch + 1, job.epochs + 1):
            if run.stopped_early:
                break
            reseed_epoch(job.seed, epoch, shuffle)
            run.add(run_epoch(parts, train, val, epoch, reporter), parts.model)
            save_checkpoint(ctx, job, parts, run)
            reporter.epoch_end(run.history[-1])
    except torch.OutOfMemoryError as e:
        raise ResourceExhausted(
            f"out of memory on {ctx.device} at batch size {job.batch_size}: {e}"
        ) from e


def execute(job: TrainJob, ctx: JobContext) -> TrainResult:
    """Train ``job`` on ``ctx.device``, resuming from a checkpoint, and register the best epoch.

    Raises :class:`InputError` subclasses for jobs that cannot work (unknown names, missing
    data, a batch larger than the data, an architecture that does not fit, a diverging loss)
    and :class:`ResourceExhausted` when the device runs out of memory (the job is retried and
    resumes from its last checkpoint). Nothing is registered unless training finished.
    """
    started = time.perf_counter()
    seed_everything(job.seed)
    bundle = load_dataset(job.dataset)
    check_batch_size(job.batch_size, bundle)
    model, arch_kwargs = build_model(job, bundle)
    model.to(ctx.device)
    shuffle = torch.Generator()
    train, val = build_loaders(bundle, job.batch_size, ctx.device, shuffle)
    parts = build_parts(job, model, bundle.num_classes, len(train), ctx.device)
    run = RunState(stopper=EarlyStopping.from_spec(job.early_stopping))
    resumed_from = resume(ctx, job, parts, run)
    fit(job, ctx, parts, run, (train, val), shuffle)
    digest, size_bytes = register(job, ctx, bundle, arch_kwargs, parts, run, resumed_from)
    return TrainResult(
        job_id=ctx.job_id,
        model=job.model_name,
        version=run.version or 0,
        model_digest=digest,
        arch=job.arch,
        history=run.history,
        best_epoch=run.best_epoch,
        best_val_accuracy=run.best_val_accuracy,
        stopped_early=run.stopped_early,
        resumed_from_epoch=resumed_from,
        parameters=count_parameters(model),
        size_bytes=size_bytes,
        seconds=time.perf_counter() - started,
        worker=ctx.worker,
        device=str(ctx.device),
    )


# ------------------------------------------------------------------ registration
def best_metrics(run: RunState, parameters: int) -> dict[str, Any]:
    """The metrics registered with the model: those of its best epoch."""
    best = run.history[run.best_epoch - 1]
    return {
        "val_accuracy": best.val_accuracy,
        "val_loss": best.val_loss,
        "train_loss": best.train_loss,
        "train_accuracy": best.train_accuracy,
        "best_epoch": run.best_epoch,
        "epochs_run": run.epoch,
        "stopped_early": run.stopped_early,
        "parameters": parameters,
    }


def lineage(job: TrainJob, ctx: JobContext, resumed_from: int | None) -> dict[str, Any]:
    """Where the model came from: data, hyper-parameters, job and worker."""
    hyper = job.model_dump(
        mode="json", exclude={"kind", "schema_version", "model_name", "dataset", "aliases"}
    )
    return {
        "job_id": ctx.job_id,
        "dataset": job.dataset.model_dump(mode="json"),
        "hyperparameters": hyper,
        "worker": ctx.worker,
        "device": str(ctx.device),
        "resumed_from_epoch": resumed_from,
        "torch": torch.__version__,
    }


def register(
    job: TrainJob,
    ctx: JobContext,
    bundle: DatasetBundle,
    arch_kwargs: dict[str, Scalar],
    parts: TrainParts,
    run: RunState,
    resumed_from: int | None,
) -> tuple[str, int]:
    """Store the best weights and register them as a new version; returns digest and size.

    The version number is saved in the checkpoint before it is used, so a job redelivered
    after this point registers under the same version instead of a second one.
    """
    metrics = best_metrics(run, count_parameters(parts.model))
    manifest = Manifest(
        arch=job.arch,
        arch_kwargs=dict(arch_kwargs),
        input_shape=list(bundle.input_shape),
        num_classes=bundle.num_classes,
        class_names=bundle.class_names,
        preprocessing=bundle.preprocessing,
        metrics=metrics,
        lineage=lineage(job, ctx, resumed_from),
    )
    stored = ctx.store.put_model(run.best_weights, manifest)
    record = VariantRecord(
        digest=stored.sha256, arch=job.arch, method="train", metrics=metrics, job_id=ctx.job_id
    )
    try:
        if run.version is None:
            run.version = ctx.registry.new_version(job.model_name)
            save_checkpoint(ctx, job, parts, run)
        ctx.registry.register(job.model_name, run.version, BASE_VARIANT, record)
        for alias in job.aliases:
            ctx.registry.set_alias(job.model_name, alias, run.version)
    except redis.RedisError as e:
        raise BrokerUnavailable(
            f"could not register {job.model_name} in Redis ({e}); the job is retried and "
            "resumes from its checkpoint"
        ) from e
    return stored.sha256, stored.size_bytes
