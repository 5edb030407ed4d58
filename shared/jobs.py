"""Job and result models: the JSON that travels between producers and workers.

Every job carries ``kind`` (the discriminator) and ``schema_version``. Producers validate
before sending; workers validate again on receipt. Unknown fields are refused.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.names import KEY_INPUT

SCHEMA_VERSION: Literal[1] = 1
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
REF_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9_-]{0,63})"
    r"(?:@(?P<alias>[a-z][a-z0-9_-]{0,31})|:(?P<version>[0-9]{1,9}))?"
    r"(?::(?P<variant>[a-z0-9][a-z0-9_-]{0,63}))?$"
)
DTYPE_SIZES = {"float32": 4, "float16": 2, "float64": 8, "uint8": 1, "int64": 8}
MAX_TENSOR_DIMS = 8

DeviceChoice = Literal["any", "cpu", "cuda"]
ServeBackend = Literal["eager", "compile", "onnx"]
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
AliasName = Annotated[str, Field(pattern=ALIAS_PATTERN)]
Scalar = str | int | float | bool


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(Strict):
    """A parsed model reference: ``name``, ``name:version``, ``name@alias``, each ``[:variant]``."""

    name: str
    version: int | None = None
    alias: str | None = None
    variant: str | None = None

    @classmethod
    def parse(cls, ref: str) -> ModelRef:
        match = REF_RE.match(ref)
        if match is None:
            raise ValueError(
                f"bad model reference {ref!r}: expected name, name:VERSION or name@ALIAS, "
                "optionally followed by :VARIANT (lower-case letters, digits, - and _)"
            )
        version = match["version"]
        return cls(
            name=match["name"],
            version=int(version) if version else None,
            alias=match["alias"],
            variant=match["variant"],
        )

    def __str__(self) -> str:
        text = self.name
        if self.alias:
            text += f"@{self.alias}"
        elif self.version is not None:
            text += f":{self.version}"
        if self.variant:
            text += f":{self.variant}"
        return text


def _check_ref(ref: str) -> str:
    ModelRef.parse(ref)
    return ref


RefString = Annotated[str, Field(max_length=200), AfterValidator(_check_ref)]
# Only keys under the fleet's own input prefix: a job cannot make a worker read other keys.
InputKey = Annotated[str, Field(pattern=rf"^{re.escape(KEY_INPUT)}\S{{1,200}}$")]


# ---------------------------------------------------------------- training
class DatasetSpec(Strict):
    """A dataset from the worker's dataset registry, split into train and validation."""

    name: str = Field(default="digits", max_length=64)
    path: str | None = Field(default=None, max_length=4096, description="Folder for file data.")
    image_size: int = Field(default=32, ge=4, le=1024)
    channels: Literal[1, 3] = 3
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    split_seed: int = 0
    limit: int | None = Field(default=None, ge=1, description="Use at most this many samples.")
    num_classes: int = Field(default=10, ge=2, le=100_000, description="Synthetic data only.")
    samples: int = Field(default=512, ge=2, le=10_000_000, description="Synthetic data only.")


class OptimizerSpec(Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.01, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="L2 through the optimizer.")
    l2_penalty: float = Field(
        default=0.0, ge=0, le=1, description="Explicit lambda * sum(w^2) added to the loss."
    )

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimizerSpec:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs the sgd optimizer with momentum > 0")
        return self


class ScheduleSpec(Strict):
    name: Literal["none", "step", "cosine", "onecycle"] = "none"
    step_size: int = Field(default=5, ge=1)
    gamma: float = Field(default=0.1, gt=0, le=1)
    warmup_epochs: int = Field(default=0, ge=0, le=1000)


class LossSpec(Strict):
    name: Literal["cross_entropy", "bce", "mse"] = "cross_entropy"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)


class EarlyStoppingSpec(Strict):
    patience: int = Field(default=3, ge=1, le=1000)
    min_delta: float = Field(default=0.0, ge=0)


class AugmentSpec(Strict):
    random_crop: bool = False
    crop_padding: int = Field(default=4, ge=0, le=64)
    hflip: bool = False


