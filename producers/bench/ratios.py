"""The bars' figures from a run's rows, and each bar's verdict."""

from __future__ import annotations

from typing import Any

from producers.bench.plan import BIG_JOB, Row

BARS = {
    "overhead_vs_noop": ("<=", 1.2),
    "batched_vs_unbatched_16": (">=", 1.5),
    "batched_vs_naive_16": (">=", 5.0),
    "efficiency_32": (">=", 0.85),
    "cold_start_s": ("<=", 5.0),
}


def _find(rows: list[Row], arm: str, model: str, producers: int, inputs: int = 1) -> Row | None:
    for row in rows:
        if (row.arm, row.model, row.producers, row.inputs_per_job) == (
            arm,
            model,
            producers,
            inputs,
        ):
            return row
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(rows: list[Row], model: str) -> dict[str, float | None]:
    """The bars' figures for one model (None where an arm was not measured)."""
    floor1 = _find(rows, "floor", model, 1, 1)
    floor32 = _find(rows, "floor", model, 1, BIG_JOB)
    noops = [r for r in rows if (r.arm, r.producers) == ("celery_noop", 1)]
    noop = next((r for r in noops if r.beside == model), noops[0] if noops else None)
    warm = _find(rows, "fleet_batched", model, 1, 1)
    most = max((r.producers for r in rows if r.arm == "fleet_batched"), default=1)
    batched = _find(rows, "fleet_batched", model, most, 1)
    unbatched = _find(rows, "fleet_unbatched", model, most, 1)
    naive = _find(rows, "naive", model, most, 1)
    noop_most = _find(rows, "celery_noop", "-", most, 1)
    cold = _find(rows, "fleet_cold", model, 1, 1)
    big = [r for r in rows if (r.arm, r.model, r.inputs_per_job) == ("fleet_batched", model, 32)]
    overhead = warm.p50_ms - floor1.p50_ms if warm and floor1 else None
    return {
        "floor_b1_p50_ms": floor1.p50_ms if floor1 else None,
        "fleet_warm_p50_ms": warm.p50_ms if warm else None,
        "overhead_ms": round(overhead, 3) if overhead is not None else None,
        "noop_p50_ms": noop.p50_ms if noop else None,
        "overhead_vs_noop": _ratio(overhead, noop.p50_ms if noop else None),
        "producers_for_throughput": float(most),
        "batched_vs_unbatched_16": _ratio(
            batched.throughput if batched else None, unbatched.throughput if unbatched else None
        ),
        "batched_vs_naive_16": _ratio(
            batched.throughput if batched else None, naive.throughput if naive else None
        ),
        "efficiency_32": _ratio(
            max((r.throughput for r in big), default=None), floor32.throughput if floor32 else None
        ),
        "cold_start_s": round(cold.p50_ms / 1000, 3) if cold else None,
        # Context, not a bar: what a task that does nothing reaches against the naive task at
        # the same load; no fleet on one Celery message per job can beat it on this host.
        "noop_vs_naive_16": _ratio(
            noop_most.throughput if noop_most else None, naive.throughput if naive else None
        ),
    }


def bars(figures: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """Each bar with its figure, its threshold and whether it passed (None: not measured)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (op, limit) in BARS.items():
        value = figures.get(name)
        passed = None if value is None else (value <= limit if op == "<=" else value >= limit)
        out[name] = {"value": value, "bar": f"{op} {limit}", "passed": passed}
    return out
