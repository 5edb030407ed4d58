"""Thin Celery tasks: validate the JSON job, call the pure code, return JSON.

Input errors fail at once and are never retried; transient errors are retried with
exponential backoff; a job whose result is already stored (a redelivery after the
result was written) returns that result without computing again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject
from pydantic import ValidationError

from shared.celery_app import create_app
from shared.errors import InputError, InvalidJob, StaleDelivery, TorchfleetError, TransientError
from shared.jobs import (
    AnyJob,
    CompressJob,
    InferJob,
    ModelRef,
    TensorPayload,
    TrainJob,
    describe_errors,
    parse_job,
)
from shared.names import (
    TASK_COMPRESS,
    TASK_INFER,
    TASK_NOOP,
    TASK_TRAIN,
    cancel_key,
    input_key,
    model_key,
)
from workers.context import JobContext
from workers.control import JobCancelled, check_deadline, end_cancelled, poke_heartbeat
from workers.effects import DropsCheckpoint, fenced
from workers.reliability import (
    DeviceFault,
    Read,
    admit,
    is_connection_error,
    is_fatal_device_error,
    request_replacement,
)
from workers.runtime import Runtime, get_runtime
from workers.stats import append_record, infer_fields, stats_entry

app = create_app()
log = logging.getLogger("torchfleet.worker")
MAX_RETRIES = 5
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0

import workers.signals  # noqa: E402  (connects the worker's start-up and shutdown hooks)


def backoff_s(retries: int) -> float:
    """Exponential backoff for transient errors: 1, 2, 4 ... seconds, capped."""
    return float(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**retries))


def validate(payload: Any, kind: str) -> AnyJob:
    """The job model, or :class:`InvalidJob` listing every problem pydantic found."""
    if not isinstance(payload, dict):
        raise InvalidJob(f"a job must be a JSON object, not {type(payload).__name__}")
    try:
        job = parse_job(payload)
    except ValidationError as e:
        raise InvalidJob(f"invalid {kind} job: {describe_errors(e)}") from None
    if job.kind != kind:
        raise InvalidJob(f"a {job.kind!r} job was sent to the {kind!r} task")
    return job


def context(task: Task, rt: Runtime) -> JobContext:
    def progress(meta: dict[str, Any]) -> None:
        task.update_state(state="PROGRESS", meta=meta)

    registry = rt.registry.for_job(task.request.id)  # this delivery's fencing token
    return JobContext(
        job_id=task.request.id,
        device=rt.device,
        worker=rt.worker,
        store=rt.store,
        registry=registry,
        settings=rt.settings,
        progress=fenced(progress, registry),
    )


@dataclass(frozen=True)
class Arrival:
    """What the job's admission read from Redis along the way (one round trip in all)."""

    cancelled: bool = False
    model_fields: dict[Any, Any] | None = None  # the registry hash of the model an infer job names
    stored_inputs: bytes | None = None  # the tensor bytes an infer job keeps beside its message


Execute = Callable[[Any, Runtime, Task, Arrival], dict[str, Any]]


def run_job(task: Task, payload: Any, kind: str, execute: Execute) -> dict[str, Any]:
    rt = get_runtime()
    job_id = task.request.id
    started = time.perf_counter()
    try:
        answered, arrival = arrive(task, rt, payload, kind)
        if answered is not None:  # a redelivery of a finished job: its stored answer
            return answered
        job = validate(payload, kind)
        check_deadline(job, job_id)
        if arrival.cancelled:
            raise JobCancelled(f"job {job_id} was cancelled before it started")
        result = execute(job, rt, task, arrival)
    except JobCancelled:
        _record(rt, kind, job_id, "cancelled", started)
        if kind == "train":  # nothing will resume it: free the checkpoint
            rt.store.discard_checkpoint(job_id)
        end_cancelled(task)
    except StaleDelivery:  # overtaken by a newer delivery: leave its answer alone
        _record(rt, kind, job_id, "stale", started)
        raise Ignore() from None
    except TransientError as e:
        _record(rt, kind, job_id, "retry", started, error=e.code)
        raise task.retry(
            exc=e, countdown=backoff_s(task.request.retries), max_retries=MAX_RETRIES
        ) from e
    except InputError as e:
        _record(rt, kind, job_id, e.code, started, error=str(e)[:200])
        raise
    except TorchfleetError as e:
        _record(rt, kind, job_id, "error", started, error=str(e)[:200])
        raise
    except Exception as e:
        if is_connection_error(e):  # Redis went away mid-job: not the job's fault, run it again
            raise Reject(e, requeue=True) from e
        if not is_fatal_device_error(e):
            raise
        _record(rt, kind, job_id, "device_fault", started, error=str(e)[:200])
        request_replacement()  # warm shutdown; the supervisor starts a fresh process
        raise DeviceFault(f"unrecoverable device error, worker {rt.worker} is replaced: {e}") from e
    extra = infer_fields(result) if kind == "infer" else {"model": result.get("model")}
    _record(rt, kind, job_id, "success", started, **extra)
    return result


