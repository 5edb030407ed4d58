"""Groups of inference jobs: validation, the chord that aggregates them, its task ids."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import redis
from celery import Celery, chord
from celery.canvas import Signature

from producers.specs import job_payload, validate_group
from producers.state import JobState, UnknownJob, read_metas
from shared.connection import refused_when_full
from shared.errors import JobFailed
from shared.jobs import AnyJob, GroupSummary, InferJob, JobGroup
from shared.names import KEY_GROUP_SUMMARY, TASK_AGGREGATE, TASK_INFER, group_key
from shared.settings import Settings


def aggregate_ids(group_id: str) -> tuple[str, str]:
    """Task ids of a group's chord callback and of its errback."""
    return f"{group_id}-aggregate", f"{group_id}-aggregate-on-error"


def send_group(app: Celery, signatures: list[Signature], group_id: str, *, aggregate: bool) -> None:
    """Send a group's jobs; with ``aggregate`` as a chord whose callback stores the summary."""
    if not aggregate:
        for signature in signatures:
            signature.apply_async()
        return
    body, errback = (
        app.signature(TASK_AGGREGATE, args=(group_id,), immutable=True, task_id=task_id)
        for task_id in aggregate_ids(group_id)
    )
    # A failed member fails the chord; the same task, as its errback, still aggregates.
    body.link_error(errback)
    chord(signatures, app=app)(body)


class _Host(Protocol):
    """What :class:`GroupJobs` needs of the client it is mixed into."""

    redis: redis.Redis
    settings: Settings
    app: Celery

    def _remember(
        self, *job_ids: str, kind: str = "job", stored: Mapping[str, bytes] | None = None
    ) -> None: ...

    def _route(self, model: AnyJob, priority: int | None) -> dict[str, Any]: ...

    def wait_state(self, job_id: str, *, timeout: float | None = None) -> JobState: ...

    def group_members(self, group_id: str) -> list[str]: ...


class GroupJobs:
    """The client's group methods: submit a group, read its members and its summaries."""

    def submit_group(
        self: _Host,
        jobs: JobGroup | Sequence[InferJob | dict[str, Any]],
        *,
        group_id: str | None = None,
        aggregate: bool = True,
    ) -> str:
        """Submit inference jobs as one group; returns the group id for :meth:`group_results`.

        With ``aggregate`` the jobs run as a Celery chord whose callback
        (``torchfleet.aggregate``) stores the group's summary inside the fleet.
        """
        group = jobs if isinstance(jobs, JobGroup) else validate_group(jobs)
        group_id = group_id or f"g-{uuid.uuid4().hex}"
        ids = [f"{group_id}-{i}" for i in range(len(group.jobs))]
        signatures = [  # built first: a job over the payload limit leaves no group behind
            self.app.signature(
                TASK_INFER,
                args=(job_payload(job, self.settings.max_payload_bytes),),
                task_id=job_id,
                **self._route(job, None),
            )
            for job, job_id in zip(group.jobs, ids, strict=True)
        ]
        record = {"job_ids": ids, "created_at": time.time()}
        with refused_when_full(f"group {group_id}"):
            self.redis.set(group_key(group_id), json.dumps(record), ex=self.settings.result_ttl_s)
            self._remember(*ids, *(aggregate_ids(group_id) if aggregate else ()))
            self._remember(group_id, kind="group")
        send_group(self.app, signatures, group_id, aggregate=aggregate)
        return group_id

    def group_members(self: _Host, group_id: str) -> list[str]:
        """The job ids of a group, or :class:`UnknownJob`."""
        raw = self.redis.get(group_key(group_id))
        if raw is None:
            raise UnknownJob(f"no group {group_id!r} (never submitted, or expired)")
        return list(json.loads(raw)["job_ids"])

    def group_results(self: _Host, group_id: str) -> GroupSummary:
        """Aggregate a group now: progress, outcomes, accuracy and latency percentiles."""
        from shared.stats import member_from_meta, summarize_group

        metas = read_metas(self.app, self.group_members(group_id))
        return summarize_group(group_id, [member_from_meta(m) for m in metas])

    def fleet_summary(self: _Host, group_id: str) -> GroupSummary | None:
        """The summary the fleet's chord callback stored, once every member finished."""
        raw = self.redis.get(f"{KEY_GROUP_SUMMARY}{group_id}")
        return GroupSummary.model_validate_json(raw) if raw else None

    def wait_fleet_summary(
        self: _Host, group_id: str, *, timeout: float | None = None
    ) -> GroupSummary:
        """Wait for the fleet's chord callback (or its errback, if a member failed)."""
        self.group_members(group_id)
        body, errback = aggregate_ids(group_id)
        state = self.wait_state(body, timeout=timeout)
        if state.status != "SUCCESS":  # the chord failed: its errback aggregates instead
            state = self.wait_state(errback, timeout=timeout)
        if state.result is None:
            raise JobFailed(errback, state.error_code or "failed", state.error or state.status)
        return GroupSummary.model_validate(state.result)

    def is_group(self: _Host, group_id: str) -> bool:
        return bool(self.redis.exists(group_key(group_id)))
