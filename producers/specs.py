"""Job specs on their way out: validated into the contracts, dumped as the tasks' JSON."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from shared.errors import InvalidJob
from shared.jobs import AnyJob, InferJob, JobGroup, describe_errors, parse_job
from shared.payload import check_payload


def validate_job(spec: dict[str, Any]) -> AnyJob:
    """Any job spec as its contract model, or :class:`InvalidJob` naming what is wrong."""
    try:
        return parse_job(spec)
    except ValidationError as e:
        raise InvalidJob(f"invalid job: {describe_errors(e)}") from None


def job_payload(model: AnyJob, max_bytes: int) -> dict[str, Any]:
    """The JSON a task receives; an inference job is stamped with its submission time. One
    over ``max_bytes`` (inline images or tensors, say) is refused here, as a worker would."""
    if isinstance(model, InferJob) and model.submitted_at is None:
        model = model.model_copy(update={"submitted_at": time.time()})
    payload = model.model_dump(mode="json", exclude_none=True)
    check_payload(payload, max_bytes)
    return payload


def validate_group(jobs: Sequence[InferJob | dict[str, Any]]) -> JobGroup:
    """Inference jobs (models or dicts) as one validated :class:`JobGroup`."""
    try:
        return JobGroup.model_validate({"jobs": [as_dict(j) for j in jobs]})
    except ValidationError as e:
        raise InvalidJob(f"invalid group: {describe_errors(e)}") from None


def as_dict(job: InferJob | dict[str, Any]) -> dict[str, Any]:
    """A job as the plain dict a group validates."""
    return job.model_dump(mode="json") if isinstance(job, InferJob) else job


def check_input_bytes(size: int, max_bytes: int) -> None:
    """Refuse inputs over ``max_payload_bytes`` here, before anything is written to Redis
    (workers refuse them too, after they took Redis's memory)."""
    if size > max_bytes:
        raise InvalidJob(
            f"the job's inputs are {size} bytes, over max_payload_bytes={max_bytes}; split "
            "them over several jobs, or raise TORCHFLEET_MAX_PAYLOAD_BYTES (for the workers too)"
        )


def stored_bytes(stored: Mapping[str, bytes] | None) -> int:
    """How many bytes a job stores beside its message."""
    return sum(len(data) for data in (stored or {}).values())
