"""Lost and dead jobs, torch-free: delivery counts, the dead-letter list, orphan finding.

Celery on Redis delivers at least once. The worker counts every delivery of a job id in
``deliveries:{id}`` (``delivered``, ``executed``, and ``crashes``: the deliveries a worker
died under, see ``workers/admission.py``) and, past ``settings.max_deliveries`` crashes,
appends the job to the dead-letter list instead of running it again; the producer reads
the list, requeues from it, and finds jobs the transport dropped (:func:`orphaned`).

The online lane does the same past ``lane_max_deliveries``; requeue is in :mod:`shared.requeue`.

The list is capped by count (``DEADLETTER_MAX``) and by bytes
(``settings.deadletter_max_bytes``): entries hold payloads, so a storm of large poison jobs
must not fill Redis. The oldest entries go first; an entry larger than the whole cap on its
own is kept without its payload (``payload_dropped``: it can be read, not requeued). The
bytes held are counted in ``deadletter-bytes`` beside the list, by the scripts that add and
take entries.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from pydantic import BaseModel, Field

from shared.clock import server_time
from shared.names import (
    KEY_DEADLETTER,
    KEY_DEADLETTER_BYTES,
    KOMBU_UNACKED,
    KOMBU_UNACKED_INDEX,
    deliveries_key,
    queue_keys,
    result_key,
)
from shared.settings import get_settings

DEADLETTER_MAX = 10_000
HOLDER = "worker"  # field of deliveries:{id}: the worker that admitted the last delivery
CRASHES = "crashes"  # field of deliveries:{id}: deliveries whose worker died running the job
REASON_DELIVERIES = "delivered {n} times without finishing (max_deliveries={k})"
LANE_FIELDS = "fields"  # a lane dead letter's request fields (base64), kept for a requeue
# KEYS: the list, its byte count. ARGV: the entry, the most entries, the most bytes. The
# count is rebuilt from the list when it is missing; the oldest entries go past either cap.
APPEND_SCRIPT = """
local total = tonumber(redis.call('GET', KEYS[2]) or '-1')
local count = redis.call('LLEN', KEYS[1])
if count == 0 then total = 0 end
if total < 0 then
  total = 0
  for start = 0, count - 1, 100 do
    for _, raw in ipairs(redis.call('LRANGE', KEYS[1], start, start + 99)) do
      total = total + #raw
    end
  end
end
redis.call('RPUSH', KEYS[1], ARGV[1])
total = total + #ARGV[1]
count = count + 1
local most, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
while count > 1 and (count > most or total > cap) do
  total = total - #redis.call('LPOP', KEYS[1])
  count = count - 1
