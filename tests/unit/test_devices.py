"""GPU leases in Redis: distinct workers claim distinct GPUs; a released GPU is free again."""

from __future__ import annotations

import redis
import torch

from workers.devices import claim_gpu, select_device


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
