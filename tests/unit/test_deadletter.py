"""The dead-letter list against a real redis-server: its byte cap, and requeue's routing
(device queue and priority of a job, stream of a lane request), with no worker listening."""

from __future__ import annotations

import json
import time

import pytest
import redis

from shared.celery_app import create_app
from shared.deadletter import (
    LANE_FIELDS,
    DeadLetter,
    dead_letter,
    entry_for,
    keep_fields,
    list_dead_letters,
)
from shared.lane import F_SUBMITTED, encode_request, result_key
from shared.names import (
    KEY_DEADLETTER,
    KEY_DEADLETTER_BYTES,
    TASK_INFER,
    TASK_LANE,
    cancel_key,
    lane_reply_key,
    lane_stream,
    queue_keys,
)
from shared.requeue import CANCELLED, DROPPED, NO_BYTES, requeue
from shared.settings import Settings, get_settings

PAYLOAD = {"kind": "infer", "model": "m", "inputs": {"data": "x" * 1000, "shape": [1]}}


def letter(job_id: str, **extra: object) -> DeadLetter:
    fields = {"task": TASK_INFER, "args": [PAYLOAD], "reason": "test", "deliveries": 4}
    return DeadLetter.model_validate({"job_id": job_id, **fields, **extra})


def stored_bytes(client: redis.Redis) -> int:
    return sum(len(raw) for raw in client.lrange(KEY_DEADLETTER, 0, -1))


# ----------------------------------------------------------------- the byte cap
def test_the_oldest_entries_go_past_the_byte_cap(redis_client: redis.Redis) -> None:
    size = len(letter("j0").model_dump_json())
    cap = size * 3 + size // 2
    for i in range(6):
        held = dead_letter(redis_client, letter(f"j{i}"), max_bytes=cap)
        assert held == stored_bytes(redis_client) <= cap
    assert [e.job_id for e in list_dead_letters(redis_client)] == ["j3", "j4", "j5"]
    assert int(redis_client.get(KEY_DEADLETTER_BYTES) or 0) == stored_bytes(redis_client)


def test_an_entry_over_the_cap_alone_is_kept_without_its_payload(
    redis_client: redis.Redis,
) -> None:
    dead_letter(redis_client, letter("small"), max_bytes=10_000)
    big = letter("big", args=[{**PAYLOAD, "inputs": {"data": "x" * 20_000}}])
    dead_letter(redis_client, big, max_bytes=10_000)
    entries = {e.job_id: e for e in list_dead_letters(redis_client)}
    assert entries["big"].payload_dropped and entries["big"].args == []
    assert entries["big"].reason == "test" and not entries["small"].payload_dropped
    assert stored_bytes(redis_client) <= 10_000


def test_the_byte_count_is_rebuilt_when_it_is_missing(redis_client: redis.Redis) -> None:
    for i in range(3):
        dead_letter(redis_client, letter(f"j{i}"), max_bytes=10**6)
    redis_client.delete(KEY_DEADLETTER_BYTES)
    assert dead_letter(redis_client, letter("j3"), max_bytes=10**6) == stored_bytes(redis_client)
    redis_client.delete(KEY_DEADLETTER)  # emptied by hand: the count starts again
    assert dead_letter(redis_client, letter("j4"), max_bytes=10**6) == stored_bytes(redis_client)