class TrainJob(Strict):
    """Train an architecture from the zoo on a dataset and register the best epoch."""

    kind: Literal["train"] = "train"
    schema_version: Literal[1] = SCHEMA_VERSION
    model_name: ModelName
    arch: str = Field(default="cifar_cnn", max_length=64)
    arch_kwargs: dict[str, Scalar] = Field(default_factory=dict, max_length=32)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    epochs: int = Field(default=5, ge=1, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    early_stopping: EarlyStoppingSpec | None = None
    init: Literal["default", "source"] = "default"
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    grad_clip: float | None = Field(default=None, gt=0)
    amp: bool = Field(default=True, description="Mixed precision when a GPU runs the job.")
    seed: int = 0
    device: DeviceChoice = "any"
    aliases: list[AliasName] = Field(default_factory=list, max_length=8)
    deadline: float | None = Field(default=None, description="Unix time after which to drop.")


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
    student_kwargs: dict[str, Scalar] = Field(default_factory=dict, max_length=32)
    temperature: float = Field(default=4.0, gt=0, le=100)
    alpha: float = Field(default=0.7, ge=0, le=1, description="Weight of the soft-target term.")
    epochs: int = Field(default=10, ge=1, le=10_000)
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


class GateSpec(Strict):
    """A variant passes when it loses at most ``max_accuracy_drop`` points and is at least
    ``min_speedup`` times faster (batch-32 p50) than the source; unset gates always pass."""

    max_accuracy_drop: float | None = Field(
        default=None, ge=0, le=100, description="Percentage points."
    )
    min_speedup: float | None = Field(default=None, gt=0, le=1000)


class CompressJob(Strict):
    """Turn a registered model into smaller or faster variants and register those that pass."""

    kind: Literal["compress"] = "compress"
    schema_version: Literal[1] = SCHEMA_VERSION
    source: RefString
    steps: list[CompressStep] = Field(min_length=1, max_length=16)
    eval_dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    gates: GateSpec = Field(default_factory=GateSpec)
    promote: AliasName | None = None
    force_promote: bool = Field(default=False, description="Promote even if worse than now.")
    compare_alias: AliasName | None = Field(
        default=None, description="Measure this alias's target beside the variants (no move)."
    )
    device: DeviceChoice = "any"
    latency_iters: int = Field(default=50, ge=3, le=10_000, description="Timed runs per batch.")
    warmup_iters: int = Field(default=5, ge=0, le=1000)
    deadline: float | None = Field(default=None, description="Unix time after which to drop.")

    @model_validator(mode="after")
    def _variant_names_unique(self) -> CompressJob:
        names = [s.variant for s in self.steps if s.variant]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"steps name the same variant more than once: {dupes}")
        return self


# ---------------------------------------------------------------- inference
class TensorPayload(Strict):
    """A tensor's raw little-endian C-order bytes, with shape and dtype.

    Small tensors travel in the message as base64 (``data``). Large ones wait beside it in
    Redis as raw bytes under ``key`` (``torchfleet:input:{job id}``), written by the client
    in the same round trip that records the job: no base64, and the message the queue
    copies, parses and parks as unacknowledged stays a few hundred bytes.
    """

    encoding: Literal["raw"] = "raw"
    dtype: Literal["float32", "float16", "float64", "uint8", "int64"] = "float32"
    shape: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(
        min_length=1, max_length=MAX_TENSOR_DIMS
    )
    data: str | None = None
    key: InputKey | None = None

    @model_validator(mode="after")
    def _size_matches_shape(self) -> TensorPayload:
        if (self.data is None) == (self.key is None):
            raise ValueError("a tensor needs exactly one of data (base64) or key (stored bytes)")
        if self.data is not None and len(self.data) != 4 * math.ceil(self.nbytes / 3):
            raise ValueError(
                f"data holds the wrong number of bytes for shape {self.shape} and "
                f"dtype {self.dtype}: expected {self.nbytes} bytes, base64-encoded"
            )
        return self

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


class ImagePayload(Strict):
    """An encoded image file (PNG or JPEG) as base64."""

    format: Literal["png", "jpeg"] = "png"
    data: str = Field(min_length=4)


class InferJob(Strict):
    """Predict on a batch of inputs with a registered model."""

    kind: Literal["infer"] = "infer"
    schema_version: Literal[1] = SCHEMA_VERSION
    model: RefString
    inputs: TensorPayload | list[ImagePayload]
    top_k: int = Field(default=1, ge=1, le=1000)
    labels: list[int] | None = Field(default=None, description="Ground truth, for accuracy.")
    deadline: float | None = Field(default=None, description="Unix time after which to drop.")
    priority: int = Field(default=0, ge=0, le=9)
    device: DeviceChoice = "any"
    backend: ServeBackend | None = Field(
        default=None, description="eager, compile or onnx; the model manifest's when omitted."
    )
    submitted_at: float | None = Field(default=None, description="Set by the producer.")

    @field_validator("inputs")
    @classmethod
    def _images_not_empty(cls, v: TensorPayload | list[ImagePayload]) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("inputs holds no images")
        return v


