"""Job control on the worker: deadlines, cancellation, device queues and the warm command.

* A job whose ``deadline`` passed before it starts fails with ``expired`` and is not run.
* ``torchfleet cancel`` revokes the job and sets a flag in Redis: a queued job is dropped
  when it reaches a worker (even one that missed the revoke broadcast), and a running job
  stops at its next progress report, or within a second by the watchdog
  (:mod:`workers.limits`), even stuck in I/O, as REVOKED.
* A worker on ``cpu`` or ``cuda`` also consumes ``{queue}.{device}`` for each of its queues,
  so a job that asks for a device reaches only workers that have it.
* ``torchfleet_warm`` is a broadcast control command (registered when the worker starts,
  :mod:`workers.signals`): inference workers load a digest into their cache, so the first
  request after a promotion pays no load time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

import redis
from celery import Task
from celery.exceptions import Ignore

from shared.errors import JobCancelled, JobExpired, TorchfleetError
from shared.names import (
    ALL_QUEUES,
    DEVICE_KINDS,
    QUEUE_INFER,
    cancel_key,
    device_queue,
)
from workers.context import ProgressFn
from workers.heartbeat import poke_heartbeat
from workers.runtime import Runtime, get_runtime

log = logging.getLogger("torchfleet.worker")

CANCEL_CHECK_INTERVAL_S = 0.5


# ------------------------------------------------------------------ deadlines, cancellation
def check_deadline(job: Any, job_id: str, now: float | None = None) -> None:
    """:class:`JobExpired` when the job's ``deadline`` (Unix time) has passed."""
    deadline = getattr(job, "deadline", None)
    now = time.time() if now is None else now
    if deadline is not None and now > deadline:
        raise JobExpired(
            f"job {job_id} reached a worker {now - deadline:.3f} s after its deadline; not run"
        )


def is_cancelled(client: redis.Redis, job_id: str) -> bool:
    return bool(client.exists(cancel_key(job_id)))


def cancellable(
    progress: ProgressFn,
    client: redis.Redis,
    job_id: str,
    interval_s: float = CANCEL_CHECK_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> ProgressFn:
    """``progress`` that first checks the cancel flag (at most every ``interval_s``)."""
    last = [clock() - interval_s]

    def report(meta: dict[str, Any]) -> None:
        now = clock()
        if now - last[0] >= interval_s:
            last[0] = now
            if is_cancelled(client, job_id):
                raise JobCancelled(f"job {job_id} was cancelled")
        progress(meta)

    return report


def end_cancelled(task: Task, reason: str = "cancelled") -> NoReturn:
    """Store the job as REVOKED and end the task without another state update."""
    task.backend.mark_as_revoked(task.request.id, reason, request=task.request)
    raise Ignore(reason)


# ------------------------------------------------------------------ warm command
def consumed_queues(consumer: Any) -> list[str]:
    """The queues a worker's consumer reads now (empty if it has none yet)."""
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is None:
        return []
    return [q.name for q in task_consumer.queues]


def serves_inference(queues: list[str]) -> bool:
    return any(q == QUEUE_INFER or q.startswith(f"{QUEUE_INFER}.") for q in queues)


def warm(rt: Runtime, digests: list[str]) -> dict[str, Any]:
    """Load ``digests`` into the cache; what was loaded and how long it took (ms)."""
    loaded: dict[str, float] = {}
    errors: dict[str, str] = {}
    for digest in digests:
        try:
            _, _, load_ms = rt.cache.get(digest)
        except TorchfleetError as e:
            errors[digest] = f"{e.code}: {e}"
            continue
        loaded[digest] = round(load_ms, 3)
    poke_heartbeat()
    return {"worker": rt.worker, "loaded": loaded, "errors": errors}


def torchfleet_warm(state: Any, digests: list[str]) -> dict[str, Any]:
    """Preload models on inference workers; others answer ``skipped``."""
    if not serves_inference(consumed_queues(state.consumer)):
        return {"skipped": "not an inference worker"}
    return warm(get_runtime(), list(digests))


# ------------------------------------------------------------------ device queues
def add_device_queues(consumer: Any, rt: Runtime) -> None:
    """Also consume ``{queue}.{device}`` for each shared queue this worker reads."""
    if consumer is None or rt.device.type not in DEVICE_KINDS:
        return
    for queue in consumed_queues(consumer):
        if queue in ALL_QUEUES:
            consumer.add_task_queue(device_queue(queue, rt.device.type))
