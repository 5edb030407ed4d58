"""One compact record per finished job, appended to a capped Redis stream.

Records leave the job's own path: a :class:`StatsWriter` thread appends them, every record
that came in while the previous write was in flight in one pipeline, so a job's answer is
never held up by its record and a busy worker pays one round trip for many records. They
reach the stream a few milliseconds after the answer; on a clean shutdown every pending
record is written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import redis

from shared.names import KEY_STATS

log = logging.getLogger("torchfleet.worker")

MAX_PENDING = 10_000  # records kept while Redis is unreachable; the oldest go beyond this
RETRY_PAUSE_S = 1.0


def stats_entry(*, kind: str, job_id: str, outcome: str, **fields: Any) -> dict[str, str]:
    """A job record: flat string fields, so any Redis client can read the stream."""
    entry = {"kind": kind, "job_id": job_id, "outcome": outcome, "ts": f"{time.time():.6f}"}
    entry.update({k: str(v) for k, v in fields.items() if v is not None})
    return entry


def infer_fields(result: dict[str, Any]) -> dict[str, Any]:
    """The stats fields of an inference result: model, variant, device, worker, latencies."""
    fields = {k: result[k] for k in ("model", "variant", "device", "worker", "batch_size")}
    fields.update(result["latency"])
    fields["inputs"] = len(result["predictions"])
    return fields


class StatsWriter:
    """Appends records to the stats stream from a daemon thread, batched per round trip."""

    def __init__(
        self,
        client: redis.Redis,
        maxlen: int,
        max_pending: int = MAX_PENDING,
        *,
        background: bool = True,
    ) -> None:
        """``background=False``: no thread; records are written by :meth:`flush` only."""
        self.client = client
        self.background = background
        self.maxlen = maxlen
        self.dropped = 0
        self._pending: deque[dict[str, str]] = deque()
        self._max_pending = max_pending
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, entry: dict[str, str]) -> None:
        """Queue one record; the writer thread starts with the first."""
        with self._cond:
            if len(self._pending) >= self._max_pending:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(entry)
            if self._thread is None and self.background and not self._closed:
                self._thread = threading.Thread(target=self._run, name="stats-writer", daemon=True)
                self._thread.start()
            self._cond.notify()

    def flush(self) -> int:
        """Write every pending record now; how many were written (0 if Redis refused them)."""
        with self._cond:
            batch = list(self._pending)
            self._pending.clear()
        if not batch:
            return 0
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for entry in batch:
                    pipe.xadd(KEY_STATS, entry, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
                pipe.execute()
        except redis.RedisError as e:
            log.warning("%d stats record(s) not written yet: %s", len(batch), e)
            with self._cond:  # back to the front, in order, within the bound
                room = max(0, self._max_pending - len(self._pending))
                self.dropped += max(0, len(batch) - room)
                self._pending.extendleft(reversed(batch[len(batch) - room :]))
            return 0
        return len(batch)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and write what is pending (a clean shutdown loses no record)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.flush()
        if self.dropped:
            log.warning("%d stats record(s) were dropped while Redis was unreachable", self.dropped)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            if self.flush() == 0:
                with self._cond:  # Redis refused: give it a moment before the next try
                    self._cond.wait_for(lambda: self._closed, RETRY_PAUSE_S)
