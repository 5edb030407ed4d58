"""Modules to tensors and back: build the architecture, replay its recipe, load the tensors.

A recipe step (say, dynamic quantization) is the recipe of a compression method
(:data:`workers.compression.METHODS`) with two halves: ``rebuild`` turns the freshly built
float module into the right skeleton, and ``export``/``load`` move its tensors to and from a
flat safetensors dict. Nothing unpickles.
"""

from __future__ import annotations

from torch import nn

from shared.errors import IntegrityError
from shared.manifest import Manifest
from workers.artifacts import Tensors
from workers.compression import METHODS
from workers.zoo.models import create_model


def export_tensors(module: nn.Module, manifest: Manifest) -> Tensors:
    """The flat tensors to store for ``module`` (the last recipe step decides the format)."""
    if manifest.recipe:
        return METHODS.recipe(manifest.recipe[-1]["method"]).export(module)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def build_module(manifest: Manifest, tensors: Tensors) -> nn.Module:
    """Rebuild the stored module in eval mode on the CPU."""
    module = create_model(manifest.arch, **manifest.arch_kwargs)
    for step in manifest.recipe:
        module = METHODS.recipe(step["method"]).rebuild(module, step)
    try:
        if manifest.recipe:
            METHODS.recipe(manifest.recipe[-1]["method"]).load(module, tensors)
        else:
            module.load_state_dict(tensors, strict=True)
    except (RuntimeError, KeyError) as e:
        raise IntegrityError(f"stored tensors do not fit {manifest.arch}: {e}") from e
    return module.eval()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