# ---------------------------------------------------------------- pipelines
class PipelineJob(Strict):
    """Train (or take a registered model), compress, gate, promote and warm, as one chain.

    The best variant that passes ``gates`` (or the one named by ``variant``, which must pass)
    becomes ``name@promote``; a gate failure stops the chain before the alias moves.
    """

    kind: Literal["pipeline"] = "pipeline"
    schema_version: Literal[1] = SCHEMA_VERSION
    train: TrainJob | None = Field(default=None, description="Train a new version first.")
    source: RefString | None = Field(default=None, description="Or start from this model.")
    steps: list[CompressStep] = Field(min_length=1, max_length=16)
    eval_dataset: DatasetSpec | None = Field(
        default=None, description="Compression eval set; the training set's spec if omitted."
    )
    gates: GateSpec = Field(default_factory=GateSpec)
    promote: AliasName = "production"
    force_promote: bool = Field(default=False, description="Promote even if worse than now.")
    variant: VariantName = Field(
        default=None, description="Promote this variant (it must pass); the best one if unset."
    )
    warm: bool = Field(default=True, description="Have inference workers preload the winner.")
    latency_iters: int = Field(default=20, ge=3, le=10_000)
    warmup_iters: int = Field(default=3, ge=0, le=1000)
    device: DeviceChoice = "any"
    deadline: float | None = Field(default=None, description="Unix time after which to drop.")

    @model_validator(mode="after")
    def _check_stages(self) -> PipelineJob:
        if (self.train is None) == (self.source is None):
            raise ValueError("a pipeline needs exactly one of train (a TrainJob) or source")
        names = [s.variant for s in self.steps if s.variant]
        if len(names) != len(set(names)):
            raise ValueError("steps name the same variant more than once")
        if self.variant is not None and self.variant not in names:
            raise ValueError(
                f"variant {self.variant!r} is not produced by any step; set "
                f"variant={self.variant!r} on the step that should emit it"
            )
        return self

    @property
    def model_name(self) -> str:
        if self.train is not None:
            return self.train.model_name
        return ModelRef.parse(self.source or "").name

    def compress_dataset(self) -> DatasetSpec:
        if self.eval_dataset is not None:
            return self.eval_dataset
        return self.train.dataset if self.train is not None else DatasetSpec()


AnyJob = TrainJob | CompressJob | InferJob | PipelineJob
Job = Annotated[AnyJob, Field(discriminator="kind")]
JOB_ADAPTER: TypeAdapter[AnyJob] = TypeAdapter(Job)


def parse_job(payload: str | bytes | dict[str, Any]) -> AnyJob:
    """Validate a job from JSON text or a decoded dict (raises pydantic.ValidationError)."""
    if isinstance(payload, dict):
        return JOB_ADAPTER.validate_python(payload)
    return JOB_ADAPTER.validate_json(payload)


