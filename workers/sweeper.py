"""The checkpoint sweeper: checkpoints nobody will resume are removed, at start and periodically.

A training job checkpoints every epoch under its id (a pipeline's train stage ``{job}:train``
under ``{job}-train``) so that a redelivery resumes, and drops the checkpoint once its answer
is stored (:class:`workers.effects.DropsCheckpoint`). Any other end leaves it on disk: a job
that failed or was dead-lettered, a worker that could not drop it, a job Redis forgot (its
result, delivery count and job record expired). A checkpoint is an orphan, and removed, when
no job that could own it is held by a worker (kombu's unacked hash) or still known and
unfinished in Redis. Checkpoints not saved for ``settings.checkpoint_ttl_s`` go too.

Each pass looks at no more than :data:`SWEEP_BATCH` checkpoints, taking up after the last one
the previous pass looked at, with one Redis round trip for their jobs' states.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from typing import Any

import redis
from celery import states

from shared.deadletter import unacked_job_ids
from shared.names import deliveries_key, job_key, result_key
from workers.artifacts import ArtifactStore
from workers.runtime import Runtime

log = logging.getLogger("torchfleet.worker")
SWEEP_BATCH = 100  # checkpoints one pass looks at: a pass stays short whatever the store holds


def owners(checkpoint: str) -> list[str]:
    """The task ids whose checkpoint could be kept under ``checkpoint``: its own id, and the
    pipeline stage ``{job}:{stage}`` (:func:`workers.effects.checkpoint_id` writes its
    checkpoint under ``{job}-{stage}``)."""
    head, _, stage = checkpoint.rpartition("-")
    return [checkpoint, f"{head}:{stage}"] if head and stage else [checkpoint]


def unfinished(client: redis.Redis, task_ids: Iterable[str]) -> set[str]:
    """The ids among ``task_ids`` that a run may still resume: held by a worker, or known to
    Redis (a result, a delivery count or a job record) without a final result."""
    ids = list(task_ids)
    with client.pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.get(result_key(task_id))
            pipe.exists(deliveries_key(task_id), job_key(task_id))
        replies = pipe.execute()
    held = unacked_job_ids(client)
    alive = set()
    for task_id, meta, known in zip(ids, replies[::2], replies[1::2], strict=True):
        if task_id in held or (_status(meta) not in states.READY_STATES and (meta or known)):
            alive.add(task_id)
    return alive


def _status(meta: Any) -> str | None:
    try:
        return str(json.loads(meta)["status"]) if meta else None
    except (ValueError, LookupError, TypeError):
        return None


def sweep_orphans(
    store: ArtifactStore, client: redis.Redis, max_age_s: float, after: str = ""
) -> tuple[list[str], str]:
    """One bounded pass over the checkpoints that follow ``after`` in id order (from the first
    again once none does): remove the orphans and those older than ``max_age_s``. Their ids,
    and where the next pass takes up."""
    every = sorted(store.checkpoint_ids())
    batch = [c for c in every if c > after][:SWEEP_BATCH] or every[:SWEEP_BATCH]
    if not batch:
        return [], ""
    alive = unfinished(client, {owner for c in batch for owner in owners(c)})
    orphans = [c for c in batch if alive.isdisjoint(owners(c))]
    removed = [c for c in orphans if store.discard_checkpoint(c)]
    left = [c for c in batch if c not in orphans]
    removed += store.sweep_checkpoints(max_age_s, ids=left)
    return sorted(removed), batch[-1]


class Sweeper:
    """A daemon thread that sweeps once at start, then every ``settings.checkpoint_sweep_s``."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.stop = threading.Event()
        self.after = ""

    def sweep(self) -> list[str]:
        """One pass; an error is logged and the next pass tries again."""
        try:
            removed, self.after = sweep_orphans(
                self.rt.store, self.rt.client, self.rt.settings.checkpoint_ttl_s, self.after
            )
        except Exception:  # the thread must outlive any one pass
            log.warning("the checkpoint sweep failed; the next one retries", exc_info=True)
            return []
        if removed:
            log.info("removed %d checkpoints nobody will resume: %s", len(removed), removed)
        return removed

    def run(self) -> None:
        self.sweep()
        while not self.stop.wait(self.rt.settings.checkpoint_sweep_s):
            self.sweep()


_sweeper: Sweeper | None = None


def start_sweeper(rt: Runtime) -> None:
    """Worker start-up: sweep now (in the thread), then periodically."""
    global _sweeper
    _sweeper = Sweeper(rt)
    threading.Thread(target=_sweeper.run, name="checkpoint-sweeper", daemon=True).start()


def stop_sweeper() -> None:
    """Worker shutdown: no more passes."""
    if _sweeper is not None:
        _sweeper.stop.set()
