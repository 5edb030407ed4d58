"""Weight initialisation by name: the framework's default, or the source's scheme."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from shared.errors import InvalidJob
from workers.catalog import Registry

Initializer = Callable[[nn.Module], None]
INITS: Registry[Initializer] = Registry("weight init", InvalidJob)


@INITS.register("default")
def default_init(model: nn.Module) -> None:
    """Keep what each layer's constructor chose."""


@INITS.register("source")
def source_init(model: nn.Module) -> None:
    """Kaiming-normal convolutions, batch-norm at 1/0, linear layers N(0, 0.01), zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_weights(model: nn.Module, name: str) -> None:
    """Apply the named initialisation in place."""
    INITS.get(name)(model)