def test_the_byte_cap_comes_from_the_settings(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = len(letter("j0").model_dump_json())
    monkeypatch.setenv("TORCHFLEET_DEADLETTER_MAX_BYTES", str(size * 2 + size // 2))
    get_settings.cache_clear()
    try:
        for i in range(4):
            dead_letter(redis_client, letter(f"j{i}"))
    finally:
        get_settings.cache_clear()
    assert [e.job_id for e in list_dead_letters(redis_client)] == ["j2", "j3"]


# ----------------------------------------------------------------- Celery jobs
def test_the_dead_letter_keeps_the_queue_and_priority_of_the_delivery() -> None:
    info = {"exchange": "infer.cuda", "routing_key": "infer.cuda", "priority": 0}
    entry = entry_for("j", TASK_INFER, [PAYLOAD], 4, 3, "w1", delivery_info=info)
    assert (entry.queue, entry.priority) == ("infer.cuda", 0)


def test_requeue_sends_a_job_to_its_device_queue_with_its_priority(
    redis_client: redis.Redis, settings: Settings
) -> None:
    app = create_app(settings)
    dead_letter(redis_client, letter("urgent", queue="infer.cuda", priority=0))
    dead_letter(redis_client, letter("relaxed", queue="infer.cuda", priority=9))
    done = requeue(redis_client, app, settings=settings)
    assert done.requeued == ["urgent", "relaxed"] and done.refused == {}
    urgent, _, _, relaxed = queue_keys("infer.cuda")  # lanes 0 (most urgent) .. 9
    assert [message_id(m) for m in redis_client.lrange(urgent, 0, -1)] == ["urgent"]
    assert [message_id(m) for m in redis_client.lrange(relaxed, 0, -1)] == ["relaxed"]
    assert all(not redis_client.llen(k) for k in queue_keys("infer"))
    assert list_dead_letters(redis_client) == []
    assert int(redis_client.get(KEY_DEADLETTER_BYTES) or 0) == 0


def test_a_cancelled_job_stays_in_the_dead_letters_with_the_reason(
    redis_client: redis.Redis, settings: Settings
) -> None:
    dead_letter(redis_client, letter("stopped", queue="infer.cpu", priority=9))
    redis_client.set(cancel_key("stopped"), "1")
    done = requeue(redis_client, create_app(settings), ["stopped"], settings=settings)
    assert done.requeued == [] and done.refused == {"stopped": CANCELLED}
    assert "new id" in CANCELLED
    assert [e.job_id for e in list_dead_letters(redis_client)] == ["stopped"]
    assert not any(redis_client.llen(k) for k in queue_keys("infer.cpu"))


def test_an_entry_without_its_payload_is_not_requeued(
    redis_client: redis.Redis, settings: Settings
) -> None:
    dead_letter(redis_client, letter("gone", payload_dropped=True, args=[]))
    done = requeue(redis_client, create_app(settings), settings=settings)
    assert done.refused == {"gone": DROPPED}


# ----------------------------------------------------------------- lane requests
def lane_letter(stream: str, fields: dict[bytes, bytes] | None, rid: str = "r1") -> DeadLetter:
    request: dict[str, object] = {"lane": stream, "entry": "1-0", "id": rid, "model": "m"}
    if fields is not None:
        request[LANE_FIELDS] = keep_fields(fields)
    return DeadLetter(job_id=rid, task=TASK_LANE, args=[request], reason="x", deliveries=3)


def test_requeue_adds_a_lane_request_back_to_its_own_stream(
    redis_client: redis.Redis, settings: Settings
) -> None:
    high = lane_stream("cuda", high=True)
    fields = encode_request(
        request_id="r1", reply_to=lane_reply_key("c1"), model="m", data=b"\0" * 12,
        dtype="float32", shape=[1, 3], submitted_at=1.0, store=True,
    )  # fmt: skip
    dead_letter(redis_client, lane_letter(high, fields))
    redis_client.set(result_key("r1"), json.dumps({"status": "FAILURE"}))
    before = time.time()
    done = requeue(redis_client, create_app(settings), ["r1"], settings=settings)
    assert done.requeued == ["r1"]
    assert redis_client.xlen(lane_stream("cuda")) == 0
    [(_, sent)] = redis_client.xrange(high)
    assert float(sent.pop(F_SUBMITTED)) >= before  # queue time counts from the requeue
    assert sent == {k: v for k, v in fields.items() if k != F_SUBMITTED}
    assert not redis_client.exists(result_key("r1"))  # no stale dead_lettered answer
    assert list_dead_letters(redis_client) == []


def test_a_lane_request_without_its_bytes_is_not_requeued(
    redis_client: redis.Redis, settings: Settings
) -> None:
    dead_letter(redis_client, lane_letter(lane_stream("cpu"), None, "unanswerable"))
    dead_letter(redis_client, lane_letter("torchfleet:deadletter", {b"v": b"1"}, "elsewhere"))
    done = requeue(redis_client, create_app(settings), settings=settings)
    assert done.requeued == [] and done.refused["unanswerable"] == NO_BYTES
    assert "not a lane stream" in done.refused["elsewhere"]
    assert len(list_dead_letters(redis_client)) == 2


def message_id(raw: bytes) -> str:
    return str(json.loads(raw)["headers"]["id"])
