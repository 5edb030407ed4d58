"""Modules to tensors and back: build the architecture, replay its recipe, load the tensors.

A recipe step (say, dynamic quantization) is a handler in ``RECIPES`` with two halves:
``rebuild`` turns the freshly built float module into the right skeleton, and the handler's
``export``/``load`` move its tensors to and from a flat safetensors dict. Nothing unpickles.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from shared.errors import CompressionError, IntegrityError
from shared.manifest import Manifest
from workers.registry import Registry
from workers.zoo.models import create_model

Tensors = dict[str, torch.Tensor]


class RecipeHandler(Protocol):
    def rebuild(self, module: nn.Module, params: dict[str, Any]) -> nn.Module: ...

    def export(self, module: nn.Module) -> Tensors: ...

    def load(self, module: nn.Module, tensors: Tensors) -> None: ...


RECIPES: Registry[RecipeHandler] = Registry("recipe step", CompressionError)


def recipe(method: str) -> RecipeHandler:
    """The handler of a recipe step; the compression package registers its own on import."""
    if method not in RECIPES:
        import workers.compression  # noqa: F401  (registers the compression recipes)
    return RECIPES.get(method)


def export_tensors(module: nn.Module, manifest: Manifest) -> Tensors:
    """The flat tensors to store for ``module`` (the last recipe step decides the format)."""
    if manifest.recipe:
        return recipe(manifest.recipe[-1]["method"]).export(module)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def build_module(manifest: Manifest, tensors: Tensors) -> nn.Module:
    """Rebuild the stored module in eval mode on the CPU."""
    module = create_model(manifest.arch, **manifest.arch_kwargs)
    for step in manifest.recipe:
        module = recipe(step["method"]).rebuild(module, step)
    try:
        if manifest.recipe:
            recipe(manifest.recipe[-1]["method"]).load(module, tensors)
        else:
            module.load_state_dict(tensors, strict=True)
    except (RuntimeError, KeyError) as e:
        raise IntegrityError(f"stored tensors do not fit {manifest.arch}: {e}") from e
    return module.eval()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
