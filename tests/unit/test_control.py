"""Job control without a worker: priority lanes, device queues, deadlines, cancel flags, gates."""

from __future__ import annotations

import pytest
import redis

from shared.errors import GateFailed, InvalidJob, JobExpired
from shared.jobs import PipelineJob, VariantReport
from shared.names import cancel_key, queue_keys, queues_for, transport_priority
from tests.unit.compression_helpers import variant_report
from workers.chain import choose_variant
from workers.control import JobCancelled, cancellable, check_deadline, serves_inference


def test_higher_job_priority_gets_a_lower_transport_lane() -> None:
    assert [transport_priority(p) for p in (0, 3, 7, 9)] == [9, 6, 2, 0]
    assert transport_priority(42) == 0 and transport_priority(-1) == 9


def test_queues_for_adds_the_device_queues() -> None:
    assert queues_for("cuda:1", ["train", "infer"]) == [
        "train",
        "infer",
        "train.cuda",
        "infer.cuda",
    ]
    assert queues_for("cpu", ["infer"]) == ["infer", "infer.cpu"]
    assert queues_for("auto", ["infer"]) == ["infer"]


def test_queue_keys_name_every_priority_lane() -> None:
    assert queue_keys("infer") == ["infer", "infer\x06\x163", "infer\x06\x166", "infer\x06\x169"]


def test_serves_inference() -> None:
    assert serves_inference(["train", "infer.cuda"]) and not serves_inference(["train"])


def test_check_deadline() -> None:
    job = PipelineJob.model_validate(
        {"source": "m", "steps": [{"method": "quantize_dynamic"}], "deadline": 100.0}
    )
    check_deadline(job, "j", now=99.0)
    with pytest.raises(JobExpired, match="after its deadline"):
        check_deadline(job, "j", now=101.0)
    check_deadline(object(), "j", now=1e12)  # jobs without a deadline never expire


def test_cancellable_progress_stops_on_the_flag(redis_client: redis.Redis) -> None:
    now = [0.0]
    seen: list[dict] = []
    report = cancellable(seen.append, redis_client, "job-1", interval_s=1.0, clock=lambda: now[0])
    report({"epoch": 1})
    redis_client.set(cancel_key("job-1"), "1")
    now[0] = 0.5
    report({"epoch": 2})  # checked less than interval_s ago: not checked again yet
    now[0] = 1.6
    with pytest.raises(JobCancelled, match="cancelled"):
        report({"epoch": 3})
    assert seen == [{"epoch": 1}, {"epoch": 2}]


def _variant(name: str, passed: bool, speedup: float) -> VariantReport:
    notes = [] if passed else ["gate failed: speed-up 0.50x < 2.0x"]
    return variant_report(name, speedup, passed=passed, notes=notes)


def _job(**kw: object) -> PipelineJob:
    steps = [{"method": "prune_l1", "variant": "b"}, {"method": "quantize_dynamic", "variant": "a"}]
    return PipelineJob(source="m", steps=steps, **kw)  # type: ignore[arg-type]


def test_choose_variant_takes_the_fastest_passing_one() -> None:
    variants = [_variant("a", True, 1.5), _variant("b", True, 2.5), _variant("c", False, 9)]
    assert choose_variant(_job(), variants).variant == "b"


def test_choose_variant_refuses_a_named_variant_that_failed() -> None:
    variants = [_variant("a", False, 0.5), _variant("b", True, 2.5)]
    with pytest.raises(GateFailed, match=r"'a' failed its gates.*speed-up 0\.50x"):
        choose_variant(_job(variant="a"), variants)
    with pytest.raises(GateFailed, match="no variant passed"):
        choose_variant(_job(), [_variant("a", False, 0.5)])
    with pytest.raises(InvalidJob, match="no variant 'b'"):
        choose_variant(_job(variant="b"), [_variant("a", True, 2)])


def test_pipeline_job_validation() -> None:
    with pytest.raises(ValueError, match="exactly one of train"):
        PipelineJob(steps=[{"method": "quantize_dynamic"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="not produced by any step"):
        _job(variant="zzz")
    job = PipelineJob(train={"model_name": "m2", "epochs": 1}, steps=[{"method": "prune_l1"}])  # type: ignore[arg-type,list-item]
    assert job.model_name == "m2" and job.compress_dataset().name == "digits"
