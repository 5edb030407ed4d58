"""A full Redis (``maxmemory`` reached, policy ``noeviction``) is a fault the worker waits out.

At maxmemory Redis refuses every write that may grow memory, and inside ``MULTI`` every
command: kombu's acks and requeues, the record of a delivery just taken, results, heartbeats.
Nothing is wrong with the jobs, so none fails and the worker does not exit. Instead it:

* stops taking jobs: the transport asks :func:`paused` before each read
  (``workers/transport.py``), and says so in its heartbeat (``workers/heartbeat.py``);
* waits out the writes it cannot drop (:func:`wait_out`: a delivery already taken, a finished
  job's result); only the thread that makes one waits;
* leaves the acks and requeues Redis refused where they are (the message stays in Redis's
  unacked hash) and does them when memory frees; a worker that dies first leaves them to
  the restore sweeps, and a finished job brought back is answered from its stored result;
* probes with a tiny write every :data:`PROBE_INTERVAL_S` and resumes when one goes through.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

import redis
from celery.exceptions import Reject
from celery.worker import state

from shared.connection import is_redis_full
from shared.names import KEY_MEMORY_PROBE

log = logging.getLogger("torchfleet.worker")

PAUSED_REDIS_MEMORY = "redis_memory"  # the heartbeat's ``paused`` while Redis is full
PROBE_INTERVAL_S = 1.0
PROBE_TTL_MS = 5000
T = TypeVar("T")
Hook = Callable[[], object]


class MemoryPause:
    """Whether this worker is paused for a full Redis, what it left to do, and the probe."""

    def __init__(self) -> None:
        self._room = threading.Event()
        self._room.set()
        self._lock = threading.Lock()
        self._left: list[Hook] = []
        self._client: redis.Redis | None = None
        self._on_resume: list[Hook] = []
        self._on_change: list[Hook] = []
        self._stop = threading.Event()
        self.since: float | None = None

    def install(self, client: redis.Redis, *, on_resume: list[Hook], on_change: list[Hook]) -> None:
        """Worker start: the client the probe writes with; ``on_resume`` runs before jobs are
        taken again (renew the held deliveries first), ``on_change`` after each switch."""
        self._client, self._on_resume, self._on_change = client, on_resume, on_change
        self._stop.clear()

    @property
    def paused(self) -> bool:
        return not self._room.is_set()

    def pause(self, error: BaseException) -> None:
        """Stop taking jobs until a probe write goes through (idempotent)."""
        with self._lock:
            if self.paused:
                return
            self._room.clear()
            self.since = time.time()
        log.warning("Redis is full (%s): no new jobs until memory frees", error)
        threading.Thread(target=self._probe, name="redis-memory-probe", daemon=True).start()
        self._changed()

    def wait_for_room(self, timeout_s: float) -> bool:
        """Block until the pause ends (True) or ``timeout_s`` passes."""
        return self._room.wait(timeout_s)

    def leave(self, settle: Hook) -> None:
        """An ack or requeue Redis refused for memory: done again when memory frees."""
        with self._lock:
            self._left.append(settle)

    def left(self) -> int:
        with self._lock:
            return len(self._left)

    def stop(self) -> None:
        """Worker shutdown: stop probing (what is left stays in Redis for the sweeps)."""
        self._stop.set()

    def _probe(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL_S):
            try:
                if self._client is None:
                    raise redis.ConnectionError("no Redis client installed yet")
                self._client.set(KEY_MEMORY_PROBE, b"", px=PROBE_TTL_MS)
                for hook in self._on_resume:
                    hook()
                self._settle_left()
            except Exception as e:  # still full, or Redis away: probe again
                if not is_redis_full(e):
                    log.warning("Redis memory probe: %s", e)
                continue
            self._resume()
            return

    def _settle_left(self) -> None:
        while True:
            with self._lock:
                if not self._left:
                    return
                settle = self._left[0]
            try:
                settle()
            except Exception as e:
                if is_redis_full(e):
                    raise  # still full: it stays first in line
                log.warning(
                    "a settlement left while Redis was full failed (%r): its message "
                    "stays unacked, for the restore sweeps",
                    e,
                )
            with self._lock:
                self._left.pop(0)

    def _resume(self) -> None:
        paused_s = time.time() - (self.since or time.time())
        with self._lock:
            self.since = None
            self._room.set()
        log.warning("Redis accepts writes again after %.1f s: taking jobs again", paused_s)
        self._changed()

    def _changed(self) -> None:
        for hook in self._on_change:
            try:
                hook()
            except Exception:  # a status refresh must not stop a pause or a resume
                log.warning("memory pause hook failed", exc_info=True)


GUARD = MemoryPause()


def paused() -> bool:
    """Whether this worker takes no jobs because Redis is full."""
    return GUARD.paused


def wait_out(write: Callable[[], T], what: str) -> T:
    """Do ``write``; while Redis refuses it for memory, pause the worker and try again each
    time memory may have freed. Only a cold shutdown makes it give up (and raise)."""
    warned = False
    while True:
        try:
            return write()
        except Exception as e:
            if not is_redis_full(e) or state.should_terminate:
                raise
            GUARD.pause(e)
            if not warned:
                log.warning("%s waits for Redis to have memory again", what)
                warned = True
            GUARD.wait_for_room(PROBE_INTERVAL_S)


def requeue_when_room(error: BaseException) -> NoReturn:
    """A job's own write was refused for memory: pause, and give the job back to its queue
    (the requeue itself is left for when memory frees, see ``workers/transport.py``)."""
    GUARD.pause(error)
    raise Reject(error, requeue=True) from error


@contextlib.contextmanager
def requeued_if_full() -> Iterator[None]:
    """:func:`requeue_when_room` for a refusal for memory raised inside the block."""
    try:
        yield
    except Exception as e:
        if is_redis_full(e):
            requeue_when_room(e)
        raise
