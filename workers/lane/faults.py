"""The lane's links to the fleet's reliability pieces: the dead-letter store
(:mod:`shared.deadletter`) and the handling of fatal device errors (:mod:`workers.faults`)."""

from __future__ import annotations

from typing import Any

import redis

from shared.deadletter import LANE_FIELDS, DeadLetter, dead_letter, keep_fields
from shared.lane import F_DATA, F_DTYPE, F_MODEL, F_SHAPE, reply_address
from shared.names import TASK_LANE
from workers.faults import is_fatal_device_error, request_replacement
from workers.lane.batch import Entry


def dead_letter_request(
    client: redis.Redis | Any, *, request: dict[str, Any], reason: str, deliveries: int, worker: str
) -> None:
    """Park a lane request in the dead-letter list. ``request`` describes it (stream, entry,
    id, model, dtype, shape, size, and the fields a requeue sends again)."""
    entry = DeadLetter(
        job_id=str(request.get("id") or request.get("entry")),
        task=TASK_LANE,
        args=[request],
        reason=reason,
        deliveries=deliveries,
        worker=worker,
    )
    dead_letter(client, entry)


def is_fatal(error: BaseException) -> bool:
    """An accelerator error the process cannot recover from."""
    return is_fatal_device_error(error)


def replace_worker() -> None:
    """Ask for a warm shutdown with the exit code that makes the supervisor start a fresh one."""
    request_replacement()


def describe_entry(entry: Entry, request_id: str | None) -> dict[str, Any]:
    """A dead letter's description of a lane entry. Its fields (tensor bytes included) are
    kept for `torchfleet deadletter requeue` when it has a reply address to answer."""
    fields = entry.fields

    def text(name: bytes) -> str | None:
        value = fields.get(name)
        return value.decode(errors="replace")[:200] if value is not None else None

    described: dict[str, Any] = {
        "lane": entry.stream,
        "entry": entry.entry_id.decode(),
        "id": request_id,
        "model": text(F_MODEL),
        "dtype": text(F_DTYPE),
        "shape": text(F_SHAPE),
        "bytes": len(fields.get(F_DATA, b"")),
    }
    if request_id is not None and reply_address(fields)[1] is not None:
        described[LANE_FIELDS] = keep_fields(fields)
    return described
