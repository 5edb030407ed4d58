"""Pruning: unstructured L1 (per layer or global) and structured channel pruning.

Unstructured pruning only writes zeros into dense weight tensors: the model keeps its
shapes, its file size and its speed on dense kernels. Structured pruning (torch-pruning's
dependency graph) removes whole channels, so the model really gets smaller and faster; its
manifest records every layer's new shape so a worker can rebuild the skeleton before
loading the weights (no pickle, no replay of the pruning).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from shared.errors import CompressionError
from shared.jobs import PruneGlobalStep, PruneL1Step, PruneStructuredStep
from workers.artifacts import Tensors
from workers.compression.methods import METHODS
from workers.compression.steps import (
    ModelState,
    StepEnv,
    first_inputs,
    float_copy,
)

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NO_SPEEDUP = (
    "unstructured pruning only zeroes weights: dense kernels do the same work, so expect "
    "no speed-up and no smaller file"
)


# ------------------------------------------------------------------ pure helpers
def prunable_layers(
    module: nn.Module, num_classes: int, *, include_classifier: bool
) -> list[tuple[str, nn.Module]]:
    """Conv and Linear layers with a weight, optionally leaving out the classifier."""
    layers: list[tuple[str, nn.Module]] = [
        (n, m) for n, m in module.named_modules() if isinstance(m, PRUNABLE)
    ]
    if not include_classifier:
        layers = [(n, m) for n, m in layers if not is_classifier(m, num_classes)]
    return layers


def is_classifier(layer: nn.Module, num_classes: int) -> bool:
    return isinstance(layer, nn.Linear) and layer.out_features == num_classes


def weight_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    """Every layer weight as a float tensor, quantized ones dequantized."""
    for layer in module.modules():
        weight = getattr(layer, "weight", None)
        if callable(weight) and ".quantized" in type(layer).__module__:
            weight = weight()
        if isinstance(weight, torch.Tensor) and weight.dim() > 1:
            yield weight.dequantize() if weight.is_quantized else weight.detach()


def sparsity(module: nn.Module) -> float:
    """The fraction of layer weights that are exactly zero."""
    total = zeros = 0
    for weight in weight_tensors(module):
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / total if total else 0.0


def layer_shapes(module: nn.Module) -> dict[str, dict[str, Any]]:
    """The shape-defining arguments of every layer structured pruning may change."""
    shapes: dict[str, dict[str, Any]] = {}
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            shapes[name] = {
                "in_channels": layer.in_channels,
                "out_channels": layer.out_channels,
                "groups": layer.groups,
            }
        elif isinstance(layer, nn.Linear):
            shapes[name] = {"in_features": layer.in_features, "out_features": layer.out_features}
        elif isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            shapes[name] = {"num_features": layer.num_features}
        elif isinstance(layer, nn.LayerNorm):
            shapes[name] = {"normalized_shape": list(layer.normalized_shape)}
    return shapes


def resized(layer: nn.Module, shape: dict[str, Any]) -> nn.Module:
    """A fresh layer like ``layer`` with the shape arguments in ``shape``."""
    if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return type(layer)(
            shape["in_channels"],
            shape["out_channels"],
            kernel_size=layer.kernel_size,  # type: ignore[arg-type]
            stride=layer.stride,  # type: ignore[arg-type]
            padding=layer.padding,  # type: ignore[arg-type]
            dilation=layer.dilation,  # type: ignore[arg-type]
            groups=shape["groups"],
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
    if isinstance(layer, nn.Linear):
        return nn.Linear(shape["in_features"], shape["out_features"], bias=layer.bias is not None)
    if isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
        return type(layer)(
            shape["num_features"],
            eps=layer.eps,
            momentum=layer.momentum,
            affine=layer.affine,
            track_running_stats=layer.track_running_stats,
        )
    if isinstance(layer, nn.LayerNorm):
        return nn.LayerNorm(
            shape["normalized_shape"],
            eps=layer.eps,
            elementwise_affine=layer.elementwise_affine,
            bias=layer.bias is not None,
        )
    raise CompressionError(f"cannot resize a {type(layer).__name__}")


def apply_shapes(module: nn.Module, shapes: dict[str, dict[str, Any]]) -> nn.Module:
    """Replace every layer whose recorded shape differs from the module's (in place)."""
    current = layer_shapes(module)
    for name, shape in shapes.items():
        if name not in current:
            raise CompressionError(f"the architecture has no layer {name!r} to resize")
        if current[name] != shape:
            module.set_submodule(name, resized(module.get_submodule(name), shape))
    return module


