"""Job models: the JSON that producers send and workers run.

Every job carries ``kind`` (the discriminator) and ``schema_version``. Producers validate
before sending; workers validate again on receipt. Unknown fields are refused.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.jobs.refs import (
    DTYPE_SIZES,
    MAX_TENSOR_DIMS,
    SCHEMA_VERSION,
    AliasName,
    ArchKwargs,
    DeviceChoice,
    InputKey,
    ModelName,
    ModelRef,
    RefString,
    ServeBackend,
    Strict,
)
from shared.jobs.steps import (
    CompressStep,
    VariantName,
    step_order_problem,
)

# ---------------------------------------------------------------- training
MAX_SYNTHETIC_VALUES = 2**28  # float32 values of a synthetic dataset: 1 GiB
TIME_LIMIT_DOC = (
    "Seconds one delivery may run (a pipeline: each stage but train, whose train job has its "
    "own); the worker's maximum for the kind when unset or larger (TORCHFLEET_TIME_LIMIT_*)."
)


class DatasetSpec(Strict):
    """A dataset from the worker's dataset registry, split into train and validation."""

    name: str = Field(default="digits", max_length=64)
    path: str | None = Field(default=None, max_length=4096, description="Folder for file data.")
    image_size: int = Field(default=32, ge=4, le=1024)
    channels: Literal[1, 3] = 3
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    split_seed: int = 0
    limit: int | None = Field(default=None, ge=1, description="Use at most this many samples.")
    num_classes: int = Field(default=10, ge=2, le=10_000, description="Synthetic data only.")
    samples: int = Field(default=512, ge=2, le=1_000_000, description="Synthetic data only.")
    val_path: str | None = Field(
        default=None, max_length=4096, description="imagefolder: the validation folder."
    )

    @model_validator(mode="after")
    def _synthetic_fits_in_memory(self) -> DatasetSpec:
        values = self.samples * self.channels * self.image_size**2
        if self.name == "synthetic" and values > MAX_SYNTHETIC_VALUES:
            raise ValueError(
                f"synthetic data of samples x channels x image_size^2 = {values} values; the "
                f"limit is {MAX_SYNTHETIC_VALUES} (fewer samples or a smaller image_size)"
            )
        return self


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
    arch_kwargs: ArchKwargs = Field(default_factory=dict, max_length=32)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    epochs: int = Field(default=5, ge=1, le=1_000)
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
    time_limit_s: float | None = Field(default=None, gt=0, description=TIME_LIMIT_DOC)


SpeedupBatch = Literal[1, 32]  # the batch sizes a compress job times (p50 at each)
DEFAULT_SPEEDUP_BATCH: SpeedupBatch = 32


class SpeedupGate(Strict):
    """At least ``ratio`` times faster than the source (p50) at batch size ``batch``."""

    batch: SpeedupBatch = DEFAULT_SPEEDUP_BATCH
    ratio: float = Field(gt=0, le=1000)


class GateSpec(Strict):
    """A variant passes when it loses at most ``max_accuracy_drop`` points and is at least as
    fast as each ``min_speedup`` asks; unset gates always pass.

    ``min_speedup`` is one gate or a list (``{"batch": 1, "ratio": 1.2}``); a bare number is
    the ratio at batch 32. Single requests run at batch 1 unless the worker batches them, so
    set a batch-1 gate for a model that serves one request at a time.
    """

    max_accuracy_drop: float | None = Field(
        default=None, ge=0, le=100, description="Percentage points."
    )
    min_speedup: float | SpeedupGate | list[SpeedupGate] | None = Field(
        default=None,
        description="A ratio at batch 32, a {batch, ratio} gate, or a list of them.",
    )

    @field_validator("min_speedup", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("min_speedup is a ratio, a {batch, ratio} gate or a list of gates")
        return value

    @field_validator("min_speedup")
    @classmethod
    def _speedup_forms(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not 0 < value <= 1000:
            raise ValueError("a min_speedup ratio is above 0 and at most 1000")
        if isinstance(value, list):
            batches = [g.batch for g in value]
            if len(batches) != len(set(batches)):
                raise ValueError("min_speedup names the same batch size more than once")
        return value

    def speedup_gates(self) -> list[SpeedupGate]:
        """Every speed-up gate, a bare ratio read as the batch-32 one."""
        value = self.min_speedup
        if value is None:
            return []
        if isinstance(value, SpeedupGate):
            return [value]
        if isinstance(value, list):
            return list(value)
        return [SpeedupGate(batch=DEFAULT_SPEEDUP_BATCH, ratio=float(value))]


class CompressJob(Strict):
    """Turn a registered model into smaller or faster variants and register those that pass."""

    kind: Literal["compress"] = "compress"
    schema_version: Literal[1] = SCHEMA_VERSION
    source: RefString
    steps: list[CompressStep] = Field(min_length=1, max_length=16)
    eval_dataset: DatasetSpec | None = Field(
        default=None,
        description="Data to measure, calibrate and fine-tune on; the source's training data "
        "(its manifest lineage) when omitted.",
    )
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
    time_limit_s: float | None = Field(default=None, gt=0, description=TIME_LIMIT_DOC)

    @model_validator(mode="after")
    def _variant_names_unique(self) -> CompressJob:
        names = [s.variant for s in self.steps if s.variant]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"steps name the same variant more than once: {dupes}")
        _check_step_order(self.steps)
        return self


def _check_step_order(steps: list[CompressStep]) -> None:
    problem = step_order_problem([step.method for step in steps])
    if problem is not None:
        raise ValueError(problem)


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
    time_limit_s: float | None = Field(default=None, gt=0, description=TIME_LIMIT_DOC)
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
        default=None,
        description="Compression eval set; the training set's spec (of the train stage, or "
        "of the source's lineage) if omitted.",
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
    time_limit_s: float | None = Field(default=None, gt=0, description=TIME_LIMIT_DOC)

    @model_validator(mode="after")
    def _check_stages(self) -> PipelineJob:
        if (self.train is None) == (self.source is None):
            raise ValueError("a pipeline needs exactly one of train (a TrainJob) or source")
        names = [s.variant for s in self.steps if s.variant]
        if len(names) != len(set(names)):
            raise ValueError("steps name the same variant more than once")
        _check_step_order(self.steps)
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

    def compress_dataset(self) -> DatasetSpec | None:
        """The compress stage's data; None: the source's training data, from its lineage."""
        if self.eval_dataset is not None:
            return self.eval_dataset
        return self.train.dataset if self.train is not None else None


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
