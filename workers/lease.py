"""GPU leases in Redis: a worker holds its GPU by a key with a TTL that a thread renews.

The renewer rides through Redis outages (it retries every second until Redis answers) and
checks every answer: a lease that expired while nobody else took the GPU is claimed again;
a lease another worker holds now is lost, and the worker steps down (:meth:`GpuLease.watch`
names what to do: stop taking jobs, say so in the heartbeat). No torch here: the device
choice is :mod:`workers.devices`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis

from shared.names import lease_key

log = logging.getLogger("torchfleet.worker")

RELEASE_IF_OWNER = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# 1: renewed; 2: had expired, nobody else took it, claimed again; 0: someone else holds it.
RENEW_IF_OWNER = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
if not holder then
  redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 2
end
return 0
"""
RENEWED, RECLAIMED, LOST = 1, 2, 0
RENEWALS_PER_TTL = 3
RETRY_S = 1.0  # between renewals while Redis does not answer

OnLost = Callable[[str], None]


@dataclass
class GpuLease:
    """A claimed GPU: renewed by a daemon thread until :meth:`release`, or until lost."""

    client: redis.Redis
    uuid: str
    index: int
    owner: str
    ttl_s: int
    lost: str | None = None  # why the lease was lost; the worker stepped down
    renewals: int = 0
    failures: int = 0  # renewals Redis did not answer
    _on_lost: OnLost | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> str:
        return lease_key(self.uuid)

    @property
    def held(self) -> bool:
        return self.lost is None

    def start_heartbeat(self) -> None:
        thread = threading.Thread(target=self._beat, name="gpu-lease", daemon=True)
        thread.start()

    def watch(self, on_lost: OnLost) -> None:
        """Call ``on_lost(reason)`` when the lease is lost (at once if it already is)."""
        with self._lock:
            self._on_lost = on_lost
            lost = self.lost
        if lost is not None:
            on_lost(lost)

    def renew(self) -> float:
        """One renewal; returns how long to wait before the next one."""
        try:
            answer = int(self.client.eval(RENEW_IF_OWNER, 1, self.key, self.owner, self.ttl_s))
        except redis.RedisError as e:
            self.failures += 1
            log.warning("GPU lease %s not renewed (%s); retrying", self.uuid, e)
            return min(RETRY_S, self.ttl_s / RENEWALS_PER_TTL)
        if answer == LOST:
            self.step_down(f"the lease of GPU {self.uuid} expired and another worker holds it")
            return 0.0
        if answer == RECLAIMED:
            log.warning("GPU lease %s had expired; nobody took the GPU: claimed again", self.uuid)
        self.renewals += 1
        return self.ttl_s / RENEWALS_PER_TTL

    def step_down(self, reason: str) -> None:
        """The lease is lost: stop renewing, and tell the watcher (once)."""
        with self._lock:
            if self.lost is not None:
                return
            self.lost = reason
            on_lost = self._on_lost
        self._stop.set()
        log.error("%s: this worker steps down and takes no more jobs", reason)
        if on_lost is not None:
            on_lost(reason)

    def release(self) -> None:
        self._stop.set()
        self.client.eval(RELEASE_IF_OWNER, 1, self.key, self.owner)

    def _beat(self) -> None:
        wait = self.ttl_s / RENEWALS_PER_TTL
        while not self._stop.wait(wait):
            wait = self.renew()


def claim_gpu(client: redis.Redis, uuids: Sequence[str], owner: str, ttl_s: int) -> GpuLease | None:
    """Claim the first GPU nobody holds; None when every one is taken."""
    for index, uuid in enumerate(uuids):
        if client.set(lease_key(uuid), owner, nx=True, ex=ttl_s):
            return GpuLease(client=client, uuid=uuid, index=index, owner=owner, ttl_s=ttl_s)
    return None
