"""Optimizer state to flat safetensors tensors plus JSON, and back.

``Optimizer.state_dict()`` nests tensors (momentum buffers, Adam moments, step counts) inside
plain Python values. Tensors go to the safetensors blob under ``optim.{param}.{key}``; every
other value travels in the JSON meta. Nothing is pickled.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

Tensors = dict[str, torch.Tensor]
OPTIM_PREFIX = "optim."


def prefixed(tensors: Tensors, prefix: str) -> Tensors:
    """Copies of ``tensors`` on the CPU, with ``prefix`` before each name."""
    return {f"{prefix}{k}": v.detach().to("cpu", copy=True) for k, v in tensors.items()}


def unprefixed(tensors: Tensors, prefix: str) -> Tensors:
    """The tensors whose names start with ``prefix``, with the prefix taken off."""
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def optimizer_to_flat(optimizer: Optimizer) -> tuple[Tensors, dict[str, Any]]:
    """Split an optimizer's state into tensors and JSON-ready metadata."""
    state_dict = optimizer.state_dict()
    tensors: Tensors = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, state in state_dict["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIM_PREFIX}{index}.{key}"] = value.detach().to("cpu", copy=True)
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": plain}


def optimizer_from_flat(optimizer: Optimizer, tensors: Tensors, meta: dict[str, Any]) -> None:
    """Load what :func:`optimizer_to_flat` produced back into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in unprefixed(tensors, OPTIM_PREFIX).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta["state"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
