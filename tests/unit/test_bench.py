"""The pure parts of `torchfleet bench`: percentiles, rows, the bars' ratios, the load driver."""

from __future__ import annotations

import os
import threading
import time

import pytest

from producers.bench.cpu import CpuMeter, cpu_seconds
from producers.bench.load import drive
from producers.bench.plan import Row, percentile, summarise
from producers.bench.ratios import BARS, bars, ratios
from producers.bench.report import cpu_cell


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
    # Issue 5's four Celery-path bars are figures now; issue 12's lane bars replace them.
    assert set(verdicts) == {
        "lane_overhead_vs_noop", "lane_vs_celery_16", "lane_vs_naive_16",
        "lane_batched_vs_unbatched_16", "drain_vs_floor", "cold_start_s",
    }  # fmt: skip
    assert verdicts["cold_start_s"]["passed"] is True
    assert verdicts["lane_vs_celery_16"] == {"value": None, "bar": ">= 6.0", "passed": None}
    missing = bars(ratios(rows[:4], "cnn"))
    assert missing["cold_start_s"] == {"value": None, "bar": "<= 5.0", "passed": None}


def test_lane_ratios_follow_issue_12() -> None:
    rows = [
        row("floor", "cnn", 1, 1, 0.5, 2000.0),
        row("floor", "cnn", 1, 32, 10.0, 3000.0),
        Row("celery_noop", "-", 1, 1, 10, 4.0, 4.0, 4.0, 250.0, beside="cnn"),
        row("naive", "cnn", 16, 1, 400.0, 100.0),
        row("fleet_batched", "cnn", 16, 1, 50.0, 150.0),
        row("lane_batched", "cnn", 1, 1, 1.5, 600.0),
        row("lane_batched", "cnn", 16, 1, 10.0, 1200.0),
        row("lane_unbatched", "cnn", 16, 1, 30.0, 500.0),
        row("floor_beside_drain", "cnn", 1, 32, 10.0, 3200.0),
        row("lane_drain", "cnn", 1, 1, 0.4, 2880.0),
        row("floor_beside_drain", "cnn", 1, 32, 12.0, 2700.0),
    ]
    figures = ratios(rows, "cnn")
    assert figures["lane_overhead_ms"] == 1.0 and figures["lane_overhead_vs_noop"] == 0.25
    assert figures["lane_vs_celery_16"] == 8.0 and figures["lane_vs_naive_16"] == 12.0
    assert figures["lane_batched_vs_unbatched_16"] == 2.4
    assert figures["drain_vs_floor"] == 0.9  # against the faster floor beside the drain
    verdicts = bars(figures)
    assert [verdicts[n]["passed"] for n in BARS if n != "cold_start_s"] == [True] * 5
    no_beside = [r for r in rows if r.arm != "floor_beside_drain"]
    assert ratios(no_beside, "cnn")["drain_vs_floor"] == 0.96  # the first floor instead


def test_cpu_meter_reads_this_process_and_leaves_out_what_it_cannot_read() -> None:
    meter = CpuMeter({"client": os.getpid(), "gone": None, "nowhere": 2**22 + 12345})
    meter.start()
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn some CPU to measure
        pass
    figures = meter.per_request(10)
    assert set(figures) == {"client_cpu_us"} and figures["client_cpu_us"] > 0
    assert cpu_seconds(os.getpid()) is not None and cpu_seconds(2**22 + 12345) is None
    assert cpu_cell({"client_cpu_us": 12.3, "redis_cpu_us": 4.0}) == "12 / - / 4"
    assert cpu_cell({"busy_s": 1.0}) == ""


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