def arrive(
    task: Task, rt: Runtime, payload: Any, kind: str
) -> tuple[dict[str, Any] | None, Arrival]:
    """Admit the delivery in one round trip: the answer an earlier delivery stored, or what
    the job needs to run (cancel flag; for inference the model's registry record and the
    stored input bytes)."""
    job_id = task.request.id
    model = _model_name(payload) if kind == "infer" else None
    stored = stored_input_key(payload, job_id, rt.settings.max_payload_bytes) if model else None
    reads: list[Read] = [lambda pipe: pipe.exists(cancel_key(job_id))]
    if model is not None:
        reads.append(lambda pipe: pipe.hgetall(model_key(model)))
    if stored is not None:
        reads.append(lambda pipe: pipe.get(stored))
    admission = admit(
        rt.client, rt.settings, task.request, rt.worker, payload,
        result_key=task.backend.get_key_for_task(job_id), reads=reads,
    )  # fmt: skip
    if admission.stored is not None:
        return admission.stored, Arrival()
    replies = admission.replies
    return None, Arrival(
        cancelled=bool(replies[0]),
        model_fields=replies[1] if model is not None else None,
        stored_inputs=replies[2] if stored is not None else None,
    )


def stored_input_key(payload: Any, job_id: str, max_bytes: int) -> str | None:
    """The key of the tensor bytes an infer payload keeps in Redis, checked before reading:
    only the job's own key, declaring no more than ``max_bytes``."""
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(inputs, dict) or "key" not in inputs:
        return None  # inline (or not a tensor): nothing to read, nothing to validate twice
    try:
        tensor = TensorPayload.model_validate(inputs)
    except ValidationError:
        return None  # validation says what is wrong with it
    if tensor.key is None:
        return None
    if tensor.key != input_key(job_id):
        raise InvalidJob(f"a job reads only its own stored inputs, {input_key(job_id)}")
    if tensor.nbytes > max_bytes:
        raise InvalidJob(
            f"the stored tensor declares {tensor.nbytes} bytes, over max_payload_bytes="
            f"{max_bytes}; send fewer inputs per job or raise TORCHFLEET_MAX_PAYLOAD_BYTES"
        )
    return tensor.key


def _model_name(payload: Any) -> str | None:
    """The model an infer payload names, if it names one well enough to read its record."""
    ref = payload.get("model") if isinstance(payload, dict) else None
    try:
        return ModelRef.parse(ref).name if isinstance(ref, str) else None
    except ValueError:
        return None  # validation says what is wrong with it


def _record(
    rt: Runtime, kind: str, job_id: str, outcome: str, started: float, **fields: Any
) -> None:
    rt.count(outcome)
    fields.setdefault("worker", rt.worker)
    fields.setdefault("device", str(rt.device))
    fields["wall_ms"] = round((time.perf_counter() - started) * 1000, 3)
    # Written by the stats thread: a record never delays (or fails, or loses) its job.
    entry = stats_entry(kind=kind, job_id=job_id, outcome=outcome, **fields)
    rt.behind.add(append_record(entry, rt.settings.stats_maxlen))
    poke_heartbeat()


def _infer(job: InferJob, rt: Runtime, task: Task, arrival: Arrival) -> dict[str, Any]:
    from workers.serving import serve

    result = serve(job, rt, task.request.id, arrival.model_fields, arrival.stored_inputs)
    return result.model_dump(mode="json")


def _train(job: TrainJob, rt: Runtime, task: Task, _: Arrival) -> dict[str, Any]:
    from workers.training import execute

    return execute(job, context(task, rt)).model_dump(mode="json")


def _compress(job: CompressJob, rt: Runtime, task: Task, _: Arrival) -> dict[str, Any]:
    from workers.compression import execute

    return execute(job, context(task, rt)).model_dump(mode="json")


class InferTask(Task):
    # Celery reprs every result for its success log line, logged or not; an answer with
    # many predictions costs a walk of the whole structure, so keep the repr short.
    resultrepr_maxsize = 160

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """The answer is stored: the input bytes kept for a redelivery can go."""
        inputs = args[0].get("inputs") if args and isinstance(args[0], dict) else None
        key = input_key(task_id)
        if isinstance(inputs, dict) and inputs.get("key") == key:
            get_runtime().behind.add(lambda pipe: pipe.delete(key))


@app.task(name=TASK_INFER, bind=True, base=InferTask, throws=(InputError,), track_started=False)
def infer(self: Task, payload: Any) -> dict[str, Any]:
    return run_job(self, payload, "infer", _infer)


@app.task(name=TASK_TRAIN, bind=True, base=DropsCheckpoint, throws=(InputError,))
def train(self: Task, payload: Any) -> dict[str, Any]:
    return run_job(self, payload, "train", _train)


@app.task(name=TASK_COMPRESS, bind=True, throws=(InputError,))
def compress(self: Task, payload: Any) -> dict[str, Any]:
    return run_job(self, payload, "compress", _compress)


@app.task(name=TASK_NOOP)
def noop(payload: Any = None) -> Any:
    """Does nothing: its round trip is the queue's own cost, for `torchfleet bench`."""
    return payload


import workers.bench_tasks  # noqa: E402, F401  (the `naive` task of `torchfleet bench`)

# Task modules that build on run_job: pipeline stages, and the chord callback of job groups.
from workers import groups, pipeline  # noqa: E402, F401
