"""GPU leases in Redis: distinct workers claim distinct GPUs; a released GPU is free again."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import torch

from shared.errors import InvalidJob
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
