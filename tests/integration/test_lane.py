"""The online lane end to end: real redis-server, real worker processes, no sleeps.

The session's worker serves the cpu lane beside its Celery queues; the recovery tests run
their own fleet (short claim and heartbeat times) so that a dead consumer's requests come
back in about a second.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import redis

from producers.client import Client
from shared.connection import redis_client
from shared.errors import JobFailed, Overloaded
from shared.jobs import InferResult
from shared.lane import F_DTYPE, F_REPLY, F_SHAPE, decode_reply, encode_request
from shared.names import (
    CONTROL_LANE,
    KEY_DEADLETTER,
    LANE_GROUP,
    lane_reply_key,
    lane_stream,
)
from shared.registry import ModelRegistry
from shared.settings import Settings
from tests.fleet import Registered, WorkerProcess, register_cnn
from tests.integration.chaos_harness import (
    ChaosFleet,
    chaos_input,
    open_fleet,
    register_chaos,
)
from tests.integration.test_infer import batch, expected_labels
from tests.integration.test_realtime import add_variant
from workers.bench.chaos_models import MODE_HOLD

pytestmark = pytest.mark.integration
WAIT_S = 120
FAST_RECOVERY = {
    "TORCHFLEET_LANE_CLAIM_IDLE_MS": "500",
    "TORCHFLEET_LANE_CLAIM_INTERVAL_S": "0.2",
    "TORCHFLEET_LANE_HEARTBEAT_S": "0.2",
    "TORCHFLEET_LANE_BLOCK_MS": "100",
    "TORCHFLEET_LANE_MAX_DELIVERIES": "2",
}


@pytest.fixture
def cnn(fleet_settings: Settings) -> Registered:
    return register_cnn(fleet_settings, seed=uuid.uuid4().int % 2**31)


def lane_control(client: Client, worker: str, action: str) -> dict[str, Any]:
    replies = client.app.control.broadcast(
        CONTROL_LANE, arguments={"action": action}, destination=[worker], reply=True, timeout=20
    )
    assert replies, f"{worker} did not answer {CONTROL_LANE} {action}"
    answer: dict[str, Any] = next(iter(replies[0].values()))
    assert "error" not in answer and "skipped" not in answer, answer
    return answer


class Paused:
    """The worker's lane consumer paused for the block (resumed on the way out)."""

    def __init__(self, client: Client, worker: WorkerProcess) -> None:
        self.client, self.worker = client, worker

    def __enter__(self) -> Paused:
        lane_control(self.client, self.worker.name, "pause")
        return self

    def __exit__(self, *exc: object) -> None:
        lane_control(self.client, self.worker.name, "resume")


