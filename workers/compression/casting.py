"""Half precision: weights in float16 or bfloat16, the GPU path for compression jobs.

The cast module is wrapped so that float32 inputs are cast in and logits cast back out;
the stored tensors are the half-precision state dict (safetensors holds both dtypes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shared.jobs import CastStep
from workers.artifacts import Tensors
from workers.compression.methods import METHODS
from workers.compression.steps import ModelState, StepEnv, float_copy

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class CastModel(nn.Module):
    """Runs ``inner`` in ``dtype``; takes and returns float32 tensors."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x.to(self.dtype))
        return out.float()


@METHODS.step(CastStep, tag="half")
def cast_step(step: CastStep, state: ModelState, env: StepEnv) -> ModelState:
    module = CastModel(float_copy(state, step.method).to(env.device), DTYPES[step.dtype])
    recipe = {"method": step.method, "dtype": step.dtype}
    notes = () if env.device.type == "cuda" else (f"{step.dtype} on a CPU: expect no speed-up",)
    return state.advance(
        step.method, module=module.eval(), manifest=state.with_recipe_step(recipe), add_notes=notes
    )


class CastRecipe:
    def rebuild(self, module: nn.Module, params: dict[str, Any]) -> nn.Module:
        return CastModel(module, DTYPES[str(params["dtype"])])

    def export(self, module: nn.Module) -> Tensors:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def load(self, module: nn.Module, tensors: Tensors) -> None:
        module.load_state_dict(tensors, strict=True)


METHODS.add_recipe(CastStep, CastRecipe())
