"""Pinning a worker to one device; several workers share a host's GPUs through Redis leases.

A worker started with ``--device cuda`` walks the host's GPUs and claims the first whose
lease key (``torchfleet:gpu-lease:{uuid}``) it can SET NX with a TTL; a thread renews it
(:mod:`workers.lease`), and the worker deletes it on exit. ``cuda:N`` pins explicitly.
Nothing here touches CUDA until the worker process itself calls :func:`select_device`,
which happens after any fork.
"""

from __future__ import annotations

import redis
import torch

from shared.errors import InvalidJob, ResourceExhausted
from workers.lease import RENEW_IF_OWNER, GpuLease, claim_gpu

__all__ = ["RENEW_IF_OWNER", "GpuLease", "claim_gpu", "describe", "gpu_uuids", "select_device"]


def gpu_uuids() -> list[str]:
    return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]


def select_device(
    choice: str, client: redis.Redis, owner: str, ttl_s: int
) -> tuple[torch.device, GpuLease | None]:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device, claiming a GPU lease for plain ``cuda``."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu"), None
    if not torch.cuda.is_available():
        raise InvalidJob(f"device {choice!r} asked for, but this host has no usable CUDA GPU")
    if choice.startswith("cuda:"):
        index = int(choice.split(":")[1])
        if index >= torch.cuda.device_count():
            raise InvalidJob(f"{choice} does not exist: {torch.cuda.device_count()} GPU(s) here")
        return torch.device(choice), None
    lease = claim_gpu(client, gpu_uuids(), owner, ttl_s)
    if lease is None:
        raise ResourceExhausted("every GPU on this host is leased by another worker")
    lease.start_heartbeat()
    torch.cuda.set_device(lease.index)
    return torch.device(f"cuda:{lease.index}"), lease


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"
