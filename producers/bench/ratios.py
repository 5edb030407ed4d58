"""The bars' figures from a run's rows, and each bar's verdict."""

from __future__ import annotations

from typing import Any

from producers.bench.plan import BIG_JOB, Row

# Issue 12's bars for the online lane. Issue 5's four Celery-path bars (overhead_vs_noop,
# batched_vs_unbatched_16, batched_vs_naive_16, efficiency_32) are replaced by them; their
# figures stay in the ratios.
BARS = {
    "lane_overhead_vs_noop": ("<=", 0.6),
    "lane_vs_celery_16": (">=", 6.0),
    "lane_vs_naive_16": (">=", 8.0),
    "lane_batched_vs_unbatched_16": (">=", 2.0),
    "drain_vs_floor": (">=", 0.85),
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


def _throughput(row: Row | None) -> float | None:
    return row.throughput if row else None


def ratios(rows: list[Row], model: str) -> dict[str, float | None]:
    """The bars' figures for one model (None where an arm was not measured)."""
    noops = [r for r in rows if (r.arm, r.producers) == ("celery_noop", 1)]
    noop = next((r for r in noops if r.beside == model), noops[0] if noops else None)
    most = max((r.producers for r in rows if r.arm == "fleet_batched"), default=1)
    return {
        **celery_figures(rows, model, noop, most),
        **lane_figures(rows, model, noop, most),
        "producers_for_throughput": float(most),
    }


def celery_figures(
    rows: list[Row], model: str, noop: Row | None, most: int
) -> dict[str, float | None]:
    """The Celery job path's figures (issue 5's bars, now context)."""
    floor1 = _find(rows, "floor", model, 1, 1)
    floor32 = _find(rows, "floor", model, 1, BIG_JOB)
    warm = _find(rows, "fleet_batched", model, 1, 1)
    batched = _throughput(_find(rows, "fleet_batched", model, most, 1))
    naive = _throughput(_find(rows, "naive", model, most, 1))
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
        "batched_vs_unbatched_16": _ratio(
            batched, _throughput(_find(rows, "fleet_unbatched", model, most, 1))
        ),
        "batched_vs_naive_16": _ratio(batched, naive),
        "efficiency_32": _ratio(
            max((r.throughput for r in big), default=None), _throughput(floor32)
        ),
        "cold_start_s": round(cold.p50_ms / 1000, 3) if cold else None,
        # Context, not a bar: what a task that does nothing reaches against the naive task at
        # the same load; no fleet on one Celery message per job can beat it on this host.
        "noop_vs_naive_16": _ratio(_throughput(noop_most), naive),
    }


def lane_figures(
    rows: list[Row], model: str, noop: Row | None, most: int
) -> dict[str, float | None]:
    """The online lane's figures (issue 12's bars)."""
    floor1 = _find(rows, "floor", model, 1, 1)
    lane1 = _find(rows, "lane_batched", model, 1, 1)
    lane = _throughput(_find(rows, "lane_batched", model, most, 1))
    drained = _find(rows, "lane_drain", model, 1, 1)
    # The faster of the batch-32 floors taken right before and after the drain (conservative);
    # the first floor when those were not measured.
    beside = [r.throughput for r in rows if (r.arm, r.model) == ("floor_beside_drain", model)]
    floor32 = max(beside, default=None) or _throughput(_find(rows, "floor", model, 1, BIG_JOB))
    overhead = lane1.p50_ms - floor1.p50_ms if lane1 and floor1 else None
    return {
        "lane_p50_ms": lane1.p50_ms if lane1 else None,
        "lane_overhead_ms": round(overhead, 3) if overhead is not None else None,
        "lane_overhead_vs_noop": _ratio(overhead, noop.p50_ms if noop else None),
        "lane_vs_celery_16": _ratio(lane, _throughput(_find(rows, "fleet_batched", model, most))),
        "lane_vs_naive_16": _ratio(lane, _throughput(_find(rows, "naive", model, most))),
        "lane_batched_vs_unbatched_16": _ratio(
            lane, _throughput(_find(rows, "lane_unbatched", model, most))
        ),
        "drain_vs_floor": _ratio(_throughput(drained), floor32),
    }


def bars(figures: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """Each bar with its figure, its threshold and whether it passed (None: not measured)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (op, limit) in BARS.items():
        value = figures.get(name)
        passed = None if value is None else (value <= limit if op == "<=" else value >= limit)
        out[name] = {"value": value, "bar": f"{op} {limit}", "passed": passed}
    return out
