"""Compression steps: one config model per method, told apart by ``method``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
)

from shared.jobs.refs import (
    MODEL_NAME_PATTERN,
    ArchKwargs,
    Strict,
)

# ---------------------------------------------------------------- compression
RESERVED_VARIANTS = frozenset({"base"})


def _check_variant(name: str | None) -> str | None:
    if name in RESERVED_VARIANTS:
        raise ValueError(f"variant name {name!r} is reserved for the source model")
    return name


VariantName = Annotated[
    str | None, Field(default=None, pattern=MODEL_NAME_PATTERN), AfterValidator(_check_variant)
]


class StepSpec(Strict):
    """Fields every compression step shares.

    Steps run in order on one running model. A step that sets ``variant`` emits the model
    as it stands after that step as a variant of that name; the last step always emits
    one (named from the methods applied when it sets no ``variant``).
    """

    variant: VariantName = None


class QuantizeDynamicStep(StepSpec):
    """Dynamic int8 quantization of Linear (and LSTM) layers (torch.ao, x86/fbgemm kernels)."""

    method: Literal["quantize_dynamic"] = "quantize_dynamic"
    per_channel: bool = Field(default=False, description="Per-output-channel weight scales.")


class QuantizeStaticStep(StepSpec):
    """Post-training static int8 (weights and activations) with calibration on training data."""

    method: Literal["quantize_static"] = "quantize_static"
    calibration_samples: int = Field(default=256, ge=1, le=100_000)
    batch_size: int = Field(default=64, ge=1, le=4096)
    backend: Literal["x86", "fbgemm", "qnnpack", "onednn"] = "x86"


class PruneL1Step(StepSpec):
    """Unstructured L1 pruning of each Conv/Linear weight (zeros only: no dense speed-up)."""

    method: Literal["prune_l1"] = "prune_l1"
    amount: float = Field(default=0.5, gt=0, lt=1, description="Fraction of weights zeroed.")
    include_classifier: bool = True


class PruneGlobalStep(StepSpec):
    """Unstructured L1 pruning ranked across all Conv/Linear weights at once."""

    method: Literal["prune_global"] = "prune_global"
    amount: float = Field(default=0.5, gt=0, lt=1, description="Fraction of weights zeroed.")
    include_classifier: bool = True


class PruneStructuredStep(StepSpec):
    """Channel pruning with torch-pruning's dependency graph: the model gets physically smaller."""

    method: Literal["prune_structured"] = "prune_structured"
    amount: float = Field(default=0.5, gt=0, lt=1, description="Fraction of channels removed.")
    norm: Literal[1, 2] = Field(default=1, description="L-p norm used to rank channels.")


class FinetuneStep(StepSpec):
    """A few epochs of SGD on the training split (after pruning, say); sparsity is kept."""

    method: Literal["finetune"] = "finetune"
    epochs: int = Field(default=2, ge=1, le=1000)
    lr: float = Field(default=0.01, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    keep_sparsity: bool = Field(default=True, description="Zeros stay zero while training.")
    seed: int = 0


class DistillStep(StepSpec):
    """Train a smaller student from the running model (the teacher) with a soft-target loss.

    loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)
    """

    method: Literal["distill"] = "distill"
    student_arch: str = Field(default="mlp", max_length=64)
    student_kwargs: ArchKwargs = Field(default_factory=dict, max_length=32)
    temperature: float = Field(default=4.0, gt=0, le=100)
    alpha: float = Field(default=0.7, ge=0, le=1, description="Weight of the soft-target term.")
    epochs: int = Field(default=10, ge=1, le=1_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(default=0.003, gt=0, le=10)
    seed: int = 0


class CastStep(StepSpec):
    """Cast weights to float16 or bfloat16 (the GPU path: half the bytes, tensor cores).

    Inputs are cast on the way in and logits back to float32 on the way out, so callers
    see the same interface. On a CPU without native half kernels this is slower.
    """

    method: Literal["cast"] = "cast"
    dtype: Literal["float16", "bfloat16"] = "bfloat16"


class ExportSpec(StepSpec):
    """Fields every export shares: the eager model's outputs on a sample are the reference."""

    check_samples: int = Field(default=16, ge=1, le=4096)
    atol: float = Field(default=1e-4, ge=0)
    rtol: float = Field(default=1e-3, ge=0)


class ExportTorchScriptStep(ExportSpec):
    """A TorchScript archive (traced), written to the store as an export artifact only."""

    method: Literal["export_torchscript"] = "export_torchscript"


class ExportPt2Step(ExportSpec):
    """A ``torch.export`` program (.pt2) with a dynamic batch dimension, as an artifact only."""

    method: Literal["export_pt2"] = "export_pt2"


class ExportOnnxStep(ExportSpec):
    """An ONNX graph (no code inside) that workers serve through ONNX Runtime."""

    method: Literal["export_onnx"] = "export_onnx"
    opset: int | None = Field(default=None, ge=7, le=30, description="Exporter default if unset.")
    exporter: Literal["dynamo", "torchscript"] = "dynamo"


CompressStep = Annotated[
    QuantizeDynamicStep
    | QuantizeStaticStep
    | PruneL1Step
    | PruneGlobalStep
    | PruneStructuredStep
    | FinetuneStep
    | DistillStep
    | ExportTorchScriptStep
    | ExportPt2Step
    | ExportOnnxStep
    | CastStep,
    Field(discriminator="method"),
]

# ---------------------------------------------------------------- step order
QUANTIZE_METHODS = frozenset({"quantize_dynamic", "quantize_static"})
EXPORT_METHODS = frozenset({"export_torchscript", "export_pt2", "export_onnx"})


def step_order_problem(methods: list[str]) -> str | None:
    """What is wrong with the order of compression steps, or None. Every step but an export
    needs a float model: none may follow a quantize step (only exports may), and none may
    follow an ONNX export (the graph replaces the model); ONNX is exported once."""
    for i, method in enumerate(methods):
        for j, earlier in enumerate(methods[:i]):
            if method in EXPORT_METHODS and not (method == earlier == "export_onnx"):
                continue
            if earlier in QUANTIZE_METHODS or earlier == "export_onnx":
                return f"steps[{i}] {method} cannot follow steps[{j}] {earlier}: " + _order_rule(
                    method, earlier
                )
    return None


def _order_rule(method: str, earlier: str) -> str:
    if earlier == "export_onnx":
        if method == "export_onnx":
            return "a model is exported to ONNX once"
        return f"{method} needs the eager model, which the ONNX graph replaces; put exports last"
    return (
        f"{method} needs a float model and {earlier} makes it int8; put {method} before "
        f"{earlier} (quantize last, then exports)"
    )
