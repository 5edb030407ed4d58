"""Redis writes that must not hold up a job: stats records, clean-up of stored inputs.

A job queues them (:meth:`WriteBehind.add`) and returns; a daemon thread does them, every
write queued while the previous pipeline was in flight in the next one, so a busy worker
pays one round trip for many. While Redis is unreachable the writes wait (the oldest are
dropped past ``max_pending``); on a clean shutdown every pending write is done.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

import redis
from redis.client import Pipeline

log = logging.getLogger("torchfleet.worker")

MAX_PENDING = 10_000
RETRY_PAUSE_S = 1.0
LINGER_S = 0.025
Write = Callable[[Pipeline], object]


class WriteBehind:
    """Queued Redis writes, done by a daemon thread, everything queued meanwhile per pipeline."""

    def __init__(
        self,
        client: redis.Redis,
        max_pending: int = MAX_PENDING,
        *,
        background: bool = True,
        linger_s: float = LINGER_S,
    ) -> None:
        """``background=False``: no thread; writes are done by :meth:`flush` only."""
        self.client = client
        self.background = background
        self.linger_s = linger_s
        self.dropped = 0
        self._pending: deque[Write] = deque()
        self._max_pending = max_pending
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, write: Write) -> None:
        """Queue one write; the thread starts with the first."""
        with self._cond:
            if len(self._pending) >= self._max_pending:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(write)
            if self._thread is None and self.background and not self._closed:
                self._thread = threading.Thread(target=self._run, name="write-behind", daemon=True)
                self._thread.start()
            self._cond.notify()

    def flush(self) -> int:
        """Do every pending write now; how many were done (0 if Redis refused them)."""
        with self._cond:
            batch = list(self._pending)
            self._pending.clear()
        if not batch:
            return 0
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for write in batch:
                    write(pipe)
                pipe.execute()
        except redis.RedisError as e:
            log.warning("%d write(s) to Redis not done yet: %s", len(batch), e)
            with self._cond:  # back to the front, in order, within the bound
                room = max(0, self._max_pending - len(self._pending))
                self.dropped += max(0, len(batch) - room)
                self._pending.extendleft(reversed(batch[len(batch) - room :]))
            return 0
        return len(batch)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and do what is pending (a clean shutdown loses no write)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.flush()
        if self.dropped:
            log.warning("%d write(s) were dropped while Redis was unreachable", self.dropped)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                # Linger: the job that queued this is still sending its answer; writes that
                # come meanwhile join the same pipeline.
                self._cond.wait_for(lambda: self._closed, self.linger_s)
            if self.flush() == 0:
                with self._cond:  # Redis refused: give it a moment before the next try
                    self._cond.wait_for(lambda: self._closed, RETRY_PAUSE_S)
