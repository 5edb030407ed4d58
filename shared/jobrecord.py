"""Job ids are unique: the first payload submitted under an id owns it.

At submit the client records a digest of the job's payload (and of any bytes stored beside
it) under ``torchfleet:job-digest:{id}``, with ``SET NX``: the same job submitted again under
its id (a retry after a lost reply, a reconcile) is accepted, a different one is refused with
:class:`JobIdReused` instead of being answered with the first job's result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import redis

from shared.errors import JobIdReused
from shared.names import job_digest_key, job_key

# KEYS: the digest key, the job record; ARGV: digest, TTL, the job's kind. The job record
# (unknown vs queued) is written in the same round trip, unless the id belongs to another job.
CLAIM_SCRIPT = """
local old = redis.call('GET', KEYS[1])
if old and old ~= ARGV[1] then return old end
if not old then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[2])
return old or false
"""
VOLATILE_FIELDS = frozenset({"submitted_at"})  # set by the producer at each submission


def payload_digest(payload: Mapping[str, Any], stored: Mapping[str, bytes] | None = None) -> str:
    """sha256 of the payload's canonical JSON (without per-submission fields) and of the
    bytes it refers to by key."""
    document = {k: v for k, v in payload.items() if k not in VOLATILE_FIELDS}
    digest = hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode())
    for key in sorted(stored or {}):
        digest.update(key.encode())
        digest.update(hashlib.sha256((stored or {})[key]).digest())
    return digest.hexdigest()


def claim_job_id(
    client: redis.Redis,
    job_id: str,
    payload: Mapping[str, Any],
    ttl_s: int,
    stored: Mapping[str, bytes] | None = None,
    *,
    kind: str = "job",
) -> bool:
    """Record ``payload`` as the job ``job_id`` names, with its job record (``kind``), or refuse
    a different one already there; whether the id is new.

    One atomic script (``SET NX`` + ``GET``, which Redis 6 cannot combine in one ``SET``): two
    clients racing for a new id cannot both win.
    """
    digest = payload_digest(payload, stored)
    keys = (job_digest_key(job_id), job_key(job_id))
    previous = client.eval(CLAIM_SCRIPT, 2, *keys, digest, ttl_s, kind)
    if previous is None:
        return True
    if (previous.decode() if isinstance(previous, bytes) else str(previous)) != digest:
        raise JobIdReused(
            f"job id {job_id!r} was already used for a different job; job ids name one job "
            "each: leave job_id unset for a fresh one"
        )
    return False
