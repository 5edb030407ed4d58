"""Stats split by job kind, with honest error rates (issue 13 item 5): a pipeline that
promoted is not an error, every record names its model, and plots leave gaps without data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from producers.plots import plot_latency, with_gaps
from shared.stats import group_stats, is_error, model_of


def rec(kind: str, outcome: str, ts: float, model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "model": model, "outcome": outcome, "ts": ts, "wall_ms": 10.0 + ts,
            "worker": "w", "device": "cpu", **extra}  # fmt: skip


def test_only_failures_are_errors() -> None:
    for outcome in ("success", "promoted", "gate_failed", "cancelled", "retry"):
        assert not is_error(outcome), outcome
    for outcome in ("failed", "error", "device_fault", "bad_tensor", "expired", "model_not_found"):
        assert is_error(outcome), outcome


def test_a_pipeline_that_promoted_counts_no_error_and_keeps_its_latency() -> None:
    records = [rec("pipeline", "promoted", 1), rec("pipeline", "gate_failed", 2)]
    records.append(rec("pipeline", "failed", 3))
    (group,) = group_stats(records)
    assert group["count"] == 3 and group["errors"] == 1
    assert group["error_rate"] == pytest.approx(1 / 3, rel=1e-5)
    assert group["latency_ms"]["wall_ms"]["p50"] == pytest.approx(11.5)


def test_the_default_grouping_splits_train_compress_and_infer() -> None:
    records = [rec("train", "success", 1), rec("compress", "invalid_job", 2)]
    records += [rec("infer", "success", 3, variant="base"), rec("infer", "bad_tensor", 4)]
    groups = group_stats(records)
    keys = [(g["kind"], g["model"], g["variant"]) for g in groups]
    assert keys == [("compress", "m", "-"), ("infer", "m", "-"), ("infer", "m", "base"),
                    ("train", "m", "-")]  # fmt: skip
    assert [g["error_rate"] for g in groups] == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("payload", "model"),
    [
        ({"kind": "train", "model_name": "cats"}, "cats"),
        ({"kind": "compress", "source": "cats:3:int8"}, "cats"),
        ({"kind": "infer", "model": "cats@production"}, "cats"),
        ({"kind": "pipeline", "train": {"model_name": "dogs"}, "steps": []}, "dogs"),
        ({"kind": "pipeline", "source": "dogs:1", "steps": []}, "dogs"),
        ({"kind": "infer", "model": "NOT A REF"}, None),
        ("not a job", None),
    ],
)
def test_every_job_payload_names_its_model(payload: Any, model: str | None) -> None:
    assert model_of(payload) == model


def test_buckets_without_data_are_gaps_not_lines() -> None:
    buckets = [{"start": 100.0, "p50": 1.0, "p95": 2.0, "p99": 3.0},
               {"start": 130.0, "p50": 4.0, "p95": 5.0, "p99": 6.0}]  # fmt: skip
    xs, series = with_gaps(buckets, origin=100.0, end=130.0, width=10.0)
    assert xs == [0.0, 10.0, 20.0, 30.0]
    assert series["p50"][0] == 1.0 and series["p50"][3] == 4.0
    assert math.isnan(series["p50"][1]) and math.isnan(series["p95"][2])


def test_the_latency_plot_has_one_series_per_kind(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    records = [rec("infer", "success", t) for t in (0.0, 1.0, 50.0)]
    records += [rec("pipeline", "promoted", 20.0), rec("train", "failed", 5.0)]
    figures = plot_latency(records, str(tmp_path / "p.png"), field="wall_ms", bucket_s=10)
    assert sorted(figures["buckets"]) == ["infer", "pipeline"]
    assert [b["start"] for b in figures["buckets"]["infer"]] == [0.0, 50.0]
    assert {(g["kind"], g["worker"]) for g in figures["workers"]} == {
        ("infer", "w"),
        ("pipeline", "w"),
    }
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
