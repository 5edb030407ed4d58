"""One compact record per finished job, appended to a capped Redis stream.

Records leave the job's own path: the worker's :class:`~workers.writebehind.WriteBehind`
thread appends them, many per round trip, a few tens of milliseconds after the answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.client import Pipeline

from shared.names import KEY_STATS


def stats_entry(*, kind: str, job_id: str, outcome: str, **fields: Any) -> dict[str, str]:
    """A job record: flat string fields, so any Redis client can read the stream."""
    entry = {"kind": kind, "job_id": job_id, "outcome": outcome, "ts": f"{time.time():.6f}"}
    entry.update({k: str(v) for k, v in fields.items() if v is not None})
    return entry


def infer_fields(result: dict[str, Any]) -> dict[str, Any]:
    """The stats fields of an inference result: model, variant, device, worker, latencies."""
    fields = {k: result[k] for k in ("model", "variant", "device", "worker", "batch_size")}
    fields.update(result["latency"])
    fields["inputs"] = len(result["predictions"])
    return fields


def append_record(entry: dict[str, str], maxlen: int) -> Callable[[Pipeline], object]:
    """The write of one record to the capped stream, for the write-behind queue."""
    return lambda pipe: pipe.xadd(KEY_STATS, entry, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
