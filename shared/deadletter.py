"""Lost and dead jobs, torch-free: delivery counts, the dead-letter list, orphan finding.

Celery on Redis delivers at least once. The worker counts every delivery of a job id in
``deliveries:{id}`` (``delivered``, ``executed``, and ``crashes``: the deliveries a worker
died under, see ``workers/admission.py``) and, past ``settings.max_deliveries`` crashes,
appends the job to the dead-letter list instead of running it again; the producer reads
the list, requeues from it, and finds jobs the transport dropped (:func:`orphaned`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from pydantic import BaseModel, Field

from shared.clock import server_time
from shared.names import (
    KEY_DEADLETTER,
    KOMBU_UNACKED,
    KOMBU_UNACKED_INDEX,
    TASK_QUEUES,
    deliveries_key,
    queue_keys,
    result_key,
)

DEADLETTER_MAX = 10_000
HOLDER = "worker"  # field of deliveries:{id}: the worker that admitted the last delivery
CRASHES = "crashes"  # field of deliveries:{id}: deliveries whose worker died running the job
REASON_DELIVERIES = "delivered {n} times without finishing (max_deliveries={k})"

__all__ = [
    "DeadLetter",
    "crash_count",
    "dead_letter",
    "delivery_counts",
    "entry_for",
    "in_flight",
    "list_dead_letters",
    "orphaned",
    "requeue",
]


class DeadLetter(BaseModel):
    """One entry of the dead-letter list (stored as JSON in ``torchfleet:deadletter``)."""

    job_id: str
    task: str
    args: list[Any] = Field(default_factory=list)
    reason: str
    deliveries: int
    time: float = Field(default_factory=time.time)
    worker: str | None = None


def entry_for(
    job_id: str, task: str, args: Any, deliveries: int, limit: int, worker: str
) -> DeadLetter:
    """The dead-letter entry for a job delivered ``deliveries`` times."""
    return DeadLetter(
        job_id=job_id,
        task=task,
        args=list(args or []),
        reason=REASON_DELIVERIES.format(n=deliveries - 1, k=limit),
        deliveries=deliveries,
        worker=worker,
    )


def delivery_counts(client: redis.Redis, job_id: str) -> dict[str, int]:
    """``{"delivered": n, "executed": m}`` for a job (zeros if never delivered)."""
    raw = client.hgetall(deliveries_key(job_id))
    counts = {"delivered": 0, "executed": 0}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name in counts:
            counts[name] = int(value)
    return counts


def crash_count(client: redis.Redis, job_id: str) -> int:
    """Deliveries of a job whose worker died while running it (0 if none)."""
    return int(client.hget(deliveries_key(job_id), CRASHES) or 0)


def dead_letter(client: redis.Redis, entry: DeadLetter) -> None:
    """Append an entry to the dead-letter list (capped so a storm cannot fill Redis)."""
    with client.pipeline(transaction=True) as pipe:
        pipe.rpush(KEY_DEADLETTER, entry.model_dump_json())
        pipe.ltrim(KEY_DEADLETTER, -DEADLETTER_MAX, -1)
        pipe.execute()


def list_dead_letters(client: redis.Redis) -> list[DeadLetter]:
    """Every dead-letter entry, oldest first (unreadable entries are skipped)."""
    entries = []
    for raw in client.lrange(KEY_DEADLETTER, 0, -1):
        try:
            entries.append(DeadLetter.model_validate_json(raw))
        except ValueError:
            continue
    return entries


def requeue(client: redis.Redis, app: Any, job_ids: Iterable[str] | None = None) -> list[str]:
    """Send dead-lettered jobs again under their own ids (all of them if ``job_ids`` is None).

    Each entry leaves the list, its delivery count restarts at zero and its failed result
    is forgotten, so the producer's ``wait`` sees the new run.
    """
    wanted = None if job_ids is None else set(job_ids)
    sent = []
    for raw in client.lrange(KEY_DEADLETTER, 0, -1):
        try:
            entry = DeadLetter.model_validate_json(raw)
        except ValueError:
            continue
        if wanted is not None and entry.job_id not in wanted:
            continue
        if not client.lrem(KEY_DEADLETTER, 1, raw):  # type: ignore[arg-type]
            continue  # another requeue took it first
        client.delete(deliveries_key(entry.job_id))
        app.backend.forget(entry.job_id)
        app.send_task(
            entry.task,
            args=entry.args,
            task_id=entry.job_id,
            queue=TASK_QUEUES.get(entry.task),
        )
        sent.append(entry.job_id)
    return sent


def orphaned(client: redis.Redis, job_ids: Iterable[str], queues: Iterable[str]) -> list[str]:
    """Jobs that exist nowhere any more: no result, no message in a queue, none unacked.

    kombu's Redis transport pops a message (BRPOP) and records it as unacknowledged in a
    second step; a connection lost in between (Redis restarted at that instant) drops the
    message. Only the producer still knows the job then: it finds such ids with this
    function and submits them again under the same id (a job that did run after all is
    answered from its stored result). Scans the queues: meant for reconciliation, not for
    every request.
    """
    wanted = [j for j in job_ids if not client.exists(result_key(j))]
    if not wanted:
        return []
    present: set[str] = set()
    raws = [raw for q in queues for key in queue_keys(q) for raw in client.lrange(key, 0, -1)]
    raws += [json.loads(v)[0] for v in client.hvals(KOMBU_UNACKED)]
    for raw in raws:
        message = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
        job_id = (message.get("headers") or {}).get("id")
        if job_id:
            present.add(str(job_id))
    return [j for j in wanted if j not in present]


def in_flight(
    client: redis.Redis,
    live: Mapping[str, Iterable[str]],
    *,
    visibility_timeout_s: float,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Every delivered, unacknowledged job: who holds it, and whether that worker is alive.

    ``live`` maps each live worker (a heartbeat record) to the job ids it says it holds.
    The holder is the live worker listing the job, else the worker that admitted it last
    (``deliveries:{id}``). A job is ``worker_gone`` when that holder has no heartbeat, or when
    nobody claims it and it went unrenewed for half the timeout (the keeper renews every
    quarter); ``returns_in_s`` is then when kombu's next sweep after the timeout restores it.
    Ages are read on the Redis server's clock, as the workers write and judge them.
    """
    now = server_time(client) if now is None else now
    claimed = {job: worker for worker, jobs in live.items() for job in jobs}
    scores: Any = client.zrange(KOMBU_UNACKED_INDEX, 0, -1, withscores=True)
    renewed = {tag: float(score) for tag, score in scores}
    jobs = []
    for tag, raw in client.hgetall(KOMBU_UNACKED).items():
        message, _, routing_key = json.loads(raw)
        headers = (json.loads(message) if isinstance(message, str) else message).get("headers")
        job_id = str((headers or {}).get("id", ""))
        since = float(renewed.get(tag, now))
        holder = claimed.get(job_id) or _text(client.hget(deliveries_key(job_id), HOLDER))
        stale = now - since > visibility_timeout_s / 2
        gone = holder not in live if holder else stale
        jobs.append(
            {
                "job_id": job_id,
                "task": (headers or {}).get("task"),
                "queue": routing_key,
                "worker": holder,
                "state": "worker_gone" if gone else "running",
                "renewed_s_ago": round(now - since, 1),
                "returns_in_s": round(max(0.0, since + visibility_timeout_s - now), 1)
                if gone
                else None,
            }
        )
    return sorted(jobs, key=lambda j: (j["state"], j["job_id"]))


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
