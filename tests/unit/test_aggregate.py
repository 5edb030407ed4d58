"""Pure aggregation: durations, percentiles, stats groups, time buckets, group summaries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import InputError
from shared.stats import (
    Member,
    bucket_stats,
    choose_bucket_s,
    decode_record,
    group_stats,
    member_from_meta,
    parse_since,
    percentile,
    summarize_group,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10m", 600), ("2h", 7200), ("30s", 30), ("1d", 86400), ("500ms", 0.5), ("90", 90)],
)
def test_parse_since(text: str, seconds: float) -> None:
    assert parse_since(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "0m", "-5m", "10 minutes", "m"])
def test_parse_since_refuses_nonsense(text: str) -> None:
    with pytest.raises(InputError, match="bad duration"):
        parse_since(text)


@given(
    st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=50),
    st.sampled_from([0, 1, 50, 90, 95, 99, 100]),
)
def test_percentile_matches_numpy(values: list[float], q: int) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_decode_record_turns_numbers_back() -> None:
    record = decode_record(
        {b"kind": b"infer", b"model": b"007", b"ts": b"12.5", b"total_worker_ms": b"3.25"}
    )
    assert record == {"kind": "infer", "model": "007", "ts": 12.5, "total_worker_ms": 3.25}


def _rec(worker: str, outcome: str, ts: float, total: float, model: str = "m") -> dict:
    return {
        "kind": "infer",
        "model": model,
        "variant": "base",
        "device": "cpu",
        "worker": worker,
        "outcome": outcome,
        "ts": ts,
        "total_worker_ms": total,
        "wall_ms": total + 1,
        "inputs": 4.0,
    }


def test_group_stats_counts_errors_and_percentiles_per_group() -> None:
    records = [_rec("w1", "success", 100 + i, float(i)) for i in range(1, 11)]
    records += [_rec("w1", "expired", 111, 0.0), _rec("w1", "retry", 112, 0.0)]
    records += [_rec("w2", "success", 100, 5.0)]
    groups = group_stats(records, window_s=20)
    assert [g["worker"] for g in groups] == ["w1", "w2"]
    w1 = groups[0]
    assert w1["count"] == 11 and w1["errors"] == 1 and w1["retries"] == 1
    assert w1["error_rate"] == pytest.approx(1 / 11, rel=1e-5)
    assert w1["throughput_per_s"] == pytest.approx(11 / 20)
    assert w1["inputs_per_s"] == pytest.approx(40 / 20)
    assert w1["outcomes"] == {"expired": 1, "success": 10}
    total = w1["latency_ms"]["total_worker_ms"]
    assert total["p50"] == pytest.approx(5.5) and total["p99"] == pytest.approx(9.91)
    assert w1["latency_ms"]["wall_ms"]["p50"] == pytest.approx(6.5)
    assert groups[1]["count"] == 1 and groups[1]["error_rate"] == 0.0


def test_group_stats_without_window_uses_the_records_span() -> None:
    records = [_rec("w", "success", 10.0, 1.0), _rec("w", "success", 14.0, 1.0)]
    (group,) = group_stats(records, group_by=("model",))
    assert group == {**group, "model": "m", "count": 2, "throughput_per_s": 0.5}


def test_bucket_stats_floor_each_record_into_its_bucket() -> None:
    records = [_rec("w", "success", t, v) for t, v in [(0.5, 1), (9.9, 3), (10, 10), (25, 7)]]
    records.append(_rec("w", "bad_tensor", 26, 99))
    buckets = bucket_stats(records, bucket_s=10)
    assert [(b["start"], b["count"]) for b in buckets] == [(0, 2), (10, 1), (20, 1)]
    assert buckets[0]["p50"] == pytest.approx(2.0)


def test_choose_bucket_s_gives_about_thirty_buckets() -> None:
    assert choose_bucket_s(10) == 1
    assert choose_bucket_s(600) == 30
    assert choose_bucket_s(10**9) == 86400


def _infer(acc: float | None, n: int, total: float) -> dict:
    return {
        "model": "m",
        "version": 1,
        "variant": "base",
        "worker": "w",
        "accuracy": acc,
        "predictions": [[{"label": 0, "score": 1.0}]] * n,
        "latency": {"total_worker_ms": total, "compute_ms": total / 2},
    }


def test_member_from_meta_reads_celery_records() -> None:
    assert member_from_meta(None) == Member("PENDING")
    ok = member_from_meta({"status": "SUCCESS", "result": {"a": 1}})
    assert ok.result == {"a": 1}
    failed = {"status": "FAILURE", "result": {"exc_type": "JobExpired", "exc_message": ["x"]}}
    assert member_from_meta(failed).error_code == "expired"
    odd = {"status": "FAILURE", "result": {"exc_type": "ZeroDivisionError"}}
    assert member_from_meta(odd).error_code == "ZeroDivisionError"
    assert member_from_meta({"status": "REVOKED"}).error_code == "cancelled"
    assert member_from_meta({"status": "STARTED"}).status == "STARTED"


def test_summarize_group_weights_accuracy_by_labelled_inputs() -> None:
    members = [
        Member("SUCCESS", result=_infer(1.0, 3, 2.0)),
        Member("SUCCESS", result=_infer(0.0, 1, 4.0)),
        Member("SUCCESS", result=_infer(None, 5, 6.0)),
        Member("FAILURE", error_code="bad_tensor"),
        Member("PENDING"),
    ]
    summary = summarize_group("g", members, now=1.0)
    assert (summary.count, summary.done, summary.succeeded) == (5, 4, 3)
    assert (summary.failed, summary.pending) == (1, 1)
    assert summary.outcomes == {"bad_tensor": 1, "success": 3}
    assert summary.inputs == 9 and summary.labelled_inputs == 4
    assert summary.accuracy == pytest.approx(0.75)
    assert summary.latency["total_worker_ms"].p50 == pytest.approx(4.0)
    assert summary.models == ["m:1:base"] and summary.workers == ["w"]


def test_summarize_group_without_labels_has_no_accuracy() -> None:
    summary = summarize_group("g", [Member("SUCCESS", result=_infer(None, 2, 1.0))])
    assert summary.accuracy is None and summary.labelled_inputs == 0
