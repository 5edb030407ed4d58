"""Admission: gate each delivery of a job before it runs, in one round trip to Redis.

Celery on Redis delivers at least once: a job whose worker dies is restored to its queue
after the visibility timeout and delivered again. Admission keeps that from turning into a
loss, a loop or a silent duplicate:

* every delivery of a job id is counted in ``deliveries:{id}`` (``delivered``,
  ``executed``), and the running delivery leaves a token there (``running``) that its end
  removes (:func:`settle`, whatever the outcome: an answer, an error, a retry, a lost Redis);
* a token still there when the job is delivered again means the worker died while running
  it: that, and only that, is a ``crash``. A delivery that never started (prefetched), a
  retry, a Redis outage cost the job nothing;
* a job with a crash is a *suspect*: it runs alone on its next worker (:mod:`workers.gate`),
  and its token says so (``solo``). A job is dead-lettered once ``settings.max_deliveries``
  crashes are behind it and the last one happened while it ran alone, so the jobs that ran
  beside a poison job are never blamed for it (a job that never gets to run alone goes after
  twice as many);
* ``executed`` counts the deliveries that actually computed, so duplicates are measurable;
* a payload larger or deeper than the limits is refused before validation;
* a redelivery of a job whose result is stored is answered from that result;
* the same transaction reads what the job needs to start (its cancel flag; for inference
  the model's registry record and the stored input bytes), named, not by position.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import ValidationError
from redis.client import Pipeline

from shared.deadletter import CRASHES, HOLDER, dead_letter, entry_for
from shared.errors import DeadLettered, InvalidJob
from shared.jobs import ModelRef, TensorPayload
from shared.names import cancel_key, deliveries_key, input_key, model_key
from shared.payload import check_payload

Read = Callable[[Pipeline], object]
READ_CANCELLED = "cancelled"
READ_MODEL = "model_fields"
READ_INPUTS = "stored_inputs"
RUNNING = "running"  # field of deliveries:{id}: the token of the delivery running the job
SOLO = "solo"  # field of deliveries:{id}: that token again when the delivery runs alone
# One delivery's admission: nothing is counted for a job whose result is stored (cjson reads
# the record as the Python side does); a token left by the previous delivery is a crash.
ADMIT = f"""
local raw = redis.call('GET', KEYS[2])
if raw then
  local ok, meta = pcall(cjson.decode, raw)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
    return {{raw, 0, 0, 0, 0}}
  end
end
local previous = redis.call('HGET', KEYS[1], '{RUNNING}')
local solo = 0
if previous and previous ~= ARGV[1] then
  redis.call('HINCRBY', KEYS[1], '{CRASHES}', 1)
  if redis.call('HGET', KEYS[1], '{SOLO}') == previous then solo = 1 end
  redis.call('HDEL', KEYS[1], '{RUNNING}', '{SOLO}')
