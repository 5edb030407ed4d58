"""Waiting for jobs: one job (pub/sub, or polling with progress), many jobs as they finish.

Every wait has a deadline (``TORCHFLEET_WAIT_TIMEOUT_S`` when none is given) and watches the
worker heartbeats: a job that no live worker can take for ``TORCHFLEET_NO_WORKER_GRACE_S``
ends the wait with :class:`NoWorker` instead of blocking until the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.states import READY_STATES

from producers.ops import live_queues
from producers.state import JobState, ProgressFn, UnknownJob, read_metas, state_from_meta
from shared.errors import JobTimeout
from shared.names import job_key

POLL_START_S = 0.002
POLL_MAX_S = 0.25
WATCH_EVERY_S = 2.0  # how often a long wait reads the heartbeats


class NoWorker(JobTimeout):
    """No live worker has consumed the job's queue for a while: the wait gives up early."""

    code = "no_worker"


@dataclass
class WorkerWatch:
    """Raises :class:`NoWorker` once no heartbeat has listed ``queue`` for ``grace_s``."""

    redis: redis.Redis
    queue: str | None
    grace_s: float
    every_s: float = WATCH_EVERY_S
    seen_at: float = field(default_factory=time.monotonic)
    checked_at: float = field(default_factory=time.monotonic)

    def check(self, job_id: str) -> None:
        """Read the heartbeats (at most every ``every_s``); raise when the grace is spent."""
        now = time.monotonic()
        if self.queue is None or now - self.checked_at < self.every_s:
            return
        self.checked_at = now
        if self.queue in live_queues(self.redis):
            self.seen_at = now
        elif now - self.seen_at >= self.grace_s:
            raise NoWorker(
                f"job {job_id} is still waiting, and no live worker has consumed queue "
                f"{self.queue!r} for {now - self.seen_at:.0f} s; start one "
                f"(`torchfleet worker --queues {self.queue}`), then `torchfleet wait {job_id}`"
            )


def record_kind(client: redis.Redis, job_id: str) -> str | None:
    """The kind a job's record holds (written at submit; a pipeline stage ``ID:stage``
    answers with its pipeline's), or None when there is no record."""
    base = job_id.split(":", 1)[0]
    for raw in client.mget([job_key(job_id), job_key(base)]):
        if raw is not None:
            return raw.decode() if isinstance(raw, bytes) else str(raw)
    return None


def record_kinds(client: redis.Redis, app: Celery, job_ids: Sequence[str]) -> dict[str, str | None]:
    """Each id's recorded kind (None: a result but no record); :class:`UnknownJob` naming
    every id that has neither."""
    kinds = {job_id: record_kind(client, job_id) for job_id in job_ids}
    missing = [j for j, k in kinds.items() if k is None]
    unknown = [j for j, meta in zip(missing, read_metas(app, missing), strict=True) if not meta]
    if unknown:
        raise UnknownJob(f"no job {', '.join(map(repr, unknown))} was submitted (or expired)")
    return kinds


def timed_out(job_id: str, timeout: float, status: str) -> JobTimeout:
    return JobTimeout(f"job {job_id} did not finish within {timeout:g} s ({status})")


def wait_pubsub(
    app: Celery, job_id: str, timeout: float, watch: WorkerWatch, read: Callable[[], JobState]
) -> JobState:
    """Wait on the result backend's pub/sub notification, waking to check the heartbeats.

    A failure is taken only once the stored record is finished too: Celery keeps pub/sub
    answers that came in while nobody waited, and hands them to the next waiter on the id,
    so a process that waited on a job, requeued it (the same id, its result forgotten) and
    waits again would be handed the old run's failure. Only a failed job is sent again
    under its id (a dead-letter requeue), so a success needs no second read."""
    deadline = time.monotonic() + timeout
    while True:
        state = wait_handle(app, job_id, deadline, timeout, watch, read)
        if state.status == "SUCCESS" or stored_finished(app, job_id):
            return state


def wait_handle(
    app: Celery,
    job_id: str,
    deadline: float,
    timeout: float,
    watch: WorkerWatch,
    read: Callable[[], JobState],
) -> JobState:
    """One ``AsyncResult`` waited on until it has an answer (or the deadline)."""
    handle = app.AsyncResult(job_id)
    try:
        while True:
            remaining = deadline - time.monotonic()
            try:
                handle.get(timeout=max(0.001, min(remaining, watch.every_s)), propagate=False)
                break
            except CeleryTimeoutError:
                if time.monotonic() >= deadline:
                    raise timed_out(job_id, timeout, read().status) from None
                watch.check(job_id)
        return state_from_meta(job_id, {"status": handle.state, "result": handle.result})
    finally:
        # Unsubscribe while the connection lives; left to AsyncResult.__del__ at exit, it
        # prints a traceback about a closed result store.
        app.backend.remove_pending_result(handle)


def stored_finished(app: Celery, job_id: str) -> bool:
    """Whether the job's stored record (read from Redis, no cache) says it has finished."""
    [meta] = read_metas(app, [job_id])
    return meta is not None and meta.get("status") in READY_STATES


def wait_polling(
    job_id: str,
    timeout: float,
    watch: WorkerWatch,
    read: Callable[[], JobState],
    on_progress: ProgressFn,
) -> JobState:
    """Poll the result backend with a short, growing interval, reporting progress."""
    deadline = time.monotonic() + timeout
    interval = POLL_START_S
    last: dict[str, Any] | None = None
    while True:
        state = read()
        if state.finished:
            return state
        if state.progress != last:
            on_progress(state)
            last = state.progress
        if time.monotonic() > deadline:
            raise timed_out(job_id, timeout, state.status)
        watch.check(job_id)
        time.sleep(interval)  # polling interval of a producer reading the result backend
        interval = min(POLL_MAX_S, interval * 1.5)


def as_completed(
    app: Celery, job_ids: list[str], timeout: float, watches: dict[str, WorkerWatch]
) -> Iterator[JobState]:
    """Each job's final state as it finishes (one MGET per poll for all of them)."""
    deadline = time.monotonic() + timeout
    pending = list(dict.fromkeys(job_ids))
    interval = POLL_START_S
    while pending:
        metas = read_metas(app, pending)
        still = []
        for job_id, meta in zip(pending, metas, strict=True):
            state = state_from_meta(job_id, meta or {})
            if state.finished:
                yield state
            else:
                still.append(job_id)
        pending = still
        if not pending:
            return
        if time.monotonic() > deadline:
            raise JobTimeout(f"{len(pending)} job(s) did not finish within {timeout:g} s")
        first = {id(watches[j]): j for j in reversed(pending)}  # one check per shared watch
        for job_id in first.values():
            watches[job_id].check(job_id)
        time.sleep(interval)  # polling interval of a producer reading the result backend
        interval = min(POLL_MAX_S, interval * 1.5)
