"""Admission: gate each delivery of a job before it runs, in one round trip to Redis.

Celery on Redis delivers at least once: a job whose worker dies is restored to its queue
after the visibility timeout and delivered again. Admission keeps that from turning into a
loss, a loop or a silent duplicate:

* every delivery of a job id is counted in ``deliveries:{id}`` (``delivered``,
  ``executed``); past ``settings.max_deliveries`` the job goes to the dead-letter list
  instead of running again (a poison job that kills its worker would otherwise loop);
* ``executed`` counts the deliveries that actually computed, so duplicates are measurable;
* a payload larger or deeper than the limits is refused before validation;
* a redelivery of a job whose result is stored is answered from that result;
* the same transaction reads what the job needs to start (its cancel flag; for inference
  the model's registry record and the stored input bytes), named, not by position.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import ValidationError
from redis.client import Pipeline

from shared.deadletter import HOLDER, dead_letter, entry_for
from shared.errors import DeadLettered, InvalidJob
from shared.jobs import ModelRef, TensorPayload
from shared.names import cancel_key, deliveries_key, input_key, model_key

MAX_JSON_DEPTH = 32
Read = Callable[[Pipeline], object]
READ_CANCELLED = "cancelled"
READ_MODEL = "model_fields"
READ_INPUTS = "stored_inputs"


@dataclass(frozen=True)
class Admission:
    """What the one round trip of :func:`admit` learned about a delivery."""

    stored: dict[str, Any] | None = None  # an earlier delivery's result: answer with it
    replies: Mapping[str, Any] = field(default_factory=dict)  # the replies to ``reads``, by name

    @property
    def cancelled(self) -> bool:
        return bool(self.replies.get(READ_CANCELLED))

    @property
    def model_fields(self) -> dict[Any, Any] | None:
        """The registry hash of the model an infer job names (read with the admission)."""
        return self.replies.get(READ_MODEL)

    @property
    def stored_inputs(self) -> bytes | None:
        """The tensor bytes an infer job keeps beside its message (None: there are none)."""
        return self.replies.get(READ_INPUTS) or None  # GETRANGE answers b"" for no key


def count_delivery(client: redis.Redis, job_id: str, ttl_s: int) -> int:
    """Count one more delivery of ``job_id``; returns how many there have been."""
    with client.pipeline(transaction=True) as pipe:
        pipe.hincrby(deliveries_key(job_id), "delivered", 1)
        pipe.expire(deliveries_key(job_id), ttl_s)
        count, _ = pipe.execute()
    return int(count)


def admit(
    client: redis.Redis,
    settings: Any,
    request: Any,
    worker: str,
    payload: Any,
    *,
    result_key: str | bytes | None = None,
    reads: Mapping[str, Read] | None = None,
) -> Admission:
    """Gate one delivery before it runs, in one round trip to Redis: count it, dead-letter
    it if it came too often, refuse an oversized payload, count it as executed.

    ``request`` is the Celery task request (id, task name, args, retries). Retries that the
    task asked for itself (transient errors) are not held against the job. With
    ``result_key``, a job whose result an earlier delivery stored is not run again (its
    counts are left as they were). ``reads`` queue more commands on the same transaction
    (the cancel flag, the model's registry record...), their replies kept under their names.
    """
    key = deliveries_key(request.id)
    ttl = settings.result_ttl_s
    try:
        check_payload(payload, settings.max_payload_bytes)
    except InvalidJob:
        count_delivery(client, request.id, ttl)
        raise
    reads = reads or {}
    with client.pipeline(transaction=True) as pipe:
        pipe.get(result_key or "")  # the empty key never exists
        pipe.hincrby(key, "delivered", 1)
        pipe.hincrby(key, "executed", 1)  # the common case; undone below where it did not run
        pipe.hset(key, HOLDER, worker)  # who took it last: `status` names a dead holder
        pipe.expire(key, ttl)
        own = len(pipe)  # the replies to the caller's reads come after these
        for read in reads.values():
            read(pipe)
        replies = pipe.execute()
    stored = _succeeded(replies[0])
    if stored is not None:  # a redelivery of a finished job: neither delivered nor executed
        with client.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "delivered", -1)
            pipe.hincrby(key, "executed", -1)
            pipe.execute()
        return Admission(stored=stored)
    unexplained = int(replies[1]) - (request.retries or 0)
    if unexplained > settings.max_deliveries:
        client.hincrby(key, "executed", -1)
        entry = entry_for(
            request.id, request.task, request.args, unexplained, settings.max_deliveries, worker
        )
        dead_letter(client, entry)
        raise DeadLettered(
            f"job {request.id} {entry.reason}; it is in the dead-letter list: inspect it with "
            "`torchfleet deadletter list`, requeue it with `torchfleet deadletter requeue`"
        )
    return Admission(replies=dict(zip(reads, replies[own:], strict=True)))


def job_reads(payload: Any, job_id: str, kind: str, max_bytes: int) -> dict[str, Read]:
    """What a job needs read before it starts: its cancel flag; for inference, the model's
    registry record and the stored input bytes (each only when the payload names them)."""
    reads: dict[str, Read] = {READ_CANCELLED: lambda pipe: pipe.exists(cancel_key(job_id))}
    model = model_name(payload) if kind == "infer" else None
    if model is None:
        return reads
    reads[READ_MODEL] = lambda pipe: pipe.hgetall(model_key(model))
    stored = stored_input_key(payload, job_id, max_bytes)
    if stored is not None:  # never more than the cap (and one byte to tell it was over)
        reads[READ_INPUTS] = lambda pipe: pipe.getrange(stored, 0, max_bytes)
    return reads


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


def model_name(payload: Any) -> str | None:
    """The model an infer payload names, if it names one well enough to read its record."""
    ref = payload.get("model") if isinstance(payload, dict) else None
    try:
        return ModelRef.parse(ref).name if isinstance(ref, str) else None
    except ValueError:
        return None  # validation says what is wrong with it


def _succeeded(raw: bytes | str | None) -> dict[str, Any] | None:
    """The result in a result-backend record, if the record says SUCCESS."""
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    result = meta.get("result") if isinstance(meta, dict) else None
    return dict(result) if meta.get("status") == "SUCCESS" and isinstance(result, dict) else None


def check_payload(payload: Any, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse a job payload over ``max_bytes`` (approximate JSON size) or nested too deeply.

    Walks the decoded JSON without recursion, so a hostile nesting cannot blow the stack.
    """
    size = 0
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise InvalidJob(f"the job nests deeper than {max_depth} levels")
        if isinstance(value, dict):
            size += 2
            for key, item in value.items():
                size += len(str(key)) + 4
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            size += 2
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            size += len(value) + 2
        else:
            size += 8
        if size > max_bytes:
            raise InvalidJob(
                f"the job is larger than max_payload_bytes={max_bytes}; send fewer inputs "
                "per job or raise TORCHFLEET_MAX_PAYLOAD_BYTES"
            )
