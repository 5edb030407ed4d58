"""The Python client: validate and submit jobs, follow their progress, read their results.

It needs only Redis and the torch-free contracts in ``shared``::

    from producers import Client
    client = Client()
    job_id = client.submit_train(model_name="digits-cnn", epochs=5)
    result = client.wait(job_id, on_progress=print)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from pydantic import ValidationError

from shared.celery_app import create_app
from shared.connection import redis_client
from shared.errors import InvalidJob, JobFailed, JobTimeout, TorchfleetError
from shared.jobs import CompressJob, InferJob, TrainJob, parse_job
from shared.names import TASK_COMPRESS, TASK_INFER, TASK_TRAIN
from shared.registry import ModelRegistry
from shared.settings import Settings, get_settings

TASK_FOR_KIND = {"train": TASK_TRAIN, "compress": TASK_COMPRESS, "infer": TASK_INFER}
FINISHED = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
POLL_START_S = 0.002
POLL_MAX_S = 0.25

AnyJob = TrainJob | CompressJob | InferJob
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


class Client:
    """Submit, wait for and read jobs on a torchfleet fleet."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.app: Celery = create_app(self.settings)
        self.redis: redis.Redis = redis_client(self.settings)
        self.registry = ModelRegistry(self.redis)

    # ------------------------------------------------------------ submit
    def submit(self, job: AnyJob | dict[str, Any], *, job_id: str | None = None) -> str:
        """Validate and enqueue any job; returns its id (the Celery task id)."""
        model = job if isinstance(job, TrainJob | CompressJob | InferJob) else _validate(job)
        if isinstance(model, InferJob) and model.submitted_at is None:
            model = model.model_copy(update={"submitted_at": time.time()})
        job_id = job_id or uuid.uuid4().hex
        self.app.send_task(
            TASK_FOR_KIND[model.kind],
            args=[model.model_dump(mode="json", exclude_none=True)],
            task_id=job_id,
            priority=getattr(model, "priority", None),
            retry=True,
            retry_policy={"max_retries": 10, "interval_start": 0.1, "interval_step": 0.5},
        )
        return job_id

    def submit_train(self, *, job_id: str | None = None, **spec: Any) -> str:
        return self.submit(_validate({"kind": "train", **spec}), job_id=job_id)

    def submit_compress(self, *, job_id: str | None = None, **spec: Any) -> str:
        return self.submit(_validate({"kind": "compress", **spec}), job_id=job_id)

    def submit_infer(
        self, model: str, inputs: Any, *, job_id: str | None = None, **options: Any
    ) -> str:
        """``inputs``: a TensorPayload, a list of ImagePayload, or a numpy array / nested list."""
        from producers.encoding import encode_array
        from shared.jobs import ImagePayload, TensorPayload

        if not isinstance(inputs, TensorPayload) and not (
            isinstance(inputs, list) and inputs and isinstance(inputs[0], ImagePayload)
        ):
            inputs = encode_array(inputs)
        return self.submit(InferJob(model=model, inputs=inputs, **options), job_id=job_id)

    # ------------------------------------------------------------- read
    def state(self, job_id: str) -> JobState:
        """The job's current state from the result backend (PENDING if unknown or queued)."""
        meta = self.app.backend.get_task_meta(job_id)
        status = str(meta.get("status", "PENDING"))
        payload = meta.get("result")
        if status == "SUCCESS":
            return JobState(job_id, status, result=payload if isinstance(payload, dict) else None)
        if status == "FAILURE":
            code, message = _error_of(payload, meta)
            return JobState(job_id, status, error_code=code, error=message)
        if status == "REVOKED":
            return JobState(job_id, status, error_code="cancelled", error="job was cancelled")
        progress = payload if isinstance(payload, dict) else {}
        return JobState(job_id, status, progress=progress)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Block until the job finishes; its result, or :class:`JobFailed` / :class:`JobTimeout`."""
        state = self.wait_state(job_id, timeout=timeout, on_progress=on_progress)
        if state.status != "SUCCESS" or state.result is None:
            raise JobFailed(job_id, state.error_code or "failed", state.error or state.status)
        return state.result

    def wait_state(
        self, job_id: str, *, timeout: float | None = None, on_progress: ProgressFn | None = None
    ) -> JobState:
        """Poll the result backend with a short, growing interval until the job finishes."""
        if on_progress is None:
            return self._wait_pubsub(job_id, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = POLL_START_S
        last: dict[str, Any] | None = None
        while True:
            state = self.state(job_id)
            if state.finished:
                return state
            if on_progress is not None and state.progress != last:
                on_progress(state)
                last = state.progress
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(f"job {job_id} did not finish within {timeout} s ({state.status})")
            time.sleep(interval)  # polling interval of a producer reading the result backend
            interval = min(POLL_MAX_S, interval * 1.5)

    def _wait_pubsub(self, job_id: str, timeout: float | None) -> JobState:
        """Wait on the result backend's pub/sub notification instead of polling."""
        try:
            self.app.AsyncResult(job_id).get(timeout=timeout, propagate=False)
        except CeleryTimeoutError:
            state = self.state(job_id)
            raise JobTimeout(
                f"job {job_id} did not finish within {timeout} s ({state.status})"
            ) from None
        return self.state(job_id)

    def cancel(self, job_id: str) -> None:
        self.app.control.revoke(job_id, terminate=False)

    def close(self) -> None:
        self.redis.close()
        self.app.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _validate(spec: dict[str, Any]) -> AnyJob:
    try:
        return parse_job(spec)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise InvalidJob(f"invalid job: {problems}") from None


def _error_of(payload: Any, meta: dict[str, Any]) -> tuple[str, str]:
    """Error code and message from a FAILURE record (Celery rebuilds the exception)."""
    if isinstance(payload, TorchfleetError):
        return payload.code, str(payload)
    if isinstance(payload, BaseException):
        return type(payload).__name__, str(payload)
    if isinstance(payload, dict):
        return str(payload.get("exc_type", "error")), str(payload.get("exc_message", ""))
    return "failed", str(payload or meta.get("traceback", "unknown error"))
