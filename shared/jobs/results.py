"""Result models: what a worker answers for each job kind."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
)

from shared.jobs.refs import (
    SCHEMA_VERSION,
    Strict,
)
from shared.jobs.specs import DatasetSpec

EvalOrigin = Literal["job", "lineage"]


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
    eval_dataset: DatasetSpec | None = Field(
        default=None, description="The data every figure was measured on."
    )
    eval_origin: EvalOrigin | None = Field(
        default=None,
        description="job: the job's eval_dataset; lineage: the source's training data.",
    )

    def eval_description(self) -> str:
        """Which data the figures come from, in words."""
        if self.eval_dataset is None:
            return "evaluation data not reported"
        spec = self.eval_dataset
        where = f" at {spec.path}" if spec.path else ""
        origin = {
            "job": "the job's eval_dataset",
            "lineage": "the source's training data, from its lineage",
        }.get(self.eval_origin or "", "origin unknown")
        return (
            f"measured on {spec.name}{where} ({spec.channels}x{spec.image_size}x"
            f"{spec.image_size}, validation split {spec.val_fraction:g}, seed {spec.split_seed}): "
            f"{origin}"
        )

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
    "speed-up b1/b32",
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
        "1.00x/1.00x" if source else f"{r.speedup_b1:.2f}x/{r.speedup:.2f}x",
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
