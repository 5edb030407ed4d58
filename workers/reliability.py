"""Delivery counting, the dead-letter list, payload limits and fatal device faults.

Celery on Redis delivers at least once: a job whose worker dies is restored to its queue
after the visibility timeout and delivered again. These helpers keep that from turning
into a loss, a loop or a silent duplicate:

* every delivery of a job id is counted in ``deliveries:{id}`` (a hash: ``delivered``,
  ``executed``); past ``settings.max_deliveries`` the job goes to the dead-letter list
  instead of running again (a poison job that kills its worker would otherwise loop);
* ``executed`` counts the deliveries that actually computed, so duplicates are measurable;
* a payload larger or deeper than the limits is refused before validation;
* an unrecoverable device error fails the job and asks the worker to shut down warmly
  with :data:`EXIT_DEVICE_FAULT`, so that its supervisor starts a fresh process.

This module is torch-free: the producer side imports it for the dead-letter commands.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from celery.signals import worker_init, worker_ready, worker_shutdown
from pydantic import BaseModel, Field
from redis.client import Pipeline

from shared.errors import DeadLettered, DeviceFault, InvalidJob, TorchfleetError
from shared.names import KEY_DEADLETTER, KEY_DELIVERIES, TASK_QUEUES

log = logging.getLogger("torchfleet.worker")
UNACKED_INDEX_KEY = "unacked_index"  # kombu's Redis transport: delivery tag -> delivered at
APPEND_RETRY_S = 30.0
APPEND_RETRY_PAUSE_S = 0.1
EXIT_DEVICE_FAULT = 75  # EX_TEMPFAIL: "replace me"; compose's restart policy starts a new one
MAX_JSON_DEPTH = 32
DEADLETTER_MAX = 10_000
REASON_DELIVERIES = "delivered {n} times without finishing (max_deliveries={k})"
FATAL_DEVICE_MARKERS = (
    "cuda error",
    "device-side assert",
    "illegal memory access",
    "unspecified launch failure",
    "cublas_status",
    "cudnn_status",
    "cudnn error",
    "nccl error",
    "ecc error",
    "cuda driver",
)

__all__ = [
    "EXIT_DEVICE_FAULT",
    "Admission",
    "DeadLetter",
    "DeadLettered",
    "DeviceFault",
    "admit",
    "check_payload",
    "count_delivery",
    "dead_letter",
    "delivery_counts",
    "guard_transport",
    "is_connection_error",
    "is_fatal_device_error",
    "list_dead_letters",
    "load_plugins",
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


# ----------------------------------------------------------------- delivery counts
def deliveries_key(job_id: str) -> str:
    return f"{KEY_DELIVERIES}{job_id}"


def _incr(client: redis.Redis, job_id: str, name: str, ttl_s: int) -> int:
    with client.pipeline(transaction=True) as pipe:
        pipe.hincrby(deliveries_key(job_id), name, 1)
        pipe.expire(deliveries_key(job_id), ttl_s)
        count, _ = pipe.execute()
    return int(count)


def count_delivery(client: redis.Redis, job_id: str, ttl_s: int) -> int:
    """Count one more delivery of ``job_id``; returns how many there have been."""
    return _incr(client, job_id, "delivered", ttl_s)


def delivery_counts(client: redis.Redis, job_id: str) -> dict[str, int]:
    """``{"delivered": n, "executed": m}`` for a job (zeros if never delivered)."""
    raw = client.hgetall(deliveries_key(job_id))
    counts = {"delivered": 0, "executed": 0}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        counts[name] = int(value)
    return counts


# ----------------------------------------------------------------- dead letters
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


@dataclass(frozen=True)
class Admission:
    """What the one round trip of :func:`admit` learned about a delivery."""

    stored: dict[str, Any] | None = None  # an earlier delivery's result: answer with it
    replies: list[Any] = field(default_factory=list)  # the replies to ``reads``, in order


Read = Callable[[Pipeline], object]


def admit(
    client: redis.Redis,
    settings: Any,
    request: Any,
    worker: str,
    payload: Any,
    *,
    result_key: str | bytes | None = None,
    reads: Sequence[Read] = (),
) -> Admission:
    """Gate one delivery before it runs, in one round trip to Redis: count it, dead-letter
    it if it came too often, refuse an oversized payload, count it as executed.

    ``request`` is the Celery task request (id, task name, args, retries). Retries that the
    task asked for itself (transient errors) are not held against the job. With
    ``result_key``, a job whose result an earlier delivery stored is not run again (its
    counts are left as they were). ``reads`` queue more commands on the same transaction
    (the cancel flag, the model's registry record...): one round trip instead of several.
    """
    key = deliveries_key(request.id)
    ttl = settings.result_ttl_s
    try:
        check_payload(payload, settings.max_payload_bytes)
    except InvalidJob:
        count_delivery(client, request.id, ttl)
        raise
    with client.pipeline(transaction=True) as pipe:
        pipe.get(result_key or "")  # the empty key never exists
        pipe.hincrby(key, "delivered", 1)
        pipe.hincrby(key, "executed", 1)  # the common case; undone below where it did not run
        pipe.expire(key, ttl)
        own = len(pipe)  # the replies to the caller's reads come after these
        for read in reads:
            read(pipe)
        replies = pipe.execute()
    stored = _succeeded(replies[0])
    if stored is not None:  # a redelivery of a finished job: neither delivered nor executed
        with client.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "delivered", -1)
            pipe.hincrby(key, "executed", -1)
            pipe.execute()
        return Admission(stored=stored)
    unexplained = int(replies[1]) - (request.retries or 0)
    if unexplained > settings.max_deliveries:
        client.hincrby(key, "executed", -1)
        entry = entry_for(
            request.id, request.task, request.args, unexplained, settings.max_deliveries, worker
        )
        dead_letter(client, entry)
        raise DeadLettered(
            f"job {request.id} {entry.reason}; it is in the dead-letter list: inspect it with "
            "`torchfleet deadletter list`, requeue it with `torchfleet deadletter requeue`"
        )
    return Admission(replies=replies[own:])


def _succeeded(raw: bytes | str | None) -> dict[str, Any] | None:
    """The result in a result-backend record, if the record says SUCCESS."""
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    result = meta.get("result") if isinstance(meta, dict) else None
    return dict(result) if meta.get("status") == "SUCCESS" and isinstance(result, dict) else None


# ----------------------------------------------------------------- orphans
def orphaned(client: redis.Redis, job_ids: Iterable[str], queues: Iterable[str]) -> list[str]:
    """Jobs that exist nowhere any more: no result, no message in a queue, none unacked.

    kombu's Redis transport pops a message (BRPOP) and records it as unacknowledged in a
    second step; a connection lost in between (Redis restarted at that instant) drops the
    message. Only the producer still knows the job then: it finds such ids with this
    function and submits them again under the same id (a job that did run after all is
    answered from its stored result). Scans the queues: meant for reconciliation, not for
    every request.
    """
    from shared.names import queue_keys

    wanted = [j for j in job_ids if not client.exists(f"celery-task-meta-{j}")]
    if not wanted:
        return []
    present: set[str] = set()
    raws = [raw for q in queues for key in queue_keys(q) for raw in client.lrange(key, 0, -1)]
    raws += [json.loads(v)[0] for v in client.hvals("unacked")]
    for raw in raws:
        message = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
        job_id = (message.get("headers") or {}).get("id")
        if job_id:
            present.add(str(job_id))
    return [j for j in wanted if j not in present]


# ----------------------------------------------------------------- payload limits
def check_payload(payload: Any, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse a job payload over ``max_bytes`` (approximate JSON size) or nested too deeply.

    Walks the decoded JSON without recursion, so a hostile nesting cannot blow the stack.
    """
    size = 0
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise InvalidJob(f"the job nests deeper than {max_depth} levels")
        if isinstance(value, dict):
            size += 2
            for key, item in value.items():
                size += len(str(key)) + 4
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            size += 2
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            size += len(value) + 2
        else:
            size += 8
        if size > max_bytes:
            raise InvalidJob(
                f"the job is larger than max_payload_bytes={max_bytes}; send fewer inputs "
                "per job or raise TORCHFLEET_MAX_PAYLOAD_BYTES"
            )


# ----------------------------------------------------------------- device faults
def is_fatal_device_error(error: BaseException) -> bool:
    """An accelerator error the process cannot recover from (not an out-of-memory)."""
    if isinstance(error, TorchfleetError):
        return False
    text = str(error).lower()
    if "out of memory" in text:
        return False
    if type(error).__name__ == "AcceleratorError":
        return True
    return isinstance(error, RuntimeError) and any(m in text for m in FATAL_DEVICE_MARKERS)


def is_connection_error(error: BaseException) -> bool:
    """Redis (broker, backend or registry) unreachable: the job is fine, the world is not."""
    from kombu.exceptions import OperationalError

    seen: BaseException | None = error
    for _ in range(5):  # the error itself and the ones it was raised from
        if seen is None:
            return False
        if isinstance(seen, (redis.ConnectionError, redis.TimeoutError, OperationalError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def request_replacement(exit_code: int = EXIT_DEVICE_FAULT) -> None:
    """Ask the Celery worker for a warm shutdown that exits with ``exit_code``.

    Running jobs finish and are acknowledged (this one's failure included); then the
    process exits and its supervisor (compose ``restart: unless-stopped``) starts another.
    """
    from celery.worker import state

    global _exit_code
    _exit_code = exit_code
    state.should_stop = exit_code


_exit_code: int | None = None


@worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    _keeper_stop.set()
    # `torchfleet worker` drops Celery's exit code; set it once everything else has run.
    if _exit_code is not None:
        atexit.register(_exit_now, _exit_code)


def _exit_now(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ----------------------------------------------------------------- visibility
def renew_visibility(client: redis.Redis, tags: Iterable[str], now: float | None = None) -> int:
    """Mark deliveries this worker still holds as fresh in kombu's unacked index.

    kombu's Redis transport restores any unacknowledged delivery older than the visibility
    timeout, even one a live worker is still running. Refreshing the score of held deliveries
    makes the timeout count from the worker's last sign of life instead of from delivery, so
    only the jobs of a dead worker come back. ``XX``: an acknowledged tag is never re-added.
    """
    mapping = {tag: now if now is not None else time.time() for tag in tags}
    if not mapping:
        return 0
    client.zadd(UNACKED_INDEX_KEY, mapping, xx=True, ch=True)
    return len(mapping)


def held_delivery_tags() -> list[str]:
    """Delivery tags of the requests this worker holds (prefetched and running)."""
    from celery.worker import state

    for _ in range(3):  # the sets are weak and shared with the pool's threads
        try:
            held = [*state.reserved_requests, *state.active_requests]
        except RuntimeError:
            continue
        return sorted({str(r.message.delivery_tag) for r in held if r.message is not None})
    return []


def keep_visible(client: redis.Redis, interval_s: float, stop: threading.Event) -> None:
    """Renew this worker's held deliveries every ``interval_s`` until ``stop`` is set."""
    while not stop.wait(interval_s):
        try:
            renew_visibility(client, held_delivery_tags())
        except redis.RedisError:
            log.warning("could not renew job visibility; retrying", exc_info=True)


_keeper_stop = threading.Event()


@worker_ready.connect
def _start_keeper(**_: Any) -> None:
    from shared.connection import redis_client
    from workers.runtime import effective_settings

    settings = effective_settings()
    interval = max(0.2, settings.visibility_timeout_s / 4)
    _keeper_stop.clear()
    threading.Thread(
        target=keep_visible,
        args=(redis_client(settings), interval, _keeper_stop),
        name="visibility-keeper",
        daemon=True,
    ).start()


# ----------------------------------------------------------------- transport guards
def guard_transport(retry_s: float = APPEND_RETRY_S) -> bool:
    """Close two gaps of kombu's Redis transport when Redis restarts under a worker.

    1. A message taken with BRPOP is recorded as unacknowledged by a second command; if that
       fails, kombu drops the message. Retry the record (atomic, idempotent) until Redis is
       back, for up to ``retry_s``.
    2. On connection loss kombu restores the worker's unacknowledged messages through the
       lost connection, and jobs that finish after the reconnection are acknowledged on their
       old channel; both can fail with an AttributeError that Celery treats as fatal: the
       worker stops (and can hang while stopping). The messages are still in Redis's unacked
       hash, so leave them there; the restore sweeps bring them back (a job that finished is
       then answered from its stored result).

    Idempotent; returns True when the guards were installed by this call.
    """
    from kombu.transport import redis as kombu_redis
    from kombu.transport.virtual.base import QoS as virtual_qos

    qos: Any = kombu_redis.QoS
    if getattr(qos, "_torchfleet_guarded", False):
        return False
    append, restore_unacked = qos.append, qos.restore_unacked

    def guarded_append(self: Any, message: Any, delivery_tag: Any) -> Any:
        deadline = time.monotonic() + retry_s
        while True:
            try:
                return append(self, message, delivery_tag)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if time.monotonic() > deadline:
                    raise
                log.warning(
                    "delivery %s not yet recorded as unacked (%s); retrying", delivery_tag, e
                )
                time.sleep(APPEND_RETRY_PAUSE_S)  # Redis is away: wait for it, then record

    def guarded_restore_unacked(self: Any, client: Any = None) -> None:
        try:
            restore_unacked(self, client)
        except Exception as e:
            log.warning("unacked messages left for the restore sweeps (%r)", e)
            self._delivered.clear()

    def guarded(settle: Any) -> Any:
        def settle_or_leave(self: Any, delivery_tag: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return settle(self, delivery_tag, *args, **kwargs)
            except AttributeError as e:  # the channel's connection is gone (reconnected since)
                log.warning("delivery %s left for the restore sweeps (%r)", delivery_tag, e)
                return virtual_qos.ack(self, delivery_tag)  # forget it here; Redis keeps it

        return settle_or_leave

    qos.append = guarded_append
    qos.restore_unacked = guarded_restore_unacked
    qos.ack = guarded(qos.ack)
    qos.reject = guarded(qos.reject)
    qos._torchfleet_guarded = True
    return True


# ----------------------------------------------------------------- plugins
@worker_init.connect
def _on_worker_init(**_: Any) -> None:
    from workers.runtime import effective_settings

    guard_transport()
    load_plugins(effective_settings().plugins)


def load_plugins(modules: Iterable[str]) -> list[str]:
    """Import modules named in ``settings.plugins`` (extra architectures or datasets)."""
    loaded = []
    for name in modules:
        importlib.import_module(name)
        loaded.append(name)
    return loaded


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


def dumps(entries: Iterable[DeadLetter]) -> str:
    return json.dumps([e.model_dump(mode="json") for e in entries], indent=2)
