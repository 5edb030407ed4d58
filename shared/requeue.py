"""Send dead letters again under their own ids: a Celery job to the queue and priority it came
from, an online lane request back onto its lane's stream.

* A **Celery job** goes to the queue its last delivery came from (a device queue such as
  ``infer.cuda`` stays one) with the transport priority it was sent with; its delivery count
  restarts and its failed result is forgotten, so the producer's ``wait`` sees the new run.
* A **lane request** is added again to the stream it was read from (its device kind and its
  priority stream), with the bytes its dead letter kept; its stored ``dead_lettered`` result
  is removed. Its answer goes to the reply address it had: a client still waiting has had
  its ``dead_lettered`` error already and drops the late answer, but ``torchfleet results``
  (the CLI stores every answer) shows it. Its deadline is kept: past it, it is answered
  ``expired``. Its send time becomes the requeue's, so its queue time is not inflated.
* A **cancelled** job (`torchfleet cancel`) is not requeued: that would run what its owner
  stopped, and the workers have revoked its id, so they would drop it again. It stays in the
  list, with the reason; submit it again under a new id if it should run.

An entry is taken off the list before it is sent, so two requeues never send it twice; one
that cannot be sent (Redis gone mid-way) is put back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from shared.deadletter import (
    LANE_FIELDS,
    DeadLetter,
    append_raw,
    restore_fields,
    take,
)
from shared.lane import F_STORE, F_SUBMITTED, result_key
from shared.names import (
    DEVICE_KINDS,
    KEY_DEADLETTER,
    TASK_LANE,
    TASK_QUEUES,
    cancel_key,
    deliveries_key,
    every_queue,
    job_key,
    lane_streams,
)
from shared.settings import Settings, get_settings

CANCELLED = (
    "it was cancelled (`torchfleet cancel`): a requeue would run what its owner stopped, and "
    "the workers have revoked its id; submit it again under a new id if it should run"
)
DROPPED = "its payload was over TORCHFLEET_DEADLETTER_MAX_BYTES and was not kept; submit it again"
NO_BYTES = (
    "its request's bytes were not kept (it had no reply address, or an older worker parked "
    "it); send it again with `torchfleet infer` or Client.infer"
)


@dataclass
class Requeued:
    """What a requeue did: the ids sent again, and those left in the list with the reason."""

    requeued: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def requeue(
    client: redis.Redis,
    app: Any,
    job_ids: Iterable[str] | None = None,
    *,
    settings: Settings | None = None,
) -> Requeued:
    """Send dead-lettered jobs and lane requests again under their own ids (every entry if
    ``job_ids`` is None); cancelled jobs and entries without their payload stay."""
    settings = settings or get_settings()
    wanted = None if job_ids is None else set(job_ids)
    done = Requeued()
    for raw in client.lrange(KEY_DEADLETTER, 0, -1):
        try:
            entry = DeadLetter.model_validate_json(raw)
        except ValueError:
            continue
        if wanted is not None and entry.job_id not in wanted:
            continue
        why = refusal(client, entry)
        if why is not None:
            done.refused[entry.job_id] = why
            continue
        if not take(client, raw):
            continue  # another requeue took it first
        try:
            if entry.task == TASK_LANE:
                send_lane(client, entry, settings.result_ttl_s)
            else:
                send_job(client, app, entry)
        except BaseException:
            append_raw(client, raw, settings.deadletter_max_bytes)  # never lose an entry
            raise
        done.requeued.append(entry.job_id)
    return done


def refusal(client: redis.Redis, entry: DeadLetter) -> str | None:
    """Why an entry cannot be sent again (None: it can)."""
    if entry.payload_dropped:
        return DROPPED
    if client.exists(cancel_key(entry.job_id)):
        return CANCELLED
    if entry.task != TASK_LANE:
        return None
    request = entry.args[0] if entry.args and isinstance(entry.args[0], dict) else {}
    if not request.get(LANE_FIELDS):
        return NO_BYTES
    if request.get("lane") not in lane_stream_names():
        return f"its stream {request.get('lane')!r} is not a lane stream of this fleet"
    return None


def send_job(client: redis.Redis, app: Any, entry: DeadLetter) -> None:
    """The Celery job again, on the queue and with the priority of its last delivery."""
    queue = entry.queue if entry.queue in every_queue() else TASK_QUEUES.get(entry.task)
    options: dict[str, Any] = {"queue": queue}
    if entry.priority is not None:
        options["priority"] = entry.priority
    client.delete(deliveries_key(entry.job_id))
    app.backend.forget(entry.job_id)
    app.send_task(entry.task, args=entry.args, task_id=entry.job_id, **options)


def send_lane(client: redis.Redis, entry: DeadLetter, result_ttl_s: int) -> None:
    """The lane request again, on the stream it was read from, as it was sent."""
    request = entry.args[0]
    fields = restore_fields(request[LANE_FIELDS])
    fields[F_SUBMITTED] = repr(time.time()).encode()
    with client.pipeline(transaction=False) as pipe:
        pipe.delete(result_key(entry.job_id))
        if fields.get(F_STORE) == b"1":  # `torchfleet results` knows the id again
            pipe.set(job_key(entry.job_id), "infer", ex=result_ttl_s)
        pipe.xadd(request["lane"], fields)  # type: ignore[arg-type]
        pipe.execute()


def lane_stream_names() -> set[str]:
    return {stream for kind in DEVICE_KINDS for stream in lane_streams(kind)}
