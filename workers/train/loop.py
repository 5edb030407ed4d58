"""One training epoch, one evaluation pass, early stopping and throttled progress reports."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from shared.errors import TrainingDiverged
from shared.jobs import AugmentSpec, EarlyStoppingSpec, EpochRecord
from workers.train.data import augment
from workers.train.losses import LossFn, l2_penalty

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
ProgressFn = Callable[[dict[str, Any]], None]
PROGRESS_INTERVAL_S = 0.5


@dataclass
class TrainParts:
    """Everything one optimizer step touches."""

    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    loss_fn: LossFn
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None = None
    l2_penalty: float = 0.0
    grad_clip: float | None = None
    augment: AugmentSpec = field(default_factory=AugmentSpec)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


@dataclass(frozen=True)
class EpochStats:
    loss: float
    accuracy: float
    lr: float


def amp_dtype_for(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16; no mixed precision off CUDA."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_scaler(amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A loss scaler, live only for fp16 (bf16 has the range of fp32)."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)


def train_step(
    parts: TrainParts, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, float, float]:
    """One optimizer and scheduler step: the logits, the data loss and the full objective."""
    parts.optimizer.zero_grad(set_to_none=True)
    with parts.autocast():
        logits = parts.model(images)
    data_loss = parts.loss_fn(logits.float(), labels)
    objective = data_loss
    if parts.l2_penalty:
        objective = data_loss + l2_penalty(parts.model, parts.l2_penalty)
    parts.scaler.scale(objective).backward()
    if parts.grad_clip is not None:
        parts.scaler.unscale_(parts.optimizer)
        nn.utils.clip_grad_norm_(parts.model.parameters(), parts.grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.scheduler.step()
    data_value, objective_value = torch.stack([data_loss.detach(), objective.detach()]).tolist()
    return logits.detach(), data_value, objective_value


def train_epoch(
    parts: TrainParts, batches: Batches, epoch: int, report: Callable[[int, float, float], None]
) -> EpochStats:
    """Train on every batch once; ``report(step, loss, accuracy)`` is called after each step.

    The loss reported is the data loss alone (without the L2 term), comparable with the
    validation loss. A non-finite loss raises :class:`TrainingDiverged` naming epoch and step.
    """
    parts.model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    lr = float(parts.optimizer.param_groups[0]["lr"])
    for step, (images, labels) in enumerate(batches, start=1):
        images = augment(images.to(parts.device, non_blocking=True), parts.augment)
        labels = labels.to(parts.device, non_blocking=True)
        lr = float(parts.optimizer.param_groups[0]["lr"])
        logits, data_loss, objective = train_step(parts, images, labels)
        if not math.isfinite(objective):
            raise TrainingDiverged(
                f"the loss became {objective} at epoch {epoch}, step {step} (lr {lr:.3g}); "
                "lower the learning rate, clip gradients or check the data"
            )
        n = labels.shape[0]
        loss_sum += data_loss * n
        correct += int((logits.argmax(1) == labels).sum())
        seen += n
        report(step, loss_sum / seen, correct / seen)
    return EpochStats(loss=loss_sum / max(seen, 1), accuracy=correct / max(seen, 1), lr=lr)


@torch.no_grad()
def evaluate(parts: TrainParts, batches: Batches) -> tuple[float, float]:
    """Mean loss and accuracy over ``batches`` in eval mode."""
    parts.model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in batches:
        images = images.to(parts.device, non_blocking=True)
        labels = labels.to(parts.device, non_blocking=True)
        with parts.autocast():
            logits = parts.model(images)
        loss_sum += parts.loss_fn(logits.float(), labels).item() * labels.shape[0]
        correct += int((logits.argmax(1) == labels).sum())
        seen += labels.shape[0]
    return loss_sum / max(seen, 1), correct / max(seen, 1)


@dataclass
class EarlyStopping:
    """Stop once the validation loss has not improved by ``min_delta`` for ``patience`` epochs."""

    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    bad_epochs: int = 0

    @classmethod
    def from_spec(cls, spec: EarlyStoppingSpec | None) -> EarlyStopping | None:
        return None if spec is None else cls(patience=spec.patience, min_delta=spec.min_delta)

    def update(self, val_loss: float) -> bool:
        """Record one epoch's validation loss; True means stop now."""
        if val_loss < self.best - self.min_delta:
            self.best, self.bad_epochs = val_loss, 0
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience


class ProgressReporter:
    """Sends step progress at most every ``interval`` seconds, and every epoch end."""

    def __init__(
        self,
        send: ProgressFn,
        *,
        epochs: int,
        steps: int,
        first_epoch: int = 1,
        interval: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.send = send
        self.epochs = epochs
        self.steps = steps
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.last_sent = -math.inf
        self.done_before = (first_epoch - 1) * steps  # steps finished before this run began

    def eta_s(self, epoch: int, step: int) -> float | None:
        done = (epoch - 1) * self.steps + step - self.done_before
        if done <= 0:
            return None
        remaining = self.epochs * self.steps - (epoch - 1) * self.steps - step
        return round((self.clock() - self.started) / done * remaining, 1)

    def step(self, epoch: int, step: int, loss: float, accuracy: float) -> None:
        now = self.clock()
        if now - self.last_sent < self.interval:
            return
        self.last_sent = now
        self.send(self._message(epoch, step, loss, accuracy))

    def epoch_end(self, record: EpochRecord) -> None:
        message = self._message(record.epoch, self.steps, record.train_loss, record.train_accuracy)
        message.update(val_loss=record.val_loss, val_accuracy=record.val_accuracy, lr=record.lr)
        self.last_sent = self.clock()
        self.send(message)

    def _message(self, epoch: int, step: int, loss: float, accuracy: float) -> dict[str, Any]:
        return {
            "stage": "train",
            "epoch": epoch,
            "epochs": self.epochs,
            "step": step,
            "steps": self.steps,
            "loss": round(loss, 6),
            "accuracy": round(accuracy, 6),
            "eta_s": self.eta_s(epoch, step),
        }
