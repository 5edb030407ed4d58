"""The worker's heartbeat: a Redis record with a TTL that `torchfleet status` reads.

A daemon thread rewrites ``torchfleet:worker:{name}`` every few seconds (and soon after each
job), with a TTL of a few intervals, so a worker that dies drops out of `status` by itself.

While Redis is full the record cannot be rewritten (Redis refuses every write that may grow
memory), yet that is when `status` most needs to say the worker is paused. So each beat also
writes a standby copy that reads ``paused``; when Redis refuses the record, the standby is
renamed over it and its TTL kept up (``RENAME`` and ``EXPIRE`` are allowed at maxmemory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from shared.connection import is_redis_full
from shared.names import worker_key, worker_standby_key
from workers import redisfull
from workers.runtime import Runtime
from workers.transport import held_job_ids

log = logging.getLogger("torchfleet.worker")

DEFAULT_INTERVAL_S = 5.0
TTL_INTERVALS = 3
MIN_GAP_S = 0.2  # pokes closer together than this share one write


def worker_record(rt: Runtime, queues: list[str], started_at: float) -> dict[str, Any]:
    """What `torchfleet status` shows about one worker."""
    return {
        "name": rt.worker,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "device": str(rt.device),
        "gpu_lease": rt.lease.uuid if rt.lease is not None and rt.lease.held else None,
        "stepped_down": rt.lease.lost if rt.lease is not None else None,  # why, when it did
        "queues": queues,
        "cached": rt.cache.digests(),
        "cache_bytes": rt.cache.used_bytes(),
        "jobs": dict(rt.counters),
        "holding": held_job_ids(),
        "paused": redisfull.PAUSED_REDIS_MEMORY if redisfull.paused() else None,
        "paused_since": redisfull.GUARD.since,
        "started_at": started_at,
        "last_seen": time.time(),
    }


class Heartbeat:
    """Writes :func:`worker_record` every ``interval_s``, and soon after :meth:`poke`."""

    def __init__(
        self,
        rt: Runtime,
        queues: Callable[[], list[str]],
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.rt = rt
        self.queues = queues
        self.interval_s = interval_s
        self.started_at = time.time()
        self.key = worker_key(rt.worker)
        self.standby = worker_standby_key(rt.worker)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        """Write the record now (errors are logged: a Redis blip must not kill the thread)."""
        record = worker_record(self.rt, self.queues(), self.started_at)
        standby = {**record, "paused": redisfull.PAUSED_REDIS_MEMORY}
        ttl = max(1, int(self.interval_s * TTL_INTERVALS))
        try:
            with self.rt.client.pipeline(transaction=False) as pipe:
                pipe.set(self.key, json.dumps(record), ex=ttl)
                pipe.set(self.standby, json.dumps(standby), ex=ttl)
                pipe.execute()
        except redis.RedisError as e:
            if not is_redis_full(e):
                log.warning("heartbeat of %s not written: %s", self.rt.worker, e)
                return
            redisfull.GUARD.pause(e)
            self.stand_in(ttl)

    def stand_in(self, ttl: int) -> None:
        """Redis is full: put the standby (paused) record in place, or keep the one in place
        alive (the standby is gone once renamed)."""
        try:
            with self.rt.client.pipeline(transaction=False) as pipe:
                pipe.rename(self.standby, self.key)
                pipe.expire(self.key, ttl)
                pipe.execute(raise_on_error=False)
        except redis.RedisError as e:
            log.warning("heartbeat of %s not kept alive: %s", self.rt.worker, e)

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop beating and delete the record: a clean shutdown leaves no ghost."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s)
        with contextlib.suppress(redis.RedisError):
            self.rt.client.delete(self.key, self.standby)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            if self._stop.is_set():
                return
            self._wake.clear()
            self.beat()
            self._stop.wait(MIN_GAP_S)


_current: Heartbeat | None = None


def start_heartbeat(rt: Runtime, queues: Callable[[], list[str]]) -> None:
    """Worker start-up: begin beating (one heartbeat per process)."""
    global _current
    stop_heartbeat()
    _current = Heartbeat(rt, queues=queues)
    _current.start()


def stop_heartbeat() -> None:
    """Worker shutdown: stop beating and delete the record."""
    global _current
    if _current is not None:
        _current.stop()
        _current = None


def poke_heartbeat() -> None:
    """Refresh the heartbeat record soon (after a job), so status shows fresh counters."""
    if _current is not None:
        _current.poke()