# ------------------------------------------------------------------ step handlers
def _to_prune(
    step: PruneL1Step | PruneGlobalStep, state: ModelState, env: StepEnv
) -> tuple[nn.Module, list[tuple[str, nn.Module]]]:
    """A float copy of the model and its layers that ``step`` may prune (an error if none)."""
    module = float_copy(state, step.method)
    layers = prunable_layers(module, env.num_classes, include_classifier=step.include_classifier)
    if not layers:
        raise CompressionError(f"{step.method}: the model has no Conv or Linear layer to prune")
    return module, layers


@METHODS.step(PruneL1Step, tag="l1")
def prune_l1_step(step: PruneL1Step, state: ModelState, env: StepEnv) -> ModelState:
    module, layers = _to_prune(step, state, env)
    for _, layer in layers:
        prune.l1_unstructured(layer, name="weight", amount=step.amount)
        prune.remove(layer, "weight")
    return state.advance(step.method, module=module, add_notes=(NO_SPEEDUP,))


@METHODS.step(PruneGlobalStep, tag="gl1")
def prune_global_step(step: PruneGlobalStep, state: ModelState, env: StepEnv) -> ModelState:
    module, layers = _to_prune(step, state, env)
    params = [(layer, "weight") for _, layer in layers]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=step.amount)
    for layer, name in params:
        prune.remove(layer, name)
    return state.advance(step.method, module=module, add_notes=(NO_SPEEDUP,))


@METHODS.step(PruneStructuredStep, tag="pruned")
def prune_structured_step(step: PruneStructuredStep, state: ModelState, env: StepEnv) -> ModelState:
    import torch_pruning as tp

    module = float_copy(state, step.method).cpu().eval()
    before = sum(p.numel() for p in module.parameters())
    example = first_inputs(env.val, 2)
    ignored = [m for _, m in module.named_modules() if is_classifier(m, env.num_classes)]
    try:
        pruner = tp.pruner.MetaPruner(
            module,
            example,
            importance=tp.importance.MagnitudeImportance(p=step.norm),
            pruning_ratio=step.amount,
            ignored_layers=ignored,
        )
        pruner.step()
    except Exception as e:  # the dependency graph could not be traced or pruned
        raise CompressionError(f"prune_structured: torch-pruning failed: {e}") from e
    after = sum(p.numel() for p in module.parameters())
    if after >= before:
        raise CompressionError(
            "prune_structured: no channel could be removed (the model has no Conv or hidden "
            "Linear layer outside the classifier)"
        )
    recipe = {"method": step.method, "shapes": layer_shapes(module)}
    notes = (f"structured: {before - after} of {before} parameters removed",)
    return state.advance(
        step.method,
        module=module.to(env.device),
        manifest=state.with_recipe_step(recipe),
        add_notes=notes,
    )


class StructuredRecipe:
    """Resize the float skeleton's layers; the weights are a plain state dict."""

    def rebuild(self, module: nn.Module, params: dict[str, Any]) -> nn.Module:
        return apply_shapes(module, params["shapes"])

    def export(self, module: nn.Module) -> Tensors:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def load(self, module: nn.Module, tensors: Tensors) -> None:
        module.load_state_dict(tensors, strict=True)


METHODS.add_recipe(PruneStructuredStep, StructuredRecipe())
