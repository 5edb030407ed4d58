"""Job groups: inference jobs submitted together, and their aggregate."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from shared.jobs.refs import (
    SCHEMA_VERSION,
    Strict,
)
from shared.jobs.specs import (
    InferJob,
)


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
