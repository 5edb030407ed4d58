"""The pure parts of `torchfleet bench`: percentiles, rows, the bars' ratios, the load driver."""

from __future__ import annotations

import threading

import pytest

from producers.bench.load import drive
from producers.bench.plan import Row, percentile, summarise
from producers.bench.ratios import bars, ratios


def row(arm: str, model: str, producers: int, inputs: int, p50: float, thr: float) -> Row:
    return Row(arm, model, producers, inputs, 10, p50, p50, p50, thr)


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5 and percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_summarise_counts_inputs_per_second() -> None:
    r = summarise("fleet_batched", "m", 4, 32, [10.0, 20.0, 30.0, 40.0], wall_s=2.0, x=1.23456)
    assert (r.jobs, r.p50_ms, r.p99_ms) == (4, 25.0, 39.7)
    assert r.throughput == 4 * 32 / 2.0 and r.extra == {"x": 1.235}


def test_ratios_and_bars_follow_the_issue() -> None:
    rows = [
        row("floor", "cnn", 1, 1, 1.0, 1000.0),
        row("floor", "cnn", 1, 32, 10.0, 3200.0),
        row("celery_noop", "-", 1, 1, 5.0, 200.0),
        row("fleet_batched", "cnn", 1, 1, 6.0, 150.0),
        row("fleet_batched", "cnn", 16, 1, 50.0, 600.0),
        row("fleet_unbatched", "cnn", 16, 1, 90.0, 300.0),
        row("naive", "cnn", 16, 1, 400.0, 100.0),
        row("celery_noop", "-", 16, 1, 80.0, 250.0),
        row("fleet_batched", "cnn", 1, 32, 20.0, 1600.0),
        row("fleet_batched", "cnn", 4, 32, 60.0, 2880.0),
        row("fleet_cold", "cnn", 1, 1, 4200.0, 0.2),
    ]
    figures = ratios(rows, "cnn")
    assert figures["overhead_ms"] == 5.0 and figures["overhead_vs_noop"] == 1.0
    assert figures["batched_vs_unbatched_16"] == 2.0 and figures["batched_vs_naive_16"] == 6.0
    assert figures["efficiency_32"] == 0.9 and figures["cold_start_s"] == 4.2
    assert figures["noop_vs_naive_16"] == 2.5  # context, not one of the bars
    verdicts = bars(figures)
    assert all(v["passed"] for v in verdicts.values())
    missing = bars(ratios(rows[:4], "cnn"))
    assert missing["cold_start_s"] == {"value": None, "bar": "<= 5.0", "passed": None}


def test_overhead_is_read_against_the_noop_measured_beside_the_model() -> None:
    rows = [
        row("celery_noop", "-", 1, 1, 5.0, 200.0),
        row("floor", "big", 1, 1, 1.0, 1000.0),
        Row("celery_noop", "-", 1, 1, 10, 8.0, 8.0, 8.0, 125.0, beside="big"),
        row("fleet_batched", "big", 1, 1, 9.0, 110.0),
        row("floor", "small", 1, 1, 1.0, 1000.0),
        row("fleet_batched", "small", 1, 1, 9.0, 110.0),
    ]
    assert ratios(rows, "big")["noop_p50_ms"] == 8.0
    assert ratios(rows, "small")["noop_p50_ms"] == 5.0  # none beside it: the first one


def test_drive_spreads_jobs_over_producers_after_warm_up() -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def one() -> float:
        with lock:
            seen.append(threading.current_thread().name)
        return 1.0

    latencies, wall = drive(4, 40, one, warmup=2)
    assert len(latencies) == 40 and len(seen) == 40 + 4 * 2 and wall >= 0
    assert len(set(seen)) == 4


def test_drive_reports_the_first_error() -> None:
    def one() -> float:
        raise RuntimeError("the fleet said no")

    with pytest.raises(RuntimeError, match="said no"):
        drive(3, 10, one)
