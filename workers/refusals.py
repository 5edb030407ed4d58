"""Messages the worker refuses at receipt get a FAILURE result instead of silence.

Celery drops a task message it may not decode (pickle, any content type but JSON) or cannot
decode (a broken body) before any task runs: it logs, acknowledges the message and moves on,
and the job stays PENDING for good (celery/celery#1442). :class:`RefusingConsumer`, the
worker's consumer (set by :func:`workers.main.run_worker`), does the same and then stores a
FAILURE under the job id the message's headers carry, so the producer's wait ends with the
reason, and records the refusal (outcome ``refused``) in the worker's counters and the
stats stream. A stored result is never overwritten: a refused duplicate of a finished job
leaves its answer alone.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.exceptions import InvalidTaskError
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed

from shared.errors import RefusedMessage
from workers.app import ERROR_CHARS, FleetTask
from workers.runtime import get_runtime

log = logging.getLogger("torchfleet.worker")
REFUSED = "refused"  # the outcome counted and recorded
MAX_ID_CHARS = 256  # a header id longer than any the fleet makes is not a job's


def refusal_reason(content_type: str, error: BaseException) -> str:
    """What the producer reads about a refused message."""
    if isinstance(error, ContentDisallowed):
        return f"refused: content type {content_type} is not accepted; torchfleet sends JSON"
    detail = str(error)[:ERROR_CHARS]
    if isinstance(error, InvalidTaskError):
        return f"refused: the message is not a valid task ({detail})"
    return (
        f"refused: the message body could not be decoded as {content_type} ({detail}); "
        "torchfleet sends JSON"
    )


def header_job(message: Any) -> tuple[str, str] | None:
    """The job id and task name a message's headers carry, if they carry them readably."""
    headers = getattr(message, "headers", None)
    if not isinstance(headers, dict):
        return None
    job_id, task = headers.get("id"), headers.get("task")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_ID_CHARS:
        return None
    return job_id, task if isinstance(task, str) else ""


def answer_refusal(app: Any, message: Any, error: BaseException) -> str | None:
    """Store a FAILURE for the refused message's job (unless it has a result) and record the
    refusal; the job id, or None when the headers name none. Never raises: the consumer
    must go on."""
    job = header_job(message)
    if job is None:
        return None
    job_id, task_name = job
    reason = refusal_reason(str(message.content_type), error)
    try:
        if app.backend.get_task_meta(job_id).get("status") == "PENDING":  # no result yet
            app.backend.mark_as_failure(job_id, RefusedMessage(reason))
        record(app, job_id, task_name, reason)
    except Exception:  # a refusal never stops the consumer; the log keeps it
        log.warning("could not store the refusal of job %s", job_id, exc_info=True)
    return job_id


def record(app: Any, job_id: str, task_name: str, reason: str) -> None:
    """Count the refusal; a fleet task also gets its stats record."""
    rt = get_runtime()
    task = app.tasks.get(task_name)
    if isinstance(task, FleetTask):
        task.record(rt, job_id, REFUSED, time.perf_counter(), error=reason[:ERROR_CHARS])
    else:
        rt.count(REFUSED)


class RefusingConsumer(Consumer):
    """Celery's consumer, answering the messages it refuses (see the module's docstring)."""

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        super().on_decode_error(message, exc)
        answer_refusal(self.app, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        super().on_invalid_task(body, message, exc)
        answer_refusal(self.app, message, exc)
