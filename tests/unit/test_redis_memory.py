"""Bounded memory in Redis, piece by piece (issue 14, item 1): the producer's payload cap,
the full-Redis error, the result size cap, and the worker's pause for a full Redis, against
real redis-servers (a private one where ``maxmemory`` is changed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import redis
from celery import states

from producers.client import Client
from producers.encoding import encode_images
from producers.ops import fleet_status
from shared.celery_app import create_app
from shared.connection import OOM_REPLY, is_redis_full
from shared.embedded import EmbeddedRedis
from shared.errors import BrokerUnavailable, InvalidJob, RedisFull, ResultTooLarge
from shared.names import group_key, input_key, job_key, result_key, worker_key
from shared.settings import Settings
from tests.fleet import until
from tests.unit.test_user_traps import PNG_1PX
from workers import redisfull
from workers.bench.chaos_memory import fill_redis, free_redis
from workers.footprint import check_result_size, check_stored_inputs, drop_stored_inputs
from workers.heartbeat import Heartbeat
from workers.redisfull import MemoryPause
from workers.resultstore import backend_class
from workers.writebehind import WriteBehind


@pytest.fixture
def full_redis() -> Iterator[redis.Redis]:
    """A private redis-server filled to maxmemory (noeviction); the test may free it."""
    with EmbeddedRedis() as server:
        admin = redis.Redis.from_url(server.url)
        fill_redis(admin, 1024 * 1024)
        yield admin
        admin.close()


# ------------------------------------------------------------------ the producer's caps
def test_the_client_refuses_inputs_over_max_payload_bytes_and_stores_nothing(
    settings: Settings, redis_client: redis.Redis
) -> None:
    with Client(settings.model_copy(update={"max_payload_bytes": 10_000})) as client:
        with pytest.raises(InvalidJob, match="TORCHFLEET_MAX_PAYLOAD_BYTES"):
            client.submit_infer("m", np.zeros((100, 1, 8, 8), np.float32))  # 25,600 bytes
        job = {"kind": "infer", "model": "m", "inputs": {"shape": [1], "key": input_key("j")}}
        with pytest.raises(InvalidJob, match="max_payload_bytes=10000"):
            client.submit(job, job_id="j", stored={input_key("j"): b"\0" * 10_001})
        client.submit_infer("m", np.zeros((10, 1, 8, 8), np.float32))  # 2,560 bytes: fine
        png = PNG_1PX + b"\0" * 10_000  # inline images ride in the message as base64
        with pytest.raises(InvalidJob, match="max_payload_bytes=10000"):
            client.submit_infer("m", png, job_id="inline")
        with pytest.raises(InvalidJob, match="max_payload_bytes=10000"):
            client.submit_group([{"model": "m", "inputs": encode_images([png])}], group_id="g")
    assert not redis_client.exists(
        input_key("j"), job_key("j"), job_key("inline"), group_key("g"), job_key("g-0")
    )


def test_a_full_redis_refuses_a_submission_with_a_clear_error(full_redis: redis.Redis) -> None:
    with Client(full_settings(full_redis)) as client:
        with pytest.raises(RedisFull, match="maxmemory") as refused:
            client.submit_infer("m", np.zeros((1, 1, 8, 8), np.float32), job_id="full")
        assert "nothing was queued" in str(refused.value)
        assert not client.redis.exists("torchfleet:job:full")
        free_redis(full_redis)
        assert client.submit_infer("m", np.zeros((1, 1, 8, 8), np.float32), job_id="full")


def full_settings(admin: redis.Redis) -> Settings:
    port = admin.connection_pool.connection_kwargs["port"]
    return Settings(redis_url=f"redis://127.0.0.1:{port}/0")


# ------------------------------------------------------------------ telling a full Redis
@pytest.mark.parametrize(
    ("error", "full"),
    [
        (redis.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (redis.ResponseError(f"Error running script: -OOM {OOM_REPLY}."), True),
        (BrokerUnavailable("could not register"), False),
        (redis.ConnectionError("Connection refused"), False),
        (redis.ResponseError("WRONGTYPE Operation against a key"), False),
    ],
)
def test_a_full_redis_is_told_from_other_errors(error: Exception, full: bool) -> None:
    assert is_redis_full(error) is full


def test_a_refusal_for_memory_is_found_behind_the_error_it_caused() -> None:
    try:
        try:
            raise redis.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
        except redis.RedisError as e:
            raise BrokerUnavailable("could not register the model") from e
    except BrokerUnavailable as wrapped:
        assert is_redis_full(wrapped)


# ------------------------------------------------------------------ sizes
def test_a_result_over_the_cap_fails_with_what_to_do() -> None:
    result = {"predictions": [[{"label": 1, "name": "c1", "score": 0.5}]] * 100}
    check_result_size(result, 10_000)
    with pytest.raises(ResultTooLarge, match=r"TORCHFLEET_MAX_RESULT_BYTES.*lower top_k"):
        check_result_size(result, 1000)


def test_stored_inputs_are_read_with_one_byte_over_the_cap_and_refused() -> None:
    check_stored_inputs(b"\0" * 100, 100)
    check_stored_inputs(None, 100)
    with pytest.raises(InvalidJob, match="max_payload_bytes=100"):
        check_stored_inputs(b"\0" * 101, 100)


def test_only_the_jobs_own_stored_inputs_are_dropped(redis_client: redis.Redis) -> None:
    behind = WriteBehind(redis_client, background=False)
    redis_client.set(input_key("mine"), b"1")
    redis_client.set(input_key("other"), b"2")
    drop_stored_inputs(behind, {"inputs": {"key": input_key("other")}}, "mine")
    drop_stored_inputs(behind, {"inputs": "junk"}, "mine")
    behind.flush()
    assert redis_client.exists(input_key("mine"), input_key("other")) == 2
    drop_stored_inputs(behind, {"inputs": {"key": input_key("mine")}}, "mine")
    behind.flush()
    assert redis_client.exists(input_key("mine"), input_key("other")) == 1


# ------------------------------------------------------------------ failure TTLs
def test_results_that_are_not_answers_expire_after_the_failure_ttl(
    settings: Settings, redis_client: redis.Redis
) -> None:
    settings = settings.model_copy(update={"result_ttl_s": 5000, "failure_ttl_s": 60})
    backend = create_app(settings, backend_class=backend_class()).backend
    backend.store_result("ok", {"answer": 1}, states.SUCCESS)
    backend.store_result("bad", InvalidJob("no"), states.FAILURE)
    backend.mark_as_revoked("gone", "cancelled")
    assert 60 < redis_client.ttl(result_key("ok")) <= 5000
    assert 0 < redis_client.ttl(result_key("bad")) <= 60
    assert 0 < redis_client.ttl(result_key("gone")) <= 60


# ------------------------------------------------------------------ the worker's pause
def test_the_pause_probes_resumes_and_settles_what_it_left_in_order(
    full_redis: redis.Redis,
) -> None:
    guard, calls = MemoryPause(), []
    guard.install(
        full_redis,
        on_resume=[lambda: calls.append("renew")],
        on_change=[lambda: calls.append("change")],
    )
    try:
        guard.pause(redis.OutOfMemoryError("full"))
        guard.pause(redis.OutOfMemoryError("full again"))  # one pause, one probe
        guard.leave(lambda: full_redis.set("acked", b"1"))
        assert guard.paused and not guard.wait_for_room(1.5)  # still full: still paused
        assert calls == ["change"] and guard.left() == 1
        free_redis(full_redis)
        assert guard.wait_for_room(10)
        until(lambda: len(calls) == 3, "the resume to be announced")
        assert calls == ["change", "renew", "change"] and guard.left() == 0
        assert full_redis.get("acked") == b"1" and guard.since is None
    finally:
        guard.stop()  # a failed assert must not leave its probe thread behind


def test_a_write_refused_for_memory_is_waited_out(full_redis: redis.Redis) -> None:
    guard = redisfull.GUARD
    guard.install(full_redis, on_resume=[], on_change=[])
    freed = threading.Timer(1.0, free_redis, args=(full_redis,))
    freed.start()
    try:
        assert redisfull.wait_out(lambda: full_redis.set("result", b"42"), "a result")
        assert guard.wait_for_room(10)  # the probe ends the pause too
    finally:
        freed.join()
        guard.stop()
    assert full_redis.get("result") == b"42"


def test_a_full_redis_keeps_a_paused_heartbeat_alive_in_status(full_redis: redis.Redis) -> None:
    rt = SimpleNamespace(
        client=full_redis, worker="w1", device="cpu", lease=None, counters={},
        cache=SimpleNamespace(digests=lambda: [], used_bytes=lambda: 0),
    )  # fmt: skip
    free_redis(full_redis)
    redisfull.GUARD.install(full_redis, on_resume=[], on_change=[])
    heartbeat = Heartbeat(rt, queues=lambda: ["infer"], interval_s=10)  # type: ignore[arg-type]
    heartbeat.beat()
    [before] = fleet_status(full_redis)["workers"]
    assert before["paused"] is None
    fill_redis(full_redis, 1024 * 1024)
    try:
        heartbeat.beat()  # refused: the standby, which says paused, takes its place
        status = fleet_status(full_redis)
        [during] = status["workers"]
        assert during["paused"] == "redis_memory" and status["redis_memory"]["full"]
        heartbeat.beat()  # refused again: the record in place is kept alive
        assert 0 < full_redis.ttl(worker_key("w1")) <= 30
    finally:
        free_redis(full_redis, unlimited=True)
        assert redisfull.GUARD.wait_for_room(10)  # resumed: no pause leaks into other tests
        redisfull.GUARD.stop()
