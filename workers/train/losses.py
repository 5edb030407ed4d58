"""Loss functions by name, and the explicit L2 penalty term."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import InvalidJob
from shared.jobs import LossSpec
from workers.catalog import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LossBuilder = Callable[[LossSpec, int], LossFn]
LOSSES: Registry[LossBuilder] = Registry("loss", InvalidJob)


def one_hot_targets(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Class indices -> float one-hot rows, smoothed towards uniform by ``smoothing``."""
    hot = F.one_hot(targets, num_classes).float()
    return hot * (1 - smoothing) + smoothing / num_classes


@LOSSES.register("cross_entropy")
def cross_entropy(spec: LossSpec, num_classes: int) -> LossFn:
    return nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)


@LOSSES.register("bce")
def bce(spec: LossSpec, num_classes: int) -> LossFn:
    """One independent sigmoid per class against one-hot targets (BCE with logits)."""
    return _against_one_hot(nn.BCEWithLogitsLoss(), spec, num_classes)


@LOSSES.register("mse")
def mse(spec: LossSpec, num_classes: int) -> LossFn:
    """Squared error between the raw outputs and one-hot targets."""
    return _against_one_hot(nn.MSELoss(), spec, num_classes)


def _against_one_hot(criterion: nn.Module, spec: LossSpec, num_classes: int) -> LossFn:
    """``criterion`` applied to the logits and the (smoothed) one-hot class targets."""

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return criterion(logits, one_hot_targets(targets, num_classes, spec.label_smoothing))

    return loss


def build_loss(spec: LossSpec, num_classes: int) -> LossFn:
    """The loss the spec names, for ``num_classes`` outputs and class-index targets."""
    return LOSSES.get(spec.name)(spec, num_classes)


def l2_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """``strength * sum(w ** 2)`` over every trainable parameter, to add to the loss."""
    squares = [p.pow(2).sum() for p in model.parameters() if p.requires_grad]
    return strength * torch.stack(squares).sum()