# ---------------------------------------------------------------- answers
def test_the_lane_answers_with_every_field_and_the_models_own_predictions(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    inputs = batch(3, seed=5)
    answer = client.infer(cnn.name, inputs, top_k=2, timeout=WAIT_S)
    result = InferResult.model_validate(answer)
    assert [p[0].label for p in result.predictions] == expected_labels(cnn.module, inputs)
    assert all(len(p) == 2 for p in result.predictions)
    assert (result.model, result.version, result.variant) == (cnn.name, cnn.version, "base")
    assert result.worker == worker.name and result.device == "cpu"
    assert result.latency.compute_ms > 0 and result.latency.total_worker_ms > 0
    again = InferResult.model_validate(client.infer(cnn.name, inputs, timeout=WAIT_S))
    assert again.cache_hit and again.latency.load_ms == 0


def test_concurrent_requests_share_forwards(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    futures = [client.infer_async(cnn.name, batch(1, seed=i)) for i in range(64)]
    answers = [f.result(WAIT_S) for f in futures]
    assert len({a["job_id"] for a in answers}) == 64
    assert max(a["batch_size"] for a in answers) > 1


def test_high_priority_requests_are_served_first(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    client.infer(cnn.name, batch(1), timeout=WAIT_S)  # warm: no load inside the batch
    order: list[str] = []

    def track(kind: str, future: Future[dict[str, Any]]) -> None:
        future.add_done_callback(lambda _: order.append(kind))

    with Paused(client, worker):
        for i in range(20):
            track("normal", client.infer_async(cnn.name, batch(1, seed=i)))
        for i in range(5):
            track("high", client.infer_async(cnn.name, batch(1, seed=i), priority=9))
    deadline = time.monotonic() + WAIT_S
    while len(order) < 25 and time.monotonic() < deadline:
        time.sleep(0.01)  # waits on the client's listener resolving futures
    assert order[:5] == ["high"] * 5 and order.count("normal") == 20


def test_a_request_past_its_deadline_is_answered_expired_without_compute(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    with pytest.raises(JobFailed) as caught:
        client.infer(cnn.name, batch(1), deadline=time.time() - 1, timeout=WAIT_S)
    assert caught.value.error_code == "expired" and "deadline" in caught.value.message


def test_an_alias_moved_between_requests_is_seen_by_the_next_one(
    client: Client, worker: WorkerProcess, cnn: Registered, fleet_settings: Settings
) -> None:
    registry = ModelRegistry(redis_client(fleet_settings))
    old = registry.get(cnn.name, cnn.version).digest
    new = add_variant(fleet_settings, cnn.name, cnn.version, "fresh", seed=4321)
    registry.set_alias(cnn.name, "production", cnn.version)
    ref = f"{cnn.name}@production"
    assert client.infer(ref, batch(1), timeout=WAIT_S)["model_digest"] == old
    registry.set_alias(cnn.name, "production", cnn.version, "fresh")
    answer = client.infer(ref, batch(1), timeout=WAIT_S)
    assert (answer["model_digest"], answer["variant"]) == (new, "fresh")


def test_stored_answers_are_pollable_like_jobs(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    request_id = f"lane-{uuid.uuid4().hex}"
    answer = client.infer(cnn.name, batch(1), store=True, request_id=request_id, timeout=WAIT_S)
    state = client.state(request_id)
    assert state.status == "SUCCESS" and state.result == answer
    assert client.wait(request_id, timeout=WAIT_S) == answer
    failed_id = f"lane-{uuid.uuid4().hex}"
    with pytest.raises(JobFailed):
        client.infer("no-such-model", batch(1), store=True, request_id=failed_id, timeout=WAIT_S)
    failed = client.state(failed_id)
    assert (failed.status, failed.error_code) == ("FAILURE", "model_not_found")


def test_a_full_lane_refuses_with_overloaded_and_loses_nothing(
    client: Client, worker: WorkerProcess, cnn: Registered, fleet_settings: Settings
) -> None:
    with Client(fleet_settings.model_copy(update={"lane_max_backlog": 5})) as small:
        with Paused(client, worker):
            accepted = [small.infer_async(cnn.name, batch(1, seed=i)) for i in range(5)]
            with pytest.raises(Overloaded, match="lane_max_backlog=5"):
                small.infer_async(cnn.name, batch(1))
            assert small.lane.in_flight() == 5
        assert all(f.result(WAIT_S)["model"] == cnn.name for f in accepted)


# ---------------------------------------------------------------- hostile records
def raw_request(model: str, **change: bytes) -> dict[bytes, bytes]:
    fields = encode_request(
        request_id=uuid.uuid4().hex, reply_to=REPLY_KEY, model=model,
        data=batch(1).tobytes(), dtype="float32", shape=[1, 3, 32, 32], submitted_at=time.time(),
    )  # fmt: skip
    fields.update({k.encode(): v for k, v in change.items()})
    return {k: v for k, v in fields.items() if v != b"<drop>"}


REPLY_KEY = lane_reply_key(f"hostile-{uuid.uuid4().hex}")
HOSTILE = {
    "wrong-dtype": ({F_DTYPE.decode(): b"complex64"}, "bad_tensor", "unknown dtype"),
    "bytes-do-not-match-shape": ({F_SHAPE.decode(): b"2,3,32,32"}, "bad_tensor", "needs"),
    "oversize": ({F_SHAPE.decode(): b"9000,3,32,32"}, "bad_tensor", "max_payload_bytes"),
    "wrong-shape": ({F_SHAPE.decode(): b"1,3,16,64"}, "bad_tensor", "does not fit"),
    "garbage-top-k": ({"k": b"\xff\x00"}, "invalid_job", "top_k"),
    "unknown-model": ({"m": b"no-such-model-anywhere"}, "model_not_found", "not registered"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_each_hostile_record_gets_a_clear_error_and_the_lane_keeps_serving(
    case: str, client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    change, code, words = HOSTILE[case]
    fields = raw_request(cnn.name, **change)
    client.redis.xadd(lane_stream("cpu"), fields)  # type: ignore[arg-type]
    read: Any = client.redis.xread({REPLY_KEY: "0-0"}, count=1, block=WAIT_S * 1000)
    assert read, "no reply"
    [(_, [(entry_id, replies)])] = read
    client.redis.xdel(REPLY_KEY, entry_id)
    [body] = replies.values()
    reply = decode_reply(body)
    assert reply.request_id == fields[b"id"].decode()
    assert reply.code == code and words in (reply.message or ""), reply
    assert client.infer(cnn.name, batch(1), timeout=WAIT_S)["model"] == cnn.name


def test_a_record_with_no_usable_reply_key_is_dead_lettered(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    before = int(client.redis.llen(KEY_DEADLETTER))
    elsewhere = f"torchfleet:not-a-reply-{uuid.uuid4().hex}"
    for reply_to in (b"<drop>", elsewhere.encode()):  # none, and a key outside the replies
        fields = raw_request(cnn.name, **{F_REPLY.decode(): reply_to})
        client.redis.xadd(lane_stream("cpu"), fields)  # type: ignore[arg-type]
    assert client.infer(cnn.name, batch(1), timeout=WAIT_S)["model"] == cnn.name
    deadline = time.monotonic() + WAIT_S
    while int(client.redis.llen(KEY_DEADLETTER)) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # the consumer writes the dead letters beside its batch
    assert int(client.redis.llen(KEY_DEADLETTER)) == before + 2
    assert not client.redis.exists(elsewhere)  # nothing was pushed where the record said


def test_client_pause_of_redis_loses_no_request(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    client.infer(cnn.name, batch(1), timeout=WAIT_S)
    futures = [client.infer_async(cnn.name, batch(1, seed=i)) for i in range(10)]
    client.redis.execute_command("CLIENT", "PAUSE", 800, "ALL")
    futures += [client.infer_async(cnn.name, batch(1, seed=i)) for i in range(10)]
    assert all(f.result(WAIT_S)["model"] == cnn.name for f in futures)


# ---------------------------------------------------------------- recovery (own fleet)
@pytest.fixture
def lane_fleet(tmp_path: Path) -> Iterator[ChaosFleet]:
    fleet = open_fleet(tmp_path / "lane", appendonly=True)
    fleet.env.update(FAST_RECOVERY)
    try:
        yield fleet
    finally:
        fleet.close()


def test_a_killed_workers_requests_are_claimed_and_answered_by_another(
    lane_fleet: ChaosFleet,
) -> None:
    model = register_chaos(lane_fleet.settings)
    first = lane_fleet.worker()
    client = lane_fleet.client
    held = client.infer_async(model, chaos_input(MODE_HOLD))
    others = [client.infer_async(model, chaos_input(0.0, seed=i)) for i in range(5)]
    lane_fleet.wait_holding()  # the first worker is mid-forward on the held request
    first.kill()
    lane_fleet.release()
    second = lane_fleet.worker()
    answers = [f.result(WAIT_S) for f in [held, *others]]
    assert answers[0]["worker"] == second.name
    assert all(a["model"] == model for a in answers)
    stream = lane_stream("cpu")
    assert client.redis.xpending(stream, LANE_GROUP)["pending"] == 0


def test_a_request_delivered_past_max_deliveries_goes_to_the_dead_letters(
    lane_fleet: ChaosFleet,
) -> None:
    model = register_chaos(lane_fleet.settings)
    client = lane_fleet.client
    stream = lane_stream("cpu")
    client.redis.xgroup_create(stream, LANE_GROUP, id="0", mkstream=True)
    future = client.infer_async(model, chaos_input(0.0))
    for start in (">", "0"):  # two deliveries to a consumer that never answers, then dies
        client.redis.xreadgroup(LANE_GROUP, "dead@nowhere", {stream: start})
    lane_fleet.worker()
    with pytest.raises(JobFailed) as caught:
        future.result(WAIT_S)
    assert caught.value.error_code == "dead_lettered"
    assert int(client.redis.llen(KEY_DEADLETTER)) == 1
    assert client.redis.xlen(stream) == 0


def test_a_redis_restart_with_aof_loses_no_accepted_request(lane_fleet: ChaosFleet) -> None:
    model = register_chaos(lane_fleet.settings)
    lane_fleet.worker()
    client = lane_fleet.client
    client.infer(model, chaos_input(0.0), timeout=WAIT_S)
    accepted: list[Future[dict[str, Any]]] = []
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            try:
                accepted.append(client.infer_async(model, chaos_input(0.0)))
            except redis.RedisError:
                continue  # refused while Redis is down: never accepted, not a loss

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    while len(accepted) < 20:
        time.sleep(0.01)  # lets the producer get requests in flight before the restart
    lane_fleet.redis.kill()
    lane_fleet.redis.start()
    count = len(accepted)
    while len(accepted) < count + 20:
        time.sleep(0.01)  # and after it
    stop.set()
    producer.join(WAIT_S)
    assert all(f.result(WAIT_S)["model"] == model for f in accepted)
