"""One compact record per finished job, appended to a capped Redis stream."""

from __future__ import annotations

import time
from typing import Any

import redis

from shared.names import KEY_STATS


def record_job(
    client: redis.Redis, maxlen: int, *, kind: str, job_id: str, outcome: str, **fields: Any
) -> None:
    """Append a job record; flat string fields, so any Redis client can read the stream."""
    entry = {"kind": kind, "job_id": job_id, "outcome": outcome, "ts": f"{time.time():.6f}"}
    entry.update({k: str(v) for k, v in fields.items() if v is not None})
    client.xadd(KEY_STATS, entry, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]


def infer_fields(result: dict[str, Any]) -> dict[str, Any]:
    """The stats fields of an inference result: model, variant, device, worker, latencies."""
    fields = {k: result[k] for k in ("model", "variant", "device", "worker", "batch_size")}
    fields.update(result["latency"])
    fields["inputs"] = len(result["predictions"])
    return fields
