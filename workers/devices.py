"""Pinning a worker to one device; several workers share a host's GPUs through Redis leases.

A worker started with ``--device cuda`` walks the host's GPUs and claims the first whose
lease key (``torchfleet:gpu-lease:{uuid}``) it can SET NX with a TTL; a heartbeat renews it,
and the worker deletes it on exit. ``cuda:N`` pins explicitly. Nothing here touches CUDA
until the worker process itself calls :func:`select_device`, which happens after any fork.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis
import torch

from shared.errors import InvalidJob, ResourceExhausted
from shared.names import lease_key

RELEASE_IF_OWNER = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
RENEW_IF_OWNER = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass
class GpuLease:
    """A claimed GPU: renewed by a daemon thread until :meth:`release`."""

    client: redis.Redis
    uuid: str
    index: int
    owner: str
    ttl_s: int
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> str:
        return lease_key(self.uuid)

    def start_heartbeat(self) -> None:
        thread = threading.Thread(target=self._beat, name="gpu-lease", daemon=True)
        thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            self.client.eval(RENEW_IF_OWNER, 1, self.key, self.owner, self.ttl_s)

    def release(self) -> None:
        self._stop.set()
        self.client.eval(RELEASE_IF_OWNER, 1, self.key, self.owner)


def claim_gpu(client: redis.Redis, uuids: Sequence[str], owner: str, ttl_s: int) -> GpuLease | None:
    """Claim the first GPU nobody holds; None when every one is taken."""
    for index, uuid in enumerate(uuids):
        if client.set(lease_key(uuid), owner, nx=True, ex=ttl_s):
            return GpuLease(client=client, uuid=uuid, index=index, owner=owner, ttl_s=ttl_s)
    return None


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
