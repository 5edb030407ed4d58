"""What compression steps share: the running model state, the environment, helpers.

A handler (registered in :mod:`workers.compression.methods`) takes its config model, the
running :class:`ModelState` and the :class:`StepEnv`, and returns the next state. It never
mutates the state it was given (an earlier step's module may be emitted as a variant), so
handlers copy a module before changing it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from shared.errors import CompressionError
from shared.jobs import ExportArtifact
from shared.manifest import Manifest
from workers.artifacts import ArtifactStore

Runner = Callable[[torch.Tensor], torch.Tensor]
Sample = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class StepEnv:
    """What every step may use: the data, the device, and where export artifacts go."""

    train: Dataset[Sample]
    val: Dataset[Sample]
    num_classes: int
    device: torch.device
    store: ArtifactStore


@dataclass(frozen=True, kw_only=True)
class ModelState:
    """The running model between steps.

    ``manifest`` describes how to rebuild ``module`` from the float architecture (its
    ``recipe`` grows as steps change the module's skeleton). ``runner`` is set when the model
    is evaluated through something other than the eager module (ONNX Runtime, say).
    """

    module: nn.Module
    manifest: Manifest
    methods: tuple[str, ...] = ()
    exports: tuple[ExportArtifact, ...] = ()
    runner: Runner | None = None
    backend: str = "eager"
    notes: tuple[str, ...] = ()
    extra_metrics: dict[str, Any] = field(default_factory=dict)

    def advance(self, method: str, **changes: Any) -> ModelState:
        """The next state: ``method`` appended, fields in ``changes`` replaced."""
        notes = (*self.notes, *changes.pop("add_notes", ()))
        return replace(self, methods=(*self.methods, method), notes=notes, **changes)

    def with_recipe_step(self, step: dict[str, Any]) -> Manifest:
        return self.manifest.model_copy(update={"recipe": [*self.manifest.recipe, step]})


def float_copy(state: ModelState, method: str) -> nn.Module:
    """A trainable copy of the running module; quantized or exported models are refused."""
    if state.runner is not None:
        raise CompressionError(f"{method} cannot follow an export step; put exports last")
    if is_quantized(state.module):
        raise CompressionError(
            f"{method} needs a float model, but this one is quantized; put {method} before "
            "the quantize steps"
        )
    return copy.deepcopy(state.module)


def is_quantized(module: nn.Module) -> bool:
    return any(".quantized" in type(m).__module__ for m in module.modules())


def loader(data: Dataset[Sample], batch_size: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)


def first_inputs(data: Dataset[Sample], count: int) -> torch.Tensor:
    """The first ``count`` inputs of ``data`` (fewer if it is smaller), stacked."""
    size = min(count, len(data))  # type: ignore[arg-type]
    if size == 0:
        raise CompressionError("the dataset split is empty")
    return torch.stack([data[i][0] for i in range(size)])
