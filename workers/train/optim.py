"""Optimizers and learning-rate schedules by name.

A schedule is a pure function of the global step, so resuming a run needs only the step
counter (kept by ``LambdaLR``), and the curve can be tested without training anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from shared.errors import InvalidJob
from shared.jobs import OptimizerSpec, ScheduleSpec
from workers.catalog import Registry

Params = Iterable[torch.nn.Parameter]
OptimizerBuilder = Callable[[Params, OptimizerSpec], Optimizer]


@dataclass(frozen=True)
class Timeline:
    """Optimizer steps: per epoch, in the whole run, and in the warm-up."""

    per_epoch: int
    total: int
    warmup: int


ScheduleFn = Callable[[int, ScheduleSpec, Timeline], float]

OPTIMIZERS: Registry[OptimizerBuilder] = Registry("optimizer", InvalidJob)
SCHEDULES: Registry[ScheduleFn] = Registry("schedule", InvalidJob)

ONECYCLE_RISE = 0.3  # share of the steps spent rising when no warm-up is given
ONECYCLE_START = 1 / 25  # torch's OneCycleLR defaults: div_factor 25 ...
ONECYCLE_END = 1 / 25e4  # ... and final_div_factor 1e4


@OPTIMIZERS.register("sgd")
def sgd(params: Params, spec: OptimizerSpec) -> Optimizer:
    return torch.optim.SGD(
        params,
        lr=spec.lr,
        momentum=spec.momentum,
        nesterov=spec.nesterov,
        weight_decay=spec.weight_decay,
    )


@OPTIMIZERS.register("adam")
def adam(params: Params, spec: OptimizerSpec) -> Optimizer:
    return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params: Params, spec: OptimizerSpec) -> Optimizer:
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def build_optimizer(model: torch.nn.Module, spec: OptimizerSpec) -> Optimizer:
    """The optimizer the spec names over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS.get(spec.name)(params, spec)


def _cosine_between(start: float, end: float, t: float) -> float:
    """Cosine interpolation: ``start`` at t=0, ``end`` at t=1."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


@SCHEDULES.register("none")
def _constant(step: int, spec: ScheduleSpec, steps: Timeline) -> float:
    return 1.0


@SCHEDULES.register("step")
def _step(step: int, spec: ScheduleSpec, steps: Timeline) -> float:
    epochs_after_warmup = (step - steps.warmup) // steps.per_epoch
    return float(spec.gamma ** (epochs_after_warmup // spec.step_size))


@SCHEDULES.register("cosine")
def _cosine(step: int, spec: ScheduleSpec, steps: Timeline) -> float:
    return _cosine_between(1.0, 0.0, (step - steps.warmup) / max(1, steps.total - steps.warmup))


@SCHEDULES.register("onecycle")
def _onecycle(step: int, spec: ScheduleSpec, steps: Timeline) -> float:
    rise = steps.warmup or max(1, int(ONECYCLE_RISE * steps.total))
    if step < rise:  # reached only without an explicit warm-up
        return _cosine_between(ONECYCLE_START, 1.0, step / rise)
    return _cosine_between(1.0, ONECYCLE_END, (step - rise) / max(1, steps.total - rise))


def lr_factor(step: int, spec: ScheduleSpec, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    A linear warm-up over ``warmup_epochs`` comes first, then the named schedule.
    """
    steps = Timeline(
        per_epoch=steps_per_epoch,
        total=epochs * steps_per_epoch,
        warmup=spec.warmup_epochs * steps_per_epoch,
    )
    if step < steps.warmup:
        return (step + 1) / steps.warmup
    return SCHEDULES.get(spec.name)(step, spec, steps)


def build_scheduler(
    optimizer: Optimizer, spec: ScheduleSpec, steps_per_epoch: int, epochs: int
) -> LambdaLR:
    """A per-step scheduler following :func:`lr_factor`."""
    SCHEDULES.get(spec.name)  # an unknown name fails here, before any training
    fn = partial(lr_factor, spec=spec, steps_per_epoch=steps_per_epoch, epochs=epochs)
    return LambdaLR(optimizer, fn)
