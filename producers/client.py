"""The Python client: validate and submit jobs, follow their progress, read their results.

It needs only Redis and the torch-free contracts in ``shared``::

    from producers import Client
    client = Client()
    job_id = client.submit_train(model_name="digits-cnn", epochs=5)
    result = client.wait(job_id, on_progress=print)
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import redis
from celery import Celery
from pydantic import ValidationError

from producers import waiting
from producers.grouping import GroupJobs
from producers.lane import LaneClient
from producers.ops import KIND_QUEUES, fleet_status, stats_records, unserved_queues
from producers.specs import check_input_bytes, job_payload, stored_bytes, validate_job
from producers.state import FINISHED, JobState, ProgressFn, UnknownJob, read_metas, state_from_meta
from producers.waiting import NoWorker, WorkerWatch
from shared.celery_app import create_app
from shared.connection import redis_client, refused_when_full
from shared.errors import InvalidJob, JobFailed
from shared.jobrecord import claim_job_id
from shared.jobs import (
    AnyJob,
    CompressJob,
    InferJob,
    PipelineJob,
    describe_errors,
)
from shared.names import (
    DEVICE_KINDS,
    TASK_COMPRESS,
    TASK_INFER,
    TASK_PIPELINE,
    TASK_QUEUES,
    TASK_TRAIN,
    cancel_key,
    device_queue,
    input_key,
    job_key,
    transport_priority,
)
from shared.registry import ModelRegistry
from shared.settings import Settings, get_settings

__all__ = ["FINISHED", "Client", "JobState", "NoWorker", "UnknownJob", "read_metas"]

TASK_FOR_KIND = {
    "train": TASK_TRAIN,
    "compress": TASK_COMPRESS,
    "infer": TASK_INFER,
    "pipeline": TASK_PIPELINE,
}


class Client(GroupJobs):
    """Submit, wait for and read jobs on a torchfleet fleet."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.app: Celery = create_app(self.settings)
        self.redis: redis.Redis = redis_client(self.settings)
        self.registry = ModelRegistry(self.redis)
        self.lane = LaneClient(self.redis, self.settings)  # online requests (producers/lane.py)

    # ------------------------------------------------------------ submit
    def submit(
        self,
        job: AnyJob | dict[str, Any],
        *,
        job_id: str | None = None,
        priority: int | None = None,
        stored: Mapping[str, bytes] | None = None,
    ) -> str:
        """Validate and enqueue any job; returns its id (the Celery task id).

        ``priority`` (0 normal .. 9 most urgent; an inference job's own field by default) picks
        the lane; a job whose ``device`` is cpu or cuda goes to that device's queue.
        ``stored``: bytes the job refers to by key (large tensors), written with the job's
        record before its message is sent, and deleted when the job ends. A job over
        ``max_payload_bytes`` raises :class:`InvalidJob`; a full Redis, :class:`RedisFull`.
        """
        model = job if isinstance(job, AnyJob) else validate_job(job)
        check_input_bytes(stored_bytes(stored), self.settings.max_payload_bytes)
        source = model.source if isinstance(model, PipelineJob | CompressJob) else None
        if source is not None:
            self.registry.resolve(source)  # a missing source model fails here, not later
        job_id = job_id or uuid.uuid4().hex
        payload = job_payload(model, self.settings.max_payload_bytes)
        with refused_when_full(f"job {job_id}"):
            self._send(model, job_id, payload, priority, stored)
        return job_id

    def _send(
        self,
        model: AnyJob,
        job_id: str,
        payload: dict[str, Any],
        priority: int | None,
        stored: Mapping[str, bytes] | None,
    ) -> None:
        # The id's owner and its job record, then the bytes it refers to: before any worker
        # can see the message.
        claim_job_id(
            self.redis, job_id, payload, self.settings.result_ttl_s, stored, kind=model.kind
        )
        try:
            if stored:
                self._remember(stored=stored)
            self.app.send_task(
                TASK_FOR_KIND[model.kind],
                args=[payload],
                task_id=job_id,
                retry=True,
                retry_policy={"max_retries": 10, "interval_start": 0.1, "interval_step": 0.5},
                **self._route(model, priority),
            )
        except BaseException:  # not sent: leave no record of a job that does not exist
            with contextlib.suppress(redis.RedisError):
                self.redis.delete(job_key(job_id), *(stored or {}))
            raise

    def _route(self, model: AnyJob, priority: int | None) -> dict[str, Any]:
        chosen = priority if priority is not None else getattr(model, "priority", 0)
        options: dict[str, Any] = {"priority": transport_priority(chosen)}
        if model.device in DEVICE_KINDS:
            options["queue"] = device_queue(TASK_QUEUES[TASK_FOR_KIND[model.kind]], model.device)
        return options

    def _remember(
        self, *job_ids: str, kind: str = "job", stored: Mapping[str, bytes] | None = None
    ) -> None:
        """Note ids as submitted (a SET each, expiring with results): unknown vs queued; and
        write the bytes a job refers to, in the same round trip."""
        ttl = self.settings.result_ttl_s
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.set(job_key(job_id), kind, ex=ttl)
            for key, data in (stored or {}).items():
                pipe.set(key, data, ex=ttl)
            pipe.execute()

    def submit_pipeline(self, *, job_id: str | None = None, **spec: Any) -> str:
        """Train (or take ``source``), compress, gate, promote, warm: a :class:`PipelineJob`."""
        return self.submit(validate_job({"kind": "pipeline", **spec}), job_id=job_id)

    def submit_train(self, *, job_id: str | None = None, **spec: Any) -> str:
        return self.submit(validate_job({"kind": "train", **spec}), job_id=job_id)

    def submit_compress(self, *, job_id: str | None = None, **spec: Any) -> str:
        return self.submit(validate_job({"kind": "compress", **spec}), job_id=job_id)

    def submit_infer(
        self, model: str, inputs: Any, *, job_id: str | None = None, **options: Any
    ) -> str:
        """``inputs``: a numpy array or nested lists of numbers, image files (paths) or their
        bytes (PNG/JPEG, one or a list), a TensorPayload, or a list of ImagePayload. An array
        larger than ``inline_input_bytes`` travels as raw bytes stored beside the message
        rather than as base64 inside it."""
        from producers.encoding import encode_images, is_image_list, tensor_bytes, tensor_payload
        from shared.jobs import ImagePayload, TensorPayload

        job_id = job_id or uuid.uuid4().hex
        stored: dict[str, bytes] = {}
        if is_image_list(inputs):
            inputs = encode_images(list(inputs) if isinstance(inputs, list | tuple) else [inputs])
        is_payload = isinstance(inputs, TensorPayload) or (
            isinstance(inputs, list) and bool(inputs) and isinstance(inputs[0], ImagePayload)
        )
        try:
            if not is_payload:
                raw, dtype, shape = tensor_bytes(inputs)
                check_input_bytes(len(raw), self.settings.max_payload_bytes)
                key = input_key(job_id) if len(raw) > self.settings.inline_input_bytes else None
                inputs = tensor_payload(raw, dtype, shape, key=key)
                if key is not None:
                    stored[key] = raw
            job = InferJob(model=model, inputs=inputs, **options)
        except ValidationError as e:
            raise InvalidJob(f"invalid infer job: {describe_errors(e)}") from None
        return self.submit(job, job_id=job_id, stored=stored)

    # ------------------------------------------------------------- read
    def state(self, job_id: str) -> JobState:
        """The job's current state from the result backend; :class:`UnknownJob` for an id
        that was never submitted (or whose record expired), PENDING for a queued one."""
        state = state_from_meta(job_id, self.app.backend.get_task_meta(job_id))
        if state.status == "PENDING" and self._kind(job_id) is None:
            raise UnknownJob(f"no job {job_id!r} was submitted (or its record expired)")
        return state

    def _kind(self, job_id: str) -> str | None:
        return waiting.record_kind(self.redis, job_id)

    def _watch(self, kind: str | None) -> WorkerWatch:
        queue = KIND_QUEUES.get(kind or "")
        return WorkerWatch(self.redis, queue, self.settings.no_worker_grace_s)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Block until the job finishes; its result, or :class:`JobFailed` / :class:`JobTimeout`
        (:class:`NoWorker` when no live worker consumes its queue) / :class:`UnknownJob`.

        ``timeout`` defaults to ``TORCHFLEET_WAIT_TIMEOUT_S``.
        """
        state = self.wait_state(job_id, timeout=timeout, on_progress=on_progress)
        if state.status != "SUCCESS" or state.result is None:
            raise JobFailed(job_id, state.error_code or "failed", state.error or state.status)
        return state.result

    def wait_state(
        self, job_id: str, *, timeout: float | None = None, on_progress: ProgressFn | None = None
    ) -> JobState:
        """The job's final state: pub/sub, or polling when ``on_progress`` wants each update."""
        limit = self.settings.wait_timeout_s if timeout is None else timeout
        kind = self._kind(job_id)
        if kind is None and (state := self.state(job_id)).finished:  # UnknownJob if unknown
            return state
        watch = self._watch(kind)
        if on_progress is None:
            return waiting.wait_pubsub(self.app, job_id, limit, watch, lambda: self.state(job_id))
        return waiting.wait_polling(job_id, limit, watch, lambda: self.state(job_id), on_progress)

    def as_completed(
        self, job_ids: Sequence[str], *, timeout: float | None = None
    ) -> Iterator[JobState]:
        """Each job's final state as it finishes (finished or failed alike), fastest first."""
        kinds = waiting.record_kinds(self.redis, self.app, job_ids)
        watches = {kind: self._watch(kind) for kind in set(kinds.values())}
        limit = self.settings.wait_timeout_s if timeout is None else timeout
        by_id = {job_id: watches[kind] for job_id, kind in kinds.items()}
        return waiting.as_completed(self.app, list(job_ids), limit, by_id)

    def wait_many(self, job_ids: Sequence[str], *, timeout: float | None = None) -> list[JobState]:
        """The final states of many jobs, in the order given; one deadline for all."""
        states = {s.job_id: s for s in self.as_completed(job_ids, timeout=timeout)}
        return [states[job_id] for job_id in job_ids]

    def unserved_queues(self, job: AnyJob | Mapping[str, Any]) -> list[str]:
        """The queues ``job`` needs that no live worker consumes (from the heartbeats)."""
        spec = job.model_dump() if isinstance(job, AnyJob) else dict(job)
        return unserved_queues(self.redis, spec)

    def cancel(self, job_id: str) -> JobState:
        """Cancel a queued or running job; its state before the cancel.

        A queued job is dropped when a worker receives it; a running one is stopped by its
        worker within a second, even one stuck in I/O. Unknown ids raise
        :class:`UnknownJob`; a finished job is left as it is.
        """
        if self._kind(job_id) is None:
            raise UnknownJob(f"no job {job_id!r} was submitted (or its record expired)")
        state = self.state(job_id)
        if state.finished:
            return state
        self.redis.set(cancel_key(job_id), "1", ex=self.settings.result_ttl_s)
        self.app.control.revoke(job_id, terminate=False)
        return state

    # ------------------------------------------------------------ operations
    def status(self) -> dict[str, Any]:
        """Live workers (heartbeat records), queue depths per priority lane, dead letters,
        and the jobs in flight (who holds each; when a dead worker's come back)."""
        return fleet_status(
            self.redis,
            visibility_timeout_s=self.settings.visibility_timeout_s,
            restore_interval_s=self.settings.restore_interval_s,
        )

    def stats_records(
        self, *, since_s: float | None = None, model: str | None = None
    ) -> list[dict[str, Any]]:
        """Records of the stats stream from ``since_s`` seconds ago (all kept if None)."""
        return stats_records(self.redis, since_s=since_s, model=model)

    def stats(
        self, *, since_s: float | None = None, model: str | None = None
    ) -> list[dict[str, Any]]:
        """Count, error rate, throughput and latency percentiles by model/variant/device/worker."""
        from shared.stats import group_stats

        return group_stats(self.stats_records(since_s=since_s, model=model), window_s=since_s)

    # ------------------------------------------------------------ online lane (issue 12)
    def infer(self, model: str, inputs: Any, **options: Any) -> dict[str, Any]:
        """One online request through the lane; its answer (see :meth:`LaneClient.infer`)."""
        return self.lane.infer(model, inputs, **options)

    def infer_async(self, model: str, inputs: Any, **options: Any) -> Future[dict[str, Any]]:
        """One online request through the lane; a future of its answer."""
        return self.lane.infer_async(model, inputs, **options)

    def close(self) -> None:
        self.lane.close()
        self.redis.close()
        self.app.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