def describe_errors(error: ValidationError) -> str:
    """Every problem pydantic found, as ``field.path: message`` joined by ``; ``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in error.errors()
    )


def job_schema() -> dict[str, Any]:
    """The JSON Schema of every job kind, for editors and other languages."""
    return JOB_ADAPTER.json_schema()


# ---------------------------------------------------------------- results
class Latency(Strict):
    """Where the time of one inference job went, in milliseconds."""

    queued_ms: float = 0.0
    batch_wait_ms: float = 0.0
    load_ms: float = 0.0
    preprocess_ms: float = 0.0
    compute_ms: float = 0.0
    postprocess_ms: float = 0.0
    total_worker_ms: float = 0.0


LATENCY_FIELDS = tuple(Latency.model_fields)


class ClassScore(Strict):
    label: int
    name: str | None = None
    score: float


class WorkerInfo(Strict):
    worker: str
    device: str


class InferResult(Strict):
    kind: Literal["infer"] = "infer"
    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    model: str
    version: int
    variant: str
    model_digest: str
    predictions: list[list[ClassScore]]
    accuracy: float | None = None
    latency: Latency
    cache_hit: bool
    batch_size: int
    worker: str
    device: str


class EpochRecord(Strict):
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


class TrainResult(Strict):
    kind: Literal["train"] = "train"
    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    model: str
    version: int
    model_digest: str
    arch: str
    history: list[EpochRecord]
    best_epoch: int
    best_val_accuracy: float
    stopped_early: bool = False
    resumed_from_epoch: int | None = None
    parameters: int
    size_bytes: int
    seconds: float
    worker: str
    device: str


class ExportArtifact(Strict):
    """A file an export step wrote to the artifact store (sha256-named, beside the models)."""

    format: Literal["torchscript", "pt2", "onnx"]
    path: str
    sha256: str
    size_bytes: int
    max_abs_error: float = Field(description="Largest |export - eager| on the check sample.")


class VariantReport(Strict):
    """One row of the compression table; the baseline row is the source model itself.

    ``speedup`` is the source's batch-32 p50 latency over this variant's (``speedup_b1`` the
    same at batch 1); ``accuracy_delta`` is in percentage points (negative = worse).
    """

    variant: str
    method: str
    model_digest: str | None = None
    size_bytes: int
    parameters: int
    sparsity: float = 0.0
    accuracy: float
    latency_b1_p50_ms: float
    latency_b1_p95_ms: float
    latency_b32_p50_ms: float
    latency_b32_p95_ms: float
    speedup: float = 1.0
    accuracy_delta: float = 0.0
    passed: bool = True
    registered: bool = False
    notes: list[str] = Field(default_factory=list)
    speedup_b1: float = 1.0
    steps: list[str] = Field(default_factory=list, description="Methods applied to the source.")
    backend: str = "eager"
    device: str = "cpu"
    exports: list[ExportArtifact] = Field(default_factory=list)


class CompressResult(Strict):
    kind: Literal["compress"] = "compress"
    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    source: str
    version: int
    baseline: VariantReport
    variants: list[VariantReport]
    promoted: str | None = None
    incumbent: VariantReport | None = Field(
        default=None, description="The compared alias's current target, measured alongside."
    )
    promotion: str | None = Field(default=None, description="Why it was promoted or not.")
    seconds: float
    worker: str
    device: str

    def table(self) -> tuple[list[str], list[list[str]]]:
        """The one comparison table (header, rows): the source first, then each variant."""
        header = list(TABLE_COLUMNS)
        rows = [_table_row(self.baseline, source=True)]
        rows += [_table_row(v, source=False) for v in self.variants]
        return header, rows


TABLE_COLUMNS = (
    "variant",
    "method",
    "size KiB",
    "params",
    "sparsity",
    "acc %",
    "d acc pt",
    "b1 p50/p95 ms",
    "b32 p50/p95 ms",
    "speed-up b32",
    "backend",
    "status",
)


def _table_row(r: VariantReport, *, source: bool) -> list[str]:
    if source:
        status = "source"
    elif r.registered:
        status = "registered"
    else:
        status = "passed" if r.passed else "failed gates"
    return [
        r.variant,
        r.method,
        f"{r.size_bytes / 1024:.1f}",
        f"{r.parameters:,}",
        f"{r.sparsity:.1%}",
        f"{r.accuracy:.2f}",
        "" if source else f"{r.accuracy_delta:+.2f}",
        f"{r.latency_b1_p50_ms:.3f}/{r.latency_b1_p95_ms:.3f}",
        f"{r.latency_b32_p50_ms:.3f}/{r.latency_b32_p95_ms:.3f}",
        "1.00x" if source else f"{r.speedup:.2f}x",
        f"{r.backend} ({r.device})",
        status,
    ]


PipelineStage = Literal["train", "compress", "gate", "promote", "warm"]


class StageReport(Strict):
    """One stage of a pipeline: what it did, how long it took, and why it stopped if it did."""

    stage: PipelineStage
    status: Literal["done", "failed", "skipped"]
    seconds: float = 0.0
    detail: dict[str, Any] = Field(default_factory=dict)
    error_code: str | None = None
    error: str | None = None


class PipelineResult(Strict):
    """Every stage's report; ``status`` says whether an alias moved."""

    kind: Literal["pipeline"] = "pipeline"
    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    model: str
    version: int | None = None
    status: Literal["running", "promoted", "gate_failed", "failed"] = "running"
    stages: list[StageReport] = Field(default_factory=list)
    train: TrainResult | None = None
    compress: CompressResult | None = None
    promoted: str | None = Field(default=None, description="name:version:variant now aliased.")
    alias: str = "production"
    previous: str | None = Field(default=None, description="Where the alias pointed before.")
    warmed: list[str] = Field(default_factory=list, description="Workers that preloaded it.")
    error_code: str | None = None
    error: str | None = None
    seconds: float = 0.0


# ---------------------------------------------------------------- groups
class JobGroup(Strict):
    """A set of inference jobs submitted together and aggregated as one (``torchfleet group``)."""

    kind: Literal["group"] = "group"
    schema_version: Literal[1] = SCHEMA_VERSION
    jobs: list[InferJob] = Field(min_length=1, max_length=10_000)


class LatencyPercentiles(Strict):
    p50: float
    p95: float
    p99: float


class GroupSummary(Strict):
    """The aggregate of a group: progress, outcomes, accuracy and latency percentiles (ms)."""

    group_id: str
    count: int
    done: int
    succeeded: int
    failed: int
    pending: int
    outcomes: dict[str, int] = Field(default_factory=dict)
    inputs: int = 0
    labelled_inputs: int = 0
    accuracy: float | None = None
    latency: dict[str, LatencyPercentiles] = Field(default_factory=dict)
    models: list[str] = Field(default_factory=list)
    workers: list[str] = Field(default_factory=list)
    aggregated_at: float = 0.0
    aggregated_by: str = "producer"


AnyResult = InferResult | TrainResult | CompressResult | PipelineResult
JobResult = Annotated[AnyResult, Field(discriminator="kind")]
RESULT_ADAPTER: TypeAdapter[AnyResult] = TypeAdapter(JobResult)
