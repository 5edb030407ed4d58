"""The reliability helpers on their own: payload limits, delivery counts, dead letters,
visibility renewal and the fatal-device-error test (shared/deadletter.py, workers/admission.py,
workers/faults.py, workers/transport.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from shared.deadletter import (
    DeadLetter,
    crash_count,
    dead_letter,
    delivery_counts,
    list_dead_letters,
)
from shared.errors import DeadLettered, InvalidJob
from shared.names import KEY_DEADLETTER
from shared.names import KOMBU_UNACKED_INDEX as UNACKED_INDEX_KEY
from shared.payload import check_payload
from shared.requeue import requeue
from shared.settings import Settings
from workers.admission import admit, mark_running, settle
from workers.faults import is_fatal_device_error
from workers.transport import renew_visibility


def request(job_id: str = "j1", retries: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        id=job_id, task="torchfleet.infer", args=[{"kind": "infer"}], retries=retries
    )


# ----------------------------------------------------------------- payload limits
def test_a_payload_within_the_limits_passes() -> None:
    check_payload({"kind": "infer", "inputs": {"data": "x" * 100, "shape": [1, 2]}}, 1000)


def test_a_payload_over_the_byte_limit_names_the_setting() -> None:
    with pytest.raises(InvalidJob, match="max_payload_bytes=1000"):
        check_payload({"data": "x" * 1001}, 1000)


def test_a_long_list_of_numbers_counts_towards_the_limit() -> None:
    with pytest.raises(InvalidJob, match="max_payload_bytes"):
        check_payload({"inputs": list(range(1000))}, 1000)


def test_nesting_deeper_than_any_parser_stack_is_refused_without_recursion() -> None:
    value: Any = 0
    for _ in range(100_000):
        value = {"a": value}
    with pytest.raises(InvalidJob, match="nests deeper than 32"):
        check_payload(value, 10**9)


# ----------------------------------------------------------------- device errors
@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (RuntimeError("CUDA error: device-side assert triggered"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), True),
        (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasSgemm"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (ValueError("CUDA error in a value error is still input"), False),
        (InvalidJob("CUDA error mentioned in an input error"), False),
    ],
)
def test_only_unrecoverable_device_errors_replace_the_worker(error: Exception, fatal: bool) -> None:
    assert is_fatal_device_error(error) is fatal


def test_an_accelerator_error_is_fatal_whatever_its_message() -> None:
    accelerator_error = type("AcceleratorError", (RuntimeError,), {})
    assert is_fatal_device_error(accelerator_error("unspecified"))


# ----------------------------------------------------------------- deliveries
def test_deliveries_are_counted_and_a_job_that_keeps_killing_its_worker_is_dead_lettered(
    redis_client: redis.Redis,
) -> None:
    settings = Settings(max_deliveries=2)
    admit(redis_client, settings, request(), "w1", {"kind": "infer"})  # its worker dies
    again = admit(redis_client, settings, request(), "w1", {"kind": "infer"})
    assert again.suspect and not again.marked  # it runs alone, marked once it starts
    mark_running(redis_client, "j1", again.token, alone=True, ttl_s=60)  # and dies again
    assert delivery_counts(redis_client, "j1") == {"delivered": 2, "executed": 2}
    with pytest.raises(DeadLettered, match="delivered 2 times"):
        admit(redis_client, settings, request(), "w1", {"kind": "infer"})
    assert delivery_counts(redis_client, "j1") == {"delivered": 3, "executed": 2}
    [entry] = list_dead_letters(redis_client)
    assert (entry.job_id, entry.task, entry.deliveries, entry.worker) == (
        "j1", "torchfleet.infer", 3, "w1",
    )  # fmt: skip
    assert entry.args == [{"kind": "infer"}]
    assert 0 < redis_client.ttl("torchfleet:deliveries:j1") <= settings.result_ttl_s


def test_deliveries_that_ended_are_never_held_against_the_job(redis_client: redis.Redis) -> None:
    """Retries, rejections, failures: every delivery that ended settles its token."""
    settings = Settings(max_deliveries=1)
    for retries in range(4):
        admission = admit(redis_client, settings, request(retries=retries), "w1", {})
        assert not admission.suspect
        settle(redis_client, "j1", admission.token)
    assert list_dead_letters(redis_client) == []
    assert crash_count(redis_client, "j1") == 0


def test_an_oversized_payload_is_refused_but_counted_as_delivered(
    redis_client: redis.Redis,
) -> None:
    settings = Settings(max_payload_bytes=100)
    with pytest.raises(InvalidJob, match="max_payload_bytes"):
        admit(redis_client, settings, request(), "w1", {"data": "x" * 200})
    assert delivery_counts(redis_client, "j1") == {"delivered": 1, "executed": 0}


def test_admission_is_one_round_trip_that_also_answers_the_callers_reads(
    redis_client: redis.Redis,
) -> None:
    redis_client.set("flag", "1")
    redis_client.hset("record", "field", "value")
    admission = admit(
        redis_client, Settings(), request(), "w1", {"kind": "infer"},
        result_key="celery-task-meta-j1",
        reads={
            "flag": lambda pipe: pipe.exists("flag"),
            "record": lambda pipe: pipe.hgetall("record"),
        },
    )  # fmt: skip
    assert admission.stored is None
    assert admission.replies == {"flag": 1, "record": {b"field": b"value"}}
    assert delivery_counts(redis_client, "j1") == {"delivered": 1, "executed": 1}


def test_a_redelivered_finished_job_gets_its_stored_result_and_counts_nothing(
    redis_client: redis.Redis,
) -> None:
    settings = Settings()
    admit(redis_client, settings, request(), "w1", {})
    meta = {"status": "SUCCESS", "result": {"labels": [3]}, "task_id": "j1"}
    redis_client.set("celery-task-meta-j1", json.dumps(meta))
    again = admit(redis_client, settings, request(), "w1", {}, result_key="celery-task-meta-j1")
    assert again.stored == {"labels": [3]} and again.replies == {}
    assert delivery_counts(redis_client, "j1") == {"delivered": 1, "executed": 1}


@pytest.mark.parametrize(
    "meta", [b"not json", json.dumps({"status": "FAILURE", "result": {"exc_type": "X"}})]
)
def test_a_failed_or_unreadable_earlier_result_does_not_stop_a_new_run(
    redis_client: redis.Redis, meta: str | bytes
) -> None:
    redis_client.set("celery-task-meta-j1", meta)
    admission = admit(
        redis_client, Settings(), request(), "w1", {}, result_key="celery-task-meta-j1"
    )
    assert admission.stored is None
    assert delivery_counts(redis_client, "j1") == {"delivered": 1, "executed": 1}


def test_unreadable_dead_letters_are_skipped(redis_client: redis.Redis) -> None:
    redis_client.rpush(KEY_DEADLETTER, b"not json", json.dumps({"job_id": "x"}))
    dead_letter(redis_client, DeadLetter(job_id="ok", task="t", reason="r", deliveries=4))
    assert [e.job_id for e in list_dead_letters(redis_client)] == ["ok"]


class FakeApp:
    """Records what requeue asks of Celery (sending is tested end to end elsewhere)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.forgotten: list[str] = []
        self.backend = SimpleNamespace(forget=self.forgotten.append)

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append({"name": name, **options})


