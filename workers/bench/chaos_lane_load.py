"""Lane load for the chaos report: producer threads that send lane requests under unique ids
(each through its own producers ``Client``), and the books that say what became of each.

A send refused by an unreachable Redis (restarting, say) is sent again under the same
request id, as a careful producer does: the first try may have reached the stream, so
the request can be answered twice, and the client keeps the first answer.
"""

from __future__ import annotations

import queue
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

import redis

from shared.errors import JobFailed
from shared.names import KEY_STATS, lane_streams
from workers.bench.chaosfleet import FleetClient, chaos_input

SEND_RETRY_S = 30.0  # how long a producer keeps resending a refused request
BACKOFF_S = (0.05, 0.5)  # first and longest pause between resends
DEAD_LETTERED = "dead_lettered"
Answer = dict[str, Any]


@dataclass
class Ledger:
    """Every request sent: its future, what it carries, and how its send went."""

    futures: dict[str, Future[Answer]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # request id -> normal, hold, poison
    refused: list[str] = field(default_factory=list)
    resends: int = 0
    attempted: int = 0  # sends finished: accepted or refused
    changed: threading.Condition = field(default_factory=threading.Condition)

    def send(
        self, client: FleetClient, model: str, request_id: str, mode: float, kind: str
    ) -> None:
        """Send one request (resending while Redis refuses it); recorded either way."""
        inputs = chaos_input(mode, seed=zlib.crc32(request_id.encode()))
        pause, deadline = BACKOFF_S[0], time.monotonic() + SEND_RETRY_S
        future: Future[Answer] | None = None
        while future is None:
            try:
                future = client.infer_async(model, inputs, request_id=request_id)
            except redis.RedisError as e:
                if time.monotonic() > deadline:
                    self._record(request_id, kind, None, f"{type(e).__name__}: {e}")
                    return
                with self.changed:
                    self.resends += 1
                    self.changed.notify_all()
                time.sleep(pause)  # backoff between resends while Redis is down
                pause = min(BACKOFF_S[1], pause * 2)
        self._record(request_id, kind, future, None)

    def _record(
        self, request_id: str, kind: str, future: Future[Answer] | None, refusal: str | None
    ) -> None:
        with self.changed:
            if future is not None:
                self.futures[request_id] = future
                self.kinds[request_id] = kind
            else:
                self.refused.append(f"{request_id}: {refusal}")
            self.attempted += 1
            self.changed.notify_all()

    def wait_sent(self, count: int, timeout: float = 60) -> None:
        """Wait until ``count`` sends have finished (accepted or refused)."""
        with self.changed:
            self.changed.wait_for(lambda: self.attempted >= count, timeout)

    def wait_resends(self, count: int, timeout: float = 10) -> None:
        """Wait until sends were refused and tried again ``count`` times in all."""
        with self.changed:
            self.changed.wait_for(lambda: self.resends >= count, timeout)

    def open(self) -> list[Future[Answer]]:
        with self.changed:
            return [f for f in self.futures.values() if not f.done()]

    def settle(self, timeout: float) -> int:
        """Wait until every request sent so far is answered; how many are still open."""
        return len(wait_futures(self.open(), timeout).not_done)

    def outcomes(self) -> dict[str, str]:
        """Request id -> ``answered``, ``dead_lettered``, ``error:<code>`` or ``open``."""
        with self.changed:
            futures = dict(self.futures)
        return {request_id: outcome(future) for request_id, future in futures.items()}


def outcome(future: Future[Answer]) -> str:
    if not future.done():
        return "open"
    error = future.exception()
    if error is None:
        return "answered"
    if isinstance(error, JobFailed):
        return DEAD_LETTERED if error.error_code == DEAD_LETTERED else f"error:{error.error_code}"
    return f"error:{type(error).__name__}"


class Load:
    """``producers`` threads, each with its own client, sending the ids queued by
    :meth:`send`, one every ``gap_s`` seconds per thread."""

    def __init__(
        self,
        make_client: Callable[[], FleetClient],
        model: str,
        ledger: Ledger,
        *,
        producers: int,
        gap_s: float,
    ) -> None:
        self.model, self.ledger, self.gap_s = model, ledger, gap_s
        self.clients = [make_client() for _ in range(producers)]
        self.ids: queue.Queue[str | None] = queue.Queue()
        self.next_id = 0
        self.threads = [
            threading.Thread(target=self._produce, args=(c,), name=f"lane-producer-{i}")
            for i, c in enumerate(self.clients)
        ]
        for thread in self.threads:
            thread.start()

    def send(self, count: int) -> int:
        """Queue ``count`` normal requests; the number sent (or queued) so far."""
        for _ in range(count):
            self.ids.put(f"lane-{self.next_id}")
            self.next_id += 1
        return self.next_id

    def join(self) -> None:
        """Wait until every queued request has been sent (or refused)."""
        self.ids.join()

    def in_flight(self) -> int:
        return sum(c.lane.in_flight() for c in self.clients)

    def stray_replies(self) -> int:
        return sum(c.lane.stray_replies for c in self.clients)

    def _produce(self, client: FleetClient) -> None:
        while (request_id := self.ids.get()) is not None:
            try:
                self.ledger.send(client, self.model, request_id, 0.0, "normal")
            finally:
                self.ids.task_done()
            time.sleep(self.gap_s)  # the load's pace: requests stay in flight during faults
        self.ids.task_done()

    def close(self) -> None:
        for _ in self.threads:
            self.ids.put(None)
        for thread in self.threads:
            thread.join(SEND_RETRY_S + 5)
        for client in self.clients:
            client.close()


def duplicates_executed(client: Any, ids: set[str]) -> int:
    """Answers computed beyond the first per request (the workers' stats records; a record
    still in a killed worker's write-behind queue is not counted)."""
    runs = Counter(
        fields[b"job_id"].decode()
        for _, fields in client.xrange(KEY_STATS)
        if fields.get(b"outcome") == b"success" and fields.get(b"job_id", b"").decode() in ids
    )
    return sum(n - 1 for n in runs.values())


def left_in_lane(client: Any) -> int:
    """Entries still in the cpu lane's streams (answered entries are deleted): 0 when done."""
    return sum(int(client.xlen(stream)) for stream in lane_streams("cpu"))
