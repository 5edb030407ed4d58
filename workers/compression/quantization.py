"""Int8 quantization on the CPU: dynamic (Linear) and static post-training (CNNs).

Measured on this project's x86 CPU (docs/compression.md): torch.ao's fbgemm/x86 kernels
run 2.5-7x faster than float here, while torchao's eager int8 configs ran slower than float
without ``torch.compile``. So both methods use torch.ao (eager ``quantize_dynamic``, FX graph
mode ``prepare_fx``/``convert_fx`` for static).

Storage without pickle: a quantized state dict holds quantized tensors and packed-parameter
tuples, which safetensors cannot hold. :func:`encode_state` flattens them into plain
tensors (int8 values, scales, zero points, axis); :func:`decode_state` rebuilds them using
the freshly quantized skeleton's own state dict as the template. The skeleton itself comes
from replaying the quantization on the float architecture (``RECIPES`` ``rebuild``).
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from shared.errors import CompressionError
from shared.jobs import QuantizeDynamicStep, QuantizeStaticStep
from workers.artifacts import Tensors
from workers.compression.methods import METHODS
from workers.compression.steps import ModelState, StepEnv, float_copy, loader

SEP = "::"
PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)
PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)
DYNAMIC_LAYERS: set[type[nn.Module]] = {nn.Linear}


# ------------------------------------------------------------------ the pure codec
def encode_state(state: dict[str, Any]) -> Tensors:
    """A quantized (or plain) state dict as flat, plain tensors that safetensors can hold."""
    out: Tensors = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out.update(_encode_tensor(key, value))
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if isinstance(item, torch.Tensor):
                    out.update(_encode_tensor(f"{key}{SEP}{i}", item))
                elif item is not None:
                    raise CompressionError(f"cannot store {key}[{i}] ({type(item).__name__})")
        elif not isinstance(value, torch.dtype):  # dtypes are rebuilt by the recipe
            raise CompressionError(f"cannot store {key} ({type(value).__name__}) without pickle")
    return out


def decode_state(tensors: Tensors, template: dict[str, Any]) -> dict[str, Any]:
    """Invert :func:`encode_state`, shaped like ``template`` (the rebuilt module's state)."""
    used: set[str] = set()
    state: dict[str, Any] = OrderedDict()
    # Quantized modules read their state-dict format version from this metadata.
    state._metadata = getattr(template, "_metadata", None)  # type: ignore[attr-defined]
    for key, ref in template.items():
        if isinstance(ref, torch.Tensor):
            state[key] = _decode_tensor(key, ref, tensors, used)
        elif isinstance(ref, tuple):
            state[key] = tuple(
                None if item is None else _decode_tensor(f"{key}{SEP}{i}", item, tensors, used)
                for i, item in enumerate(ref)
            )
        else:
            state[key] = ref
    extra = sorted(set(tensors) - used)
    if extra:
        raise KeyError(f"stored tensors the model does not have: {extra[:5]}")
    return state


def _encode_tensor(key: str, t: torch.Tensor) -> Tensors:
    t = t.detach()
    if not t.is_quantized:
        return {key: t.clone()}
    parts = {f"{key}{SEP}int": t.int_repr()}
    if t.qscheme() in PER_TENSOR:
        parts[f"{key}{SEP}scale"] = torch.tensor([t.q_scale()], dtype=torch.float64)
        parts[f"{key}{SEP}zero_point"] = torch.tensor([t.q_zero_point()], dtype=torch.int64)
    elif t.qscheme() in PER_CHANNEL:
        parts[f"{key}{SEP}scales"] = t.q_per_channel_scales().clone()
        parts[f"{key}{SEP}zero_points"] = t.q_per_channel_zero_points().clone()
        parts[f"{key}{SEP}axis"] = torch.tensor([t.q_per_channel_axis()], dtype=torch.int64)
    else:
        raise CompressionError(f"cannot store {key}: unsupported qscheme {t.qscheme()}")
    return parts


def _decode_tensor(key: str, ref: torch.Tensor, tensors: Tensors, used: set[str]) -> torch.Tensor:
    if not ref.is_quantized:
        used.add(key)
        return tensors[key]
    values = tensors[f"{key}{SEP}int"]
    used.add(f"{key}{SEP}int")
    if ref.qscheme() in PER_TENSOR:
        names: tuple[str, ...] = ("scale", "zero_point")
        used.update(f"{key}{SEP}{n}" for n in names)
        scale = float(tensors[f"{key}{SEP}scale"].item())
        zero_point = int(tensors[f"{key}{SEP}zero_point"].item())
        return torch._make_per_tensor_quantized_tensor(values, scale, zero_point)
    names = ("scales", "zero_points", "axis")
    used.update(f"{key}{SEP}{n}" for n in names)
    return torch._make_per_channel_quantized_tensor(
        values,
        tensors[f"{key}{SEP}scales"],
        tensors[f"{key}{SEP}zero_points"],
        int(tensors[f"{key}{SEP}axis"].item()),
    )


# ------------------------------------------------------------------ module surgery
def set_engine(name: str) -> None:
    if name not in torch.backends.quantized.supported_engines:
        raise CompressionError(
            f"quantized engine {name!r} is not available on this worker; it has "
            f"{torch.backends.quantized.supported_engines}"
        )
    torch.backends.quantized.engine = name


def quantize_dynamic_module(module: nn.Module, *, per_channel: bool) -> nn.Module:
    """Dynamic int8 of every Linear layer (weights int8, activations quantized per batch)."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig
    from torch.ao.quantization import quantize_dynamic as ao_quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    spec = dict.fromkeys(DYNAMIC_LAYERS, qconfig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ao_quantize_dynamic(module, spec, dtype=torch.qint8)


def prepare_static(module: nn.Module, example: torch.Tensor, backend: str) -> nn.Module:
    """FX graph-mode prepare: fuse conv/bn/relu and insert observers."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_fx(module.eval(), get_default_qconfig_mapping(backend), (example,))


def convert_static(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared)  # type: ignore[arg-type]


def has_layers(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> bool:
    return any(isinstance(m, kinds) for m in module.modules())


# ------------------------------------------------------------------ step handlers
@METHODS.step(QuantizeDynamicStep, tag="int8dyn")
def quantize_dynamic_step(step: QuantizeDynamicStep, state: ModelState, env: StepEnv) -> ModelState:
    module = float_copy(state, step.method).cpu().eval()
    if not has_layers(module, tuple(DYNAMIC_LAYERS)):
        raise CompressionError("quantize_dynamic: the model has no Linear layer to quantize")
    set_engine("x86")
    quantized = quantize_dynamic_module(module, per_channel=step.per_channel)
    recipe = {"method": step.method, "per_channel": step.per_channel, "engine": "x86"}
    notes = ("int8 kernels run on the CPU; latency measured there",)
    return state.advance(
        step.method, module=quantized, manifest=state.with_recipe_step(recipe), add_notes=notes
    )


@METHODS.step(QuantizeStaticStep, tag="int8")
def quantize_static_step(step: QuantizeStaticStep, state: ModelState, env: StepEnv) -> ModelState:
    module = float_copy(state, step.method).cpu().eval()
    if not has_layers(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        raise CompressionError("quantize_static: the model has no Conv or Linear layer")
    set_engine(step.backend)
    example = torch.zeros(1, *state.manifest.input_shape)
    try:
        prepared = prepare_static(module, example, step.backend)
    except Exception as e:  # FX tracing fails on data-dependent control flow
        raise CompressionError(f"quantize_static: the model cannot be FX-traced: {e}") from e
    seen = 0
    with torch.inference_mode():
        for images, _ in loader(env.train, step.batch_size, shuffle=True, seed=0):
            prepared(images[: step.calibration_samples - seen])
            seen += min(len(images), step.calibration_samples - seen)
            if seen >= step.calibration_samples:
                break
    quantized = convert_static(prepared)
    recipe = {
        "method": step.method,
        "backend": step.backend,
        "input_shape": list(state.manifest.input_shape),
    }
    notes = (f"calibrated on {seen} training samples; int8 kernels run on the CPU",)
    return state.advance(
        step.method, module=quantized, manifest=state.with_recipe_step(recipe), add_notes=notes
    )


# ------------------------------------------------------------------ recipes
class _QuantizedRecipe:
    """Shared export/load: the codec over the quantized module's state dict."""

    def export(self, module: nn.Module) -> Tensors:
        return encode_state(module.state_dict())

    def load(self, module: nn.Module, tensors: Tensors) -> None:
        module.load_state_dict(decode_state(tensors, module.state_dict()), strict=True)


class DynamicRecipe(_QuantizedRecipe):
    def rebuild(self, module: nn.Module, params: dict[str, Any]) -> nn.Module:
        set_engine(str(params.get("engine", "x86")))
        return quantize_dynamic_module(module.eval(), per_channel=bool(params["per_channel"]))


class StaticRecipe(_QuantizedRecipe):
    def rebuild(self, module: nn.Module, params: dict[str, Any]) -> nn.Module:
        """Replay prepare/convert with a zero input: the stored tensors then replace every
        weight and quantization parameter, so the calibration data is not needed."""
        set_engine(str(params["backend"]))
        example = torch.zeros(1, *params["input_shape"])
        prepared = prepare_static(copy.deepcopy(module), example, str(params["backend"]))
        with torch.inference_mode():
            prepared(example)
        return convert_static(prepared)


METHODS.add_recipe(QuantizeDynamicStep, DynamicRecipe())
METHODS.add_recipe(QuantizeStaticStep, StaticRecipe())