def test_requeue_sends_the_chosen_entries_again_and_resets_their_count(
    redis_client: redis.Redis,
) -> None:
    for job_id in ("a", "b"):
        dead_letter(
            redis_client,
            DeadLetter(
                job_id=job_id,
                task="torchfleet.train",
                args=[{"k": job_id}],
                reason="r",
                deliveries=4,
            ),
        )
        redis_client.hset(f"torchfleet:deliveries:{job_id}", "delivered", 4)
    app = FakeApp()
    assert requeue(redis_client, app, ["b", "zzz"]).requeued == ["b"]
    assert app.sent == [
        {"name": "torchfleet.train", "args": [{"k": "b"}], "task_id": "b", "queue": "train"}
    ]
    assert app.forgotten == ["b"]
    assert delivery_counts(redis_client, "b")["delivered"] == 0
    assert [e.job_id for e in list_dead_letters(redis_client)] == ["a"]
    assert requeue(redis_client, app, None).requeued == ["a"]
    assert list_dead_letters(redis_client) == []


# ----------------------------------------------------------------- visibility
def test_renewal_refreshes_held_deliveries_and_never_resurrects_acked_ones(
    redis_client: redis.Redis,
) -> None:
    redis_client.zadd(UNACKED_INDEX_KEY, {"held": 100.0})
    assert renew_visibility(redis_client, ["held", "acked"], now=5000.0) == 2
    assert redis_client.zscore(UNACKED_INDEX_KEY, "held") == 5000.0
    assert redis_client.zscore(UNACKED_INDEX_KEY, "acked") is None
    assert renew_visibility(redis_client, []) == 0