end
local crashes = tonumber(redis.call('HGET', KEYS[1], '{CRASHES}') or '0')
local delivered = redis.call('HINCRBY', KEYS[1], 'delivered', 1)
redis.call('HINCRBY', KEYS[1], 'executed', 1)
redis.call('HSET', KEYS[1], '{HOLDER}', ARGV[2])
local marked = 0
if ARGV[4] == '1' and crashes == 0 then
  redis.call('HSET', KEYS[1], '{RUNNING}', ARGV[1])
  marked = 1
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {{'', delivered, crashes, solo, marked}}
"""
SETTLE = f"""
if redis.call('HGET', KEYS[1], '{RUNNING}') == ARGV[1] then
  redis.call('HDEL', KEYS[1], '{RUNNING}', '{SOLO}')
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Admission:
    """What the one round trip of :func:`admit` learned about a delivery."""

    stored: dict[str, Any] | None = None  # an earlier delivery's result: answer with it
    replies: Mapping[str, Any] = field(default_factory=dict)  # the replies to ``reads``, by name
    token: str = ""  # this delivery's token in ``deliveries:{id}``
    crashes: int = 0  # earlier deliveries whose worker died running the job
    marked: bool = False  # the token is in place (else :func:`mark_running` puts it there)

    @property
    def suspect(self) -> bool:
        """A worker died under this job before: it runs alone."""
        return self.crashes > 0

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
    token: str | None = None,
    mark: bool = True,
) -> Admission:
    """Gate one delivery before it runs, in one round trip to Redis: count it, count a crash
    if the previous delivery's token is still there, dead-letter a job that crashed too often,
    refuse an oversized payload, count it as executed.

    ``request`` is the Celery task request (id, task name, args). With ``result_key``, a job
    whose result an earlier delivery stored is not run again (its counts are left as they
    were). ``reads`` queue more commands on the same transaction (the cancel flag, the model's
    registry record...), their replies kept under their names. ``token`` names this delivery
    (a new one if None); with ``mark`` it is put in place at once, unless the job is a suspect
    (it is marked once it runs alone, :func:`mark_running`). End the delivery with
    :func:`settle`.
    """
    key = deliveries_key(request.id)
    ttl = settings.result_ttl_s
    try:
        check_payload(payload, settings.max_payload_bytes)
    except InvalidJob:
        count_delivery(client, request.id, ttl)
        raise
    token = token or uuid.uuid4().hex
    reads = reads or {}
    with client.pipeline(transaction=True) as pipe:
        pipe.eval(ADMIT, 2, key, result_key or "", token, worker, ttl, "1" if mark else "0")
        for read in reads.values():
            read(pipe)
        replies = pipe.execute()
    raw, _, crashes, solo, marked = replies[0]
    stored = _succeeded(raw or None)
    if stored is not None:  # a redelivery of a finished job: neither delivered nor executed
        return Admission(stored=stored, token=token, marked=bool(marked))
    if doomed(int(crashes), bool(solo), settings.max_deliveries):
        client.hincrby(key, "executed", -1)
        entry = entry_for(
            request.id,
            request.task,
            request.args,
            int(crashes) + 1,
            settings.max_deliveries,
            worker,
            delivery_info=getattr(request, "delivery_info", None),
        )
        dead_letter(client, entry)
        raise DeadLettered(
            f"job {request.id} {entry.reason}; it is in the dead-letter list: inspect it with "
            "`torchfleet deadletter list`, requeue it with `torchfleet deadletter requeue`"
        )
    admission = Admission(
        replies=dict(zip(reads, replies[1:], strict=True)),
        token=token,
        crashes=int(crashes),
        marked=bool(marked),
    )
    if admission.cancelled:  # dropped before it starts: delivered, never executed
        client.hincrby(key, "executed", -1)
    return admission


def doomed(crashes: int, last_alone: bool, max_deliveries: int) -> bool:
    """Dead-letter a job after ``max_deliveries`` crashes, the last of them while it ran
    alone (it killed its worker by itself); after twice as many if it never ran alone."""
    if crashes < max_deliveries:
        return False
    return last_alone or crashes >= 2 * max_deliveries


def mark_running(client: redis.Redis, job_id: str, token: str, *, alone: bool, ttl_s: int) -> None:
    """Put a delivery's token in place once it really starts (``alone``: nothing else runs
    beside it in its worker, so a death now is its own)."""
    key = deliveries_key(job_id)
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(key, RUNNING, token)
        if alone:
            pipe.hset(key, SOLO, token)
        else:
            pipe.hdel(key, SOLO)
        pipe.expire(key, ttl_s)
        pipe.execute()


def settle(client: redis.Redis | Pipeline, job_id: str, token: str) -> Any:
    """End a delivery: remove its token (if a newer delivery has not replaced it), so that
    the next delivery of the job does not count it as a crash. 1 when it was removed."""
    return client.eval(SETTLE, 1, deliveries_key(job_id), token)


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
