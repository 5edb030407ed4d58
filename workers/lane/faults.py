"""The lane's links to the fleet's reliability pieces: the dead-letter store and the handling
of fatal device errors. They live in one module so a move of those pieces (the dead-letter
store is becoming ``shared.deadletter``) is repointed here only."""

from __future__ import annotations

from typing import Any

import redis

from shared.names import TASK_LANE
from workers.reliability import (
    DeadLetter,
    dead_letter,
    is_fatal_device_error,
    request_replacement,
)


def dead_letter_request(
    client: redis.Redis | Any, *, request: dict[str, Any], reason: str, deliveries: int, worker: str
) -> None:
    """Park a lane request in the dead-letter list. ``request`` describes it (stream, entry,
    id, model, dtype, shape, size); the tensor bytes are not kept."""
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
