"""What a job leaves in Redis, bounded: its result's size, its stored inputs' size and life.

* A result over ``max_result_bytes`` fails the job with ``result_too_large`` (an error result
  of a few hundred bytes) instead of becoming a key of tens of megabytes.
* Inputs stored beside a message are read at most ``max_payload_bytes`` plus one byte, and
  refused when over, whatever the message declared.
* Stored inputs go when the job ends, whatever the end (success, failure, expiry, cancel,
  dead letter, refusal); they stay through a retry or a requeue, which read them again.
"""

from __future__ import annotations

import json
from typing import Any

from shared.errors import InvalidJob, ResultTooLarge
from shared.names import input_key
from workers.writebehind import WriteBehind

MIB = 1024 * 1024


def check_result_size(result: Any, max_bytes: int) -> None:
    """Refuse a result whose JSON is over ``max_bytes``, saying how to make it smaller."""
    size = len(json.dumps(result, separators=(",", ":")))
    if size > max_bytes:
        raise ResultTooLarge(
            f"the result would be {size / MIB:.1f} MiB, over max_result_bytes={max_bytes} "
            "(TORCHFLEET_MAX_RESULT_BYTES): lower top_k, or split the job into smaller ones"
        )


def check_stored_inputs(raw: bytes | None, max_bytes: int) -> None:
    """Refuse stored inputs over ``max_bytes`` (read with at most one byte more)."""
    if raw is not None and len(raw) > max_bytes:
        raise InvalidJob(
            f"the stored inputs are over max_payload_bytes={max_bytes}; split them over "
            "several jobs, or raise TORCHFLEET_MAX_PAYLOAD_BYTES"
        )


def drop_stored_inputs(behind: WriteBehind, payload: Any, job_id: str) -> None:
    """The job has ended: delete the input bytes it kept beside its message (only its own
    key; another job's key named in a hostile payload is left alone)."""
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    key = input_key(job_id)
    if isinstance(inputs, dict) and inputs.get("key") == key:
        behind.add(lambda pipe: pipe.delete(key))
