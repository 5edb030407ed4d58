"""What a bench run measures (:class:`Plan`) and what one measurement yields (:class:`Row`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.stats import percentile

ARMS = (
    "floor", "celery_noop", "naive", "fleet_batched", "fleet_unbatched", "fleet_cold",
    "lane_batched", "lane_unbatched", "lane_drain", "floor_beside_drain",
)  # fmt: skip
MODELS = ("mlp", "cifar_cnn", "resnet18")  # the default sweep; any zoo architecture may be named
SEED_MODEL = "cifar_cnn"
PRODUCERS = (1, 4, 16)
INPUT_SHAPE = (3, 32, 32)
BIG_JOB = 32
WORKER_READY_TIMEOUT_S = 120
RESULT_TIMEOUT_S = 300


@dataclass
class Plan:
    """What one bench run measures: models, producer counts, and jobs per measurement."""

    models: tuple[str, ...] = MODELS
    producers: tuple[int, ...] = PRODUCERS
    jobs: int = 200  # jobs per measurement (at least 4 per producer)
    big_jobs: int = 40  # 32-input jobs per measurement
    naive_jobs: int = 48
    floor_iters: int = 200
    cold_launches: int = 1
    drain: int = 3000  # requests the lane's drain empties
    budget_s: float = 8.0  # wall seconds per measurement, past its first jobs
    threads: int = 1
    concurrency: int = 16
    device: str = "cpu"

    @classmethod
    def quick(cls, **kw: Any) -> Plan:
        """A subset that runs in about a minute: the seed CNN at 1 and 16 producers."""
        return cls(
            models=(SEED_MODEL,),
            producers=(1, 16),
            jobs=64,
            big_jobs=12,
            naive_jobs=32,
            floor_iters=50,
            drain=1500,
            budget_s=3.0,
            **kw,
        )


@dataclass
class Row:
    arm: str
    model: str
    producers: int
    inputs_per_job: int
    jobs: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput: float
    extra: dict[str, float] = field(default_factory=dict)
    beside: str | None = None  # celery_noop: the model whose fleet arms it was measured before


def summarise(
    arm: str,
    model: str,
    producers: int,
    inputs: int,
    latencies_ms: list[float],
    wall_s: float,
    beside: str | None = None,
    **extra: float,
) -> Row:
    """One result row from per-job latencies and the wall time of the whole measurement."""
    return Row(
        arm=arm,
        model=model,
        producers=producers,
        inputs_per_job=inputs,
        jobs=len(latencies_ms),
        p50_ms=round(percentile(latencies_ms, 50), 3),
        p95_ms=round(percentile(latencies_ms, 95), 3),
        p99_ms=round(percentile(latencies_ms, 99), 3),
        throughput=round(len(latencies_ms) * inputs / wall_s, 2) if wall_s > 0 else 0.0,
        extra={k: round(v, 3) for k, v in extra.items()},
        beside=beside,
    )
