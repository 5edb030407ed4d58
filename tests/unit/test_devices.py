"""GPU leases in Redis: distinct workers claim distinct GPUs; a released GPU is free again;
the renewer rides through Redis outages and a worker that lost its lease steps down."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import torch
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.embedded import EmbeddedRedis
from shared.errors import InvalidJob
from tests.fleet import until
from workers.devices import RENEW_IF_OWNER, claim_gpu, gpu_uuids, select_device


def test_each_worker_claims_a_different_gpu(redis_client: redis.Redis) -> None:
    uuids = ["GPU-a", "GPU-b"]
    first = claim_gpu(redis_client, uuids, "w1", ttl_s=30)
    second = claim_gpu(redis_client, uuids, "w2", ttl_s=30)
    assert first is not None and second is not None
    assert (first.index, second.index) == (0, 1)
    assert claim_gpu(redis_client, uuids, "w3", ttl_s=30) is None
    assert 0 < redis_client.ttl(first.key) <= 30
    first.release()
    third = claim_gpu(redis_client, uuids, "w3", ttl_s=30)
    assert third is not None and third.index == 0


def test_release_only_deletes_ones_own_lease(redis_client: redis.Redis) -> None:
    lease = claim_gpu(redis_client, ["GPU-a"], "w1", ttl_s=30)
    assert lease is not None
    redis_client.set(lease.key, "someone-else")
    lease.release()
    assert redis_client.get(lease.key) == b"someone-else"


def test_cpu_choice_never_touches_cuda(redis_client: redis.Redis) -> None:
    device, lease = select_device("cpu", redis_client, "w", 30)
    assert device == torch.device("cpu") and lease is None


def test_workers_starting_together_get_distinct_gpus(redis_client: redis.Redis) -> None:
    uuids = [f"GPU-{i}" for i in range(4)]
    barrier = threading.Barrier(6)

    def start(worker: int) -> int | None:
        barrier.wait()
        lease = claim_gpu(redis_client, uuids, f"w{worker}", ttl_s=30)
        return None if lease is None else lease.index

    with ThreadPoolExecutor(6) as pool:
        claimed = list(pool.map(start, range(6)))
    indices = [i for i in claimed if i is not None]
    assert sorted(indices) == [0, 1, 2, 3] and claimed.count(None) == 2


def test_heartbeat_renews_only_ones_own_lease(redis_client: redis.Redis) -> None:
    lease = claim_gpu(redis_client, ["GPU-a"], "w1", ttl_s=30)
    assert lease is not None
    redis_client.expire(lease.key, 2)
    assert redis_client.eval(RENEW_IF_OWNER, 1, lease.key, "w1", 30) == 1
    assert redis_client.ttl(lease.key) > 2
    assert redis_client.eval(RENEW_IF_OWNER, 1, lease.key, "intruder", 30) == 0


def test_cuda_asked_for_on_a_host_without_one_is_a_clear_error(
    redis_client: redis.Redis,
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    with pytest.raises(InvalidJob, match="no usable CUDA"):
        select_device("cuda", redis_client, "w", 30)
    assert select_device("auto", redis_client, "w", 30)[0] == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_plain_cuda_claims_a_real_gpu_by_uuid_and_releases_it(redis_client: redis.Redis) -> None:
    device, lease = select_device("cuda", redis_client, "w1", 30)
    assert lease is not None and device == torch.device(f"cuda:{lease.index}")
    assert lease.uuid == gpu_uuids()[lease.index]
    assert redis_client.get(lease.key) == b"w1"
    lease.release()
    assert redis_client.get(lease.key) is None


# ----------------------------------------------------------------- outages and step-down
@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(appendonly=True, directory=tmp_path / "redis")
    server.directory.mkdir()
    with server:
        yield server


def renewer_alive() -> bool:
    return any(t.name == "gpu-lease" and t.is_alive() for t in threading.enumerate())


def test_the_lease_renewer_rides_through_a_redis_outage(restartable_redis: EmbeddedRedis) -> None:
    """A 4 s outage used to kill the renewer: the lease expired, another worker took the GPU."""
    client = redis.Redis.from_url(restartable_redis.url, retry=Retry(NoBackoff(), 0))
    lease = claim_gpu(client, ["GPU-a"], "w1", ttl_s=6)
    assert lease is not None
    lease.start_heartbeat()
    try:
        restartable_redis.stop()
        until(lambda: getattr(lease, "failures", 0) or not renewer_alive(), "a renewal to fail")
        restartable_redis.start()
        until(lambda: (client.pttl(lease.key) or 0) > 5000, "a renewal after the outage", 10)
        assert claim_gpu(client, ["GPU-a"], "w2", ttl_s=6) is None  # still ours
        assert lease.held and renewer_alive()
    finally:
        lease.release()


def test_a_lease_that_expired_unclaimed_is_claimed_again(redis_client: redis.Redis) -> None:
    lease = claim_gpu(redis_client, ["GPU-a"], "w1", ttl_s=30)
    assert lease is not None
    redis_client.delete(lease.key)  # expired while Redis was away
    lease.renew()
    assert lease.held and redis_client.get(lease.key) == b"w1"


def test_a_worker_whose_lease_another_worker_holds_steps_down(redis_client: redis.Redis) -> None:
    lease = claim_gpu(redis_client, ["GPU-a"], "w1", ttl_s=30)
    assert lease is not None
    redis_client.set(lease.key, "w2")  # it expired and w2 claimed the GPU
    told: list[str] = []
    lease.watch(told.append)
    lease.renew()
    assert not lease.held and told and "another worker holds it" in told[0]
    lease.renew()  # told once
    assert len(told) == 1 and redis_client.get(lease.key) == b"w2"
    late: list[str] = []
    lease.watch(late.append)  # a watcher that comes late hears it at once
    assert late == told


class FakeConsumer:
    """The two things a step-down asks of Celery's consumer."""

    def __init__(self, queues: list[str]) -> None:
        self.task_consumer = SimpleNamespace(queues=[SimpleNamespace(name=q) for q in queues])
        self.cancelled: list[str] = []

    def call_soon(self, fn: Any, *args: Any) -> None:
        fn(*args)

    def cancel_task_queue(self, queue: str) -> None:
        self.cancelled.append(queue)


def test_stepping_down_stops_every_queue_and_the_heartbeat_says_why(
    redis_client: redis.Redis,
) -> None:
    from workers.heartbeat import worker_record
    from workers.signals import step_down

    lease = claim_gpu(redis_client, ["GPU-a"], "w1", ttl_s=30)
    assert lease is not None
    consumer = FakeConsumer(["infer", "train", "infer.cuda"])
    lease.watch(lambda reason: step_down(consumer, reason))
    redis_client.set(lease.key, "w2")
    lease.renew()
    assert consumer.cancelled == ["infer", "train", "infer.cuda"]
    cache = SimpleNamespace(digests=list, used_bytes=int)
    rt: Any = SimpleNamespace(worker="w1", device="cuda:0", lease=lease, cache=cache, counters={})
    record = worker_record(rt, [], 0.0)
    assert record["gpu_lease"] is None and "another worker" in record["stepped_down"]
