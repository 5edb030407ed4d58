"""Exactly-once effects seen from the task layer: fenced progress, and checkpoints dropped
only once the result is stored.

A job's registry writes go through :meth:`ModelRegistry.for_job` (fenced per delivery and by
the cancel flag). Its progress reports are fenced the same way here, so a delivery that was
overtaken stops at its next report instead of writing PROGRESS over the live delivery's
answer. A training job's checkpoint is what lets a redelivery resume (and re-use its
reserved version) until the answer is safe: it goes in the task's ``on_success``, which Celery
calls after the result is stored, and a failure to drop it is logged, never a job failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import Task

from shared.registry import JobRegistry
from workers.context import ProgressFn
from workers.runtime import get_runtime

CHECK_INTERVAL_S = 0.5


def fenced(
    progress: ProgressFn,
    registry: JobRegistry,
    interval_s: float = CHECK_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> ProgressFn:
    """``progress`` that first checks (at most every ``interval_s``) that the job is not
    cancelled and that no newer delivery took over; raises JobCancelled or StaleDelivery."""
    last = [clock() - interval_s]

    def report(meta: dict[str, Any]) -> None:
        now = clock()
        if now - last[0] >= interval_s:
            last[0] = now
            registry.check()
        progress(meta)

    return report


def checkpoint_id(task_id: str) -> str:
    """The checkpoint a task writes: its own id; a pipeline stage ``{job}:{stage}`` writes
    under ``{job}-{stage}`` (checkpoint ids hold no colon)."""
    return task_id.replace(":", "-")


class DropsCheckpoint(Task):
    """Mixin of the fleet tasks that checkpoint (put before :class:`FleetTask` in the bases):
    the checkpoint goes once the result is stored (what other ends leave behind, the
    checkpoint sweeper removes: :mod:`workers.sweeper`)."""

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        super().on_success(retval, task_id, args, kwargs)
        rt = get_runtime()
        rt.store.discard_checkpoint(checkpoint_id(task_id))