def test_connection_errors_are_told_apart_from_job_errors() -> None:
    from kombu.exceptions import OperationalError

    from workers.faults import is_connection_error

    assert is_connection_error(redis.ConnectionError("Error 111 connecting"))
    assert is_connection_error(redis.TimeoutError("Timeout reading from socket"))
    assert is_connection_error(OperationalError("broker gone"))
    try:
        try:
            raise redis.ConnectionError("down")
        except redis.ConnectionError as inner:
            raise RuntimeError("while resolving the model") from inner
    except RuntimeError as outer:
        assert is_connection_error(outer)
    assert not is_connection_error(ValueError("bad shape"))
    assert not is_connection_error(redis.ResponseError("WRONGTYPE"))


def test_orphans_are_jobs_with_no_result_no_queued_and_no_unacked_message(
    redis_client: redis.Redis,
) -> None:
    from shared.deadletter import orphaned

    def message(job_id: str) -> str:
        return json.dumps({"body": "", "headers": {"id": job_id, "task": "torchfleet.infer"}})

    queue = "orphan-test"  # a queue no live worker of the session consumes
    redis_client.rpush(queue, message("queued"))
    redis_client.rpush(f"{queue}\x06\x169", message("queued-low"))
    redis_client.hset("unacked", "tag-1", json.dumps([json.loads(message("running")), "", "infer"]))
    redis_client.set("celery-task-meta-done", json.dumps({"status": "SUCCESS"}))
    ids = ["queued", "queued-low", "running", "done", "dropped"]
    assert orphaned(redis_client, ids, [queue, "orphan-test-2"]) == ["dropped"]
    assert orphaned(redis_client, ["done"], [queue]) == []


def transport_qos(pipes: list[Any]) -> Any:
    """A kombu Redis QoS with its Redis replaced by the given pipelines (or errors)."""
    from contextlib import contextmanager

    from kombu.transport.redis import QoS

    from workers.transport import guard_transport

    guard_transport(retry_s=5)
    qos: Any = object.__new__(QoS)
    delivered: dict[str, Any] = {}
    dirty: set[str] = set()
    qos.__dict__.update(
        _delivered=delivered,
        _dirty=dirty,
        _quick_append=delivered.__setitem__,
        _quick_ack=dirty.add,
        unacked_key="unacked",
        unacked_index_key="unacked_index",
    )

    @contextmanager
    def pipe_or_acquire(pipe: Any = None, client: Any = None) -> Any:
        step = pipes.pop(0)
        if isinstance(step, Exception):
            raise step
        yield step

    qos.pipe_or_acquire = pipe_or_acquire
    return qos


def test_a_delivery_is_recorded_once_redis_is_back_instead_of_being_dropped(
    redis_client: redis.Redis,
) -> None:
    pipes = [redis.ConnectionError("down"), redis.ConnectionError("down"), redis_client.pipeline()]
    qos = transport_qos(pipes)
    message = SimpleNamespace(delivery_info={"exchange": "infer", "routing_key": "infer"}, _raw={})
    qos.append(message, "tag-9")
    assert redis_client.hexists("unacked", "tag-9") and qos._delivered["tag-9"] is message


def test_a_failed_restore_on_connection_loss_leaves_the_messages_to_the_sweeps() -> None:
    qos = transport_qos([])
    qos._delivered["tag-1"] = object()

    def gone(client: Any = None) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'hostname'")

    qos.channel = SimpleNamespace(conn_or_acquire=gone)
    qos.restore_unacked()  # kombu raised here and Celery stopped the worker
    assert qos._delivered == {}


def test_an_ack_on_a_channel_that_lost_its_connection_leaves_the_message_to_the_sweeps() -> None:
    qos = transport_qos([AttributeError("'NoneType' object has no attribute 'client'")])
    qos._delivered["tag-2"] = object()
    qos.ack("tag-2")  # kombu raised here and Celery stopped the worker
    assert "tag-2" in qos._dirty  # settled here; Redis still holds it for the sweeps
