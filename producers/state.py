"""Where a job stands, read from the result backend's records (no Redis calls but one MGET)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from shared.errors import InputError, TorchfleetError

FINISHED = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


class UnknownJob(InputError):
    """An id that was never submitted (or whose record expired with its result)."""

    code = "unknown_job"


ProgressFn = Callable[["JobState"], None]


@dataclass
class JobState:
    """Where a job stands: its Celery state, its progress, and its result or error."""

    job_id: str
    status: str
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error_code: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "progress": self.progress,
            "result": self.result,
            "error_code": self.error_code,
            "error": self.error,
        }


def read_metas(app: Celery, job_ids: list[str]) -> list[dict[str, Any] | None]:
    """The raw result-backend JSON of many jobs in one MGET (None where there is none yet)."""
    if not job_ids:
        return []
    backend = app.backend
    raw = backend.client.mget([backend.get_key_for_task(job_id) for job_id in job_ids])
    return [json.loads(value) if value else None for value in raw]


def state_from_meta(job_id: str, meta: dict[str, Any]) -> JobState:
    """A :class:`JobState` from a result-backend record (``status`` and ``result``)."""
    status = str(meta.get("status", "PENDING"))
    payload = meta.get("result")
    if status == "SUCCESS":
        return JobState(job_id, status, result=payload if isinstance(payload, dict) else None)
    if status == "FAILURE":
        code, message = error_of(payload, meta)
        return JobState(job_id, status, error_code=code, error=message)
    if status == "REVOKED":
        return JobState(job_id, status, error_code="cancelled", error="job was cancelled")
    progress = payload if isinstance(payload, dict) else {}
    return JobState(job_id, status, progress=progress)


def error_of(payload: Any, meta: dict[str, Any]) -> tuple[str, str]:
    """Error code and message from a FAILURE record (Celery rebuilds the exception)."""
    if isinstance(payload, TorchfleetError):
        return payload.code, str(payload)
    if isinstance(payload, BaseException):
        return type(payload).__name__, str(payload)
    if isinstance(payload, dict):
        return str(payload.get("exc_type", "error")), str(payload.get("exc_message", ""))
    return "failed", str(payload or meta.get("traceback", "unknown error"))