end
redis.call('SET', KEYS[2], total)
return total
"""
# KEYS: the list, its byte count. ARGV: one entry as stored. 1 if this call removed it.
TAKE_SCRIPT = """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DECRBY', KEYS[2], #ARGV[1])
end
return removed
"""

__all__ = [
    "DeadLetter",
    "crash_count",
    "dead_letter",
    "delivery_counts",
    "entry_for",
    "in_flight",
    "keep_fields",
    "list_dead_letters",
    "message_headers",
    "orphaned",
    "restore_fields",
    "take",
    "unacked_job_ids",
    "unacked_messages",
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
    queue: str | None = None  # the queue it was delivered from (a device queue: infer.cuda)
    priority: int | None = None  # the transport priority it was sent with (0 = most urgent)
    payload_dropped: bool = False  # over deadletter_max_bytes alone: kept without its args


def entry_for(
    job_id: str,
    task: str,
    args: Any,
    deliveries: int,
    limit: int,
    worker: str,
    *,
    delivery_info: Mapping[str, Any] | None = None,
) -> DeadLetter:
    """The dead-letter entry for a job delivered ``deliveries`` times. ``delivery_info``
    (Celery's, of the last delivery) gives the queue and priority a requeue sends it to."""
    info = delivery_info or {}
    priority = info.get("priority")
    return DeadLetter(
        job_id=job_id,
        task=task,
        args=list(args or []),
        reason=REASON_DELIVERIES.format(n=deliveries - 1, k=limit),
        deliveries=deliveries,
        worker=worker,
        queue=info.get("routing_key") or None,
        priority=int(priority) if priority is not None else None,
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


def dead_letter(client: redis.Redis, entry: DeadLetter, *, max_bytes: int | None = None) -> int:
    """Append an entry to the dead-letter list, dropping the oldest past ``DEADLETTER_MAX``
    entries or ``max_bytes`` (``settings.deadletter_max_bytes`` by default); the bytes the
    list holds after. An entry over ``max_bytes`` on its own is kept without its payload."""
    cap = get_settings().deadletter_max_bytes if max_bytes is None else max_bytes
    raw = entry.model_dump_json()
    if len(raw.encode()) > cap:
        raw = entry.model_copy(update={"args": [], "payload_dropped": True}).model_dump_json()
    return append_raw(client, raw, cap)


def append_raw(client: redis.Redis, raw: str | bytes, max_bytes: int) -> int:
    """Append one entry as stored (a requeue that could not send puts it back this way)."""
    keys = (KEY_DEADLETTER, KEY_DEADLETTER_BYTES)
    return int(client.eval(APPEND_SCRIPT, 2, *keys, raw, DEADLETTER_MAX, max_bytes))


def take(client: redis.Redis, raw: bytes | str) -> bool:
    """Remove one entry (as stored) from the list; False if another caller took it first."""
    keys = (KEY_DEADLETTER, KEY_DEADLETTER_BYTES)
    return bool(client.eval(TAKE_SCRIPT, 2, *keys, raw))


def list_dead_letters(client: redis.Redis) -> list[DeadLetter]:
    """Every dead-letter entry, oldest first (unreadable entries are skipped)."""
    entries = []
    for raw in client.lrange(KEY_DEADLETTER, 0, -1):
        try:
            entries.append(DeadLetter.model_validate_json(raw))
        except ValueError:
            continue
    return entries


def message_headers(message: Any) -> dict[str, Any]:
    """The headers of a kombu task message (its JSON text, or the parsed object); empty for
    anything else."""
    try:
        parsed = json.loads(message) if isinstance(message, (bytes, str)) else message
        headers = parsed.get("headers") if isinstance(parsed, dict) else None
    except ValueError:
        return {}
    return headers if isinstance(headers, dict) else {}


def unacked_messages(client: redis.Redis) -> dict[Any, tuple[dict[str, Any], str]]:
    """kombu's unacknowledged deliveries: by delivery tag, the message's headers and its
    routing key (a record that is not a task message has empty headers)."""
    found = {}
    for tag, raw in client.hgetall(KOMBU_UNACKED).items():
        try:
            message, _, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            message, routing_key = None, ""
        found[tag] = (message_headers(message), str(routing_key))
    return found


def unacked_job_ids(client: redis.Redis) -> set[str]:
    """The ids of the jobs delivered and not yet acknowledged (running, or a dead worker's)."""
    return {str(h["id"]) for h, _ in unacked_messages(client).values() if h.get("id")}


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
    present = unacked_job_ids(client)
    for raw in (raw for q in queues for key in queue_keys(q) for raw in client.lrange(key, 0, -1)):
        job_id = message_headers(raw).get("id")
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
    for tag, (headers, routing_key) in unacked_messages(client).items():
        job_id = str(headers.get("id", ""))
        since = float(renewed.get(tag, now))
        holder = claimed.get(job_id) or _text(client.hget(deliveries_key(job_id), HOLDER))
        stale = now - since > visibility_timeout_s / 2
        gone = holder not in live if holder else stale
        jobs.append(
            {
                "job_id": job_id,
                "task": headers.get("task"),
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


def keep_fields(fields: Mapping[bytes, bytes]) -> dict[str, str]:
    """A lane request's stream fields as JSON-safe text (base64), for its dead letter."""
    return {name.decode(): base64.b64encode(value).decode() for name, value in fields.items()}


def restore_fields(kept: Mapping[str, str]) -> dict[bytes, bytes]:
    """The stream fields :func:`keep_fields` kept."""
    return {name.encode(): base64.b64decode(value) for name, value in kept.items()}
