"""The Celery app and :class:`FleetTask`, the one policy every fleet task runs under.

A fleet task is a thin shell over a use case; the base class owns what is common to every
kind: admission (delivery counts, dead letters, payload limits, a stored answer for a
redelivery), validation, the deadline, cancellation, retries with backoff, device faults and
the stats record. Input errors fail at once and are never retried; transient errors are
retried with exponential backoff; a job that loses Redis waits for it and runs on in place
(:mod:`workers.outage`), and a full Redis pauses the worker and requeues the delivery; an
unrecoverable device error fails the job and replaces the worker. Every job runs watched
(:mod:`workers.limits`): past its hard time limit, or once cancelled, it is stopped even when
stuck in I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, Reject
from pydantic import ValidationError

from shared.celery_app import create_app
from shared.connection import is_redis_full
from shared.errors import (
    DeviceFault,
    InputError,
    InvalidJob,
    StaleDelivery,
    TimeLimitExceeded,
    TorchfleetError,
    TransientError,
)
from shared.jobs import AnyJob, describe_errors, parse_job
from shared.registry import JobRegistry
from shared.stats import append_record, infer_fields, model_of, stats_entry
from workers.admission import Admission, admit, job_reads
from workers.context import JobContext, ProgressFn
from workers.control import JobCancelled, check_deadline, end_cancelled
from workers.delivery import delivery
from workers.effects import fenced
from workers.faults import is_connection_error, is_fatal_device_error, request_replacement
from workers.footprint import check_result_size, drop_stored_inputs
from workers.heartbeat import poke_heartbeat
from workers.limits import OnAbandon, TimeLimit, Watch, fence_current, run_watched, time_limit
from workers.outage import through_outages
from workers.redisfull import requeue_when_room, requeued_if_full
from workers.resultstore import backend_class
from workers.runtime import Runtime, get_runtime

app = create_app(backend_class=backend_class())
MAX_RETRIES = 5
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
ERROR_CHARS = 200  # of an error message kept in a stats record


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


Execute = Callable[[Any, Runtime, "FleetTask", Admission], dict[str, Any]]


class FleetTask(Task):
    """Base of every fleet task; ``kind`` (a task option) names the job kind it runs."""

    kind = ""
    throws = (InputError,)

    def run_job(self, payload: Any, execute: Execute) -> dict[str, Any]:
        """Admit, validate and run one job under the fleet's policy; record its outcome."""
        rt = get_runtime()
        job_id, kind = self.request.id, self.kind
        model = model_of(payload)  # on every record, failures included
        started = time.perf_counter()
        try:
            with delivery(self, rt, payload) as admission:
                if admission.stored is not None:  # a redelivery of a finished job: its answer
                    return admission.stored
                job = validate(payload, kind)
                check_deadline(job, job_id)
                if admission.cancelled:
                    raise JobCancelled(f"job {job_id} was cancelled before it started")
                limit = time_limit(rt.settings, kind, job.time_limit_s)
                answer = self.answer_for(rt, job_id, started, model, payload)
                result = self.watched(
                    limit,
                    job_id,
                    answer,
                    lambda: through_outages(rt, job_id, lambda: execute(job, rt, self, admission)),
                )
                check_result_size(result, rt.settings.max_result_bytes)
        except JobCancelled:
            self.record(rt, job_id, "cancelled", started, model=model)
            self.drop_checkpoint(rt, job_id)  # nothing will resume it
            drop_stored_inputs(rt.behind, payload, job_id)
            end_cancelled(self)
        except StaleDelivery:  # overtaken by a newer delivery: leave its answer alone
            self.record(rt, job_id, "stale", started)
            raise Ignore() from None
        except TransientError as e:
            self.record(rt, job_id, "retry", started, model=model, error=e.code)
            self.retry_later(e)
        except InputError as e:
            self.record(rt, job_id, e.code, started, model=model, error=str(e)[:ERROR_CHARS])
            if isinstance(e, TimeLimitExceeded):
                self.drop_checkpoint(rt, job_id)
            raise
        except TorchfleetError as e:
            self.record(rt, job_id, "error", started, model=model, error=str(e)[:ERROR_CHARS])
            raise
        except Exception as e:
            if not self.is_fault(rt, e):
                raise
            self.record(
                rt, job_id, "device_fault", started, model=model, error=str(e)[:ERROR_CHARS]
            )
            raise DeviceFault(
                f"unrecoverable device error, worker {rt.worker} is replaced: {e}"
            ) from e
        extra = infer_fields(result) if kind == "infer" else {"model": model}
        self.record(rt, job_id, "success", started, **extra)
        return result

    def admit(
        self,
        rt: Runtime,
        payload: Any,
        *,
        token: str | None = None,
        mark: bool = True,
        cancel_id: str | None = None,
    ) -> Admission:
        """This delivery's admission, reading what the job needs in the same round trip
        (the cancel flag of ``cancel_id``: the job's own by default)."""
        job_id = self.request.id
        return admit(
            rt.client, rt.settings, self.request, rt.worker, payload,
            result_key=self.backend.get_key_for_task(job_id),
            reads=job_reads(
                payload, cancel_id or job_id, self.kind, rt.settings.max_payload_bytes
            ),
            token=token, mark=mark,
        )  # fmt: skip

    def watched(
        self, limit: TimeLimit, cancel_id: str, on_abandon: OnAbandon, fn: Callable[[], Any]
    ) -> Any:
        """``fn()`` stopped past ``limit`` or once ``cancel_id`` is cancelled, even when stuck
        (:mod:`workers.limits`); ``on_abandon`` answers for a job that could not stop."""
        return run_watched(Watch(self.request.id, cancel_id, limit, on_abandon), fn)

    def answer_for(
        self, rt: Runtime, job_id: str, started: float, model: Any, payload: Any
    ) -> OnAbandon:
        """What the watchdog stores for a job of this task stuck past its stop: its answer,
        and no checkpoint or stored inputs left behind (its stuck thread has its inputs)."""

        def answer(error: TorchfleetError) -> None:
            self.record(
                rt, job_id, error.code, started, model=model, error=str(error)[:ERROR_CHARS]
            )
            self.drop_checkpoint(rt, job_id)
            if isinstance(error, JobCancelled):
                self.backend.mark_as_revoked(job_id, "cancelled")
            else:
                self.backend.mark_as_failure(job_id, error)
            drop_stored_inputs(rt.behind, payload, job_id)

        return answer

    def drop_checkpoint(self, rt: Runtime, job_id: str) -> None:
        """A train job that ended for good (cancelled, out of time) leaves no checkpoint."""
        if self.kind == "train":
            rt.store.discard_checkpoint(job_id)

    def retry_later(self, error: TransientError) -> NoReturn:
        """Retry after the backoff for this attempt (at most :data:`MAX_RETRIES` times)."""
        if is_redis_full(error):  # a registry write refused for memory, say
            requeue_when_room(error)
        with requeued_if_full():  # a full Redis refuses the retry's message too
            raise self.retry(
                exc=error, countdown=backoff_s(self.request.retries), max_retries=MAX_RETRIES
            ) from error

    def is_fault(self, rt: Runtime, error: Exception) -> bool:
        """Not the job's fault: a Redis that stayed away (``through_outages`` waited for it)
        requeues the delivery (raises ``Reject``); an unrecoverable device error asks for a
        new worker process and returns True."""
        if is_connection_error(error):  # Redis went away mid-job and did not come back
            raise Reject(error, requeue=True) from error
        if is_redis_full(error):  # Redis refused a write for memory: run it again later
            requeue_when_room(error)
        if not is_fatal_device_error(error):
            return False
        request_replacement()  # warm shutdown; the supervisor starts a fresh process
        return True

    def record(self, rt: Runtime, job_id: str, outcome: str, started: float, **fields: Any) -> None:
        """Count the outcome and queue the job's stats record (never delays the answer)."""
        rt.count(outcome)
        fields.setdefault("worker", rt.worker)
        fields.setdefault("device", str(rt.device))
        fields["wall_ms"] = round((time.perf_counter() - started) * 1000, 3)
        # Written by the stats thread: a record never delays (or fails, or loses) its job.
        entry = stats_entry(kind=self.kind, job_id=job_id, outcome=outcome, **fields)
        rt.behind.add(append_record(entry, rt.settings.stats_maxlen))
        poke_heartbeat()

    def context(self, rt: Runtime, job_id: str, progress: ProgressFn, cancel_id: str) -> JobContext:
        """What the use case gets: where to run and keep things, the registry as this delivery
        may write to it (fenced by a new token, and by ``cancel_id``'s cancel flag), and a
        progress report that stops the job when that fence is crossed."""
        registry = self.job_registry(rt, job_id, cancel_id)
        return JobContext(
            job_id=job_id,
            device=rt.device,
            worker=rt.worker,
            store=rt.store,
            registry=registry,
            settings=rt.settings,
            progress=fenced(progress, registry),
        )

    def job_context(self, rt: Runtime) -> JobContext:
        """The context of this task's own job; progress goes to its id."""

        def progress(meta: dict[str, Any]) -> None:
            self.update_state(state="PROGRESS", meta=meta)

        return self.context(rt, self.request.id, progress, self.request.id)

    def job_registry(self, rt: Runtime, fence_id: str, cancel_id: str) -> JobRegistry:
        """The registry as this delivery may write to it: a new fencing token for
        ``fence_id``, which the watchdog advances when it stops the job."""
        fence_current(fence_id)
        return rt.registry.for_job(fence_id, cancel_id=cancel_id)
