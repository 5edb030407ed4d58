"""Prometheus metrics of the online lane: the Celery path's histograms under a
``torchfleet_lane_`` prefix with the same labels, fed from the lane's stats records."""

from __future__ import annotations

from prometheus_client import generate_latest

from shared.lane import LaneRequest
from shared.stats import stats_entry
from tests.unit.test_cache import samples
from workers.lane.answers import GroupAnswers, GroupRun
from workers.metrics import FleetMetrics

RUN = GroupRun(
    model="m", version=1, variant="base", digest="d", worker="w", device="cpu", cache_hit=True,
    batch_size=3, load_ms=0.0, preprocess_ms=0.1, compute_ms=1.5,
)  # fmt: skip


def request(i: int) -> LaneRequest:
    return LaneRequest(f"r{i}", "reply", "m", "float32", (1, 4), b"\0" * 16)


def test_lane_answers_and_refusals_become_lane_metrics_with_the_job_labels() -> None:
    metrics = FleetMetrics("cpu", lambda: 0)
    answers = GroupAnswers(RUN, ["a"], wait_ms=0.2, post_ms=0.1, total_ms=2.0, lane="cpu")
    records = [answers.stats_record(request(i), queued_ms=3.0, inputs=1) for i in range(3)]
    records.append(
        stats_entry(kind="infer", job_id="bad", outcome="model_not_found", error="no m2")
    )
    metrics.observe_lane(records)
    values = samples(generate_latest(metrics.registry).decode())
    labels = (("device", "cpu"), ("model", "m"), ("variant", "base"))
    assert values["torchfleet_lane_worker_total_ms_count", labels] == 3
    assert values["torchfleet_lane_worker_total_ms_sum", labels] == 6.0
    assert values["torchfleet_lane_compute_ms_sum", labels] == 4.5
    assert values["torchfleet_lane_batch_size_sum", labels] == 9
    assert values["torchfleet_lane_queue_wait_ms_bucket", (labels[0], ("le", "5.0"), *labels[1:])]
    assert values["torchfleet_lane_failures_total", (("code", "model_not_found"),)] == 1
    # the job path's own series stay apart
    assert ("torchfleet_worker_total_ms_count", labels) not in values
