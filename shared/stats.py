"""Job statistics, torch-free: the record format, one percentile, and the aggregation.

A worker appends one flat record per finished job to a capped Redis stream
(:func:`stats_entry`, :func:`append_record`); the producer reads the stream and the result
backend and aggregates them (:func:`group_stats`, :func:`bucket_stats`), and so does the
fleet's ``torchfleet.aggregate`` task (:func:`summarize_group`). No I/O here beyond the
stream write a caller queues on its own pipeline.

Percentiles interpolate linearly between ranks, numpy's default (``np.percentile``): the
figures match what anyone recomputes from the same samples with numpy or pandas, and a
percentile of a handful of samples moves smoothly instead of jumping between them. It is the
one percentile of the project: stats, group summaries, compression reports and the bench.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.client import Pipeline

from shared.errors import ERRORS_BY_CODE, InputError
from shared.jobs import LATENCY_FIELDS, GroupSummary, LatencyPercentiles, ModelRef
from shared.names import KEY_STATS

__all__ = [
    "COMPLETED",
    "DEFAULT_GROUP_BY",
    "STAT_FIELDS",
    "Member",
    "append_record",
    "bucket_stats",
    "choose_bucket_s",
    "decode_record",
    "group_stats",
    "infer_fields",
    "is_error",
    "member_from_meta",
    "model_of",
    "parse_since",
    "percentile",
    "percentiles",
    "stats_entry",
    "summarize_group",
]

DEFAULT_GROUP_BY = ("kind", "model", "variant", "device", "worker")
STAT_FIELDS = (*LATENCY_FIELDS, "wall_ms")
TEXT_FIELDS = frozenset({"kind", "job_id", "outcome", "model", "variant", "device", "worker"})
SINCE_RE = re.compile(r"^\s*(?P<n>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|s|m|h|d)?\s*$")
UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SUCCESS = "success"
RETRY = "retry"
# Outcomes of jobs that ran to their end: a pipeline's verdicts are results, not failures.
COMPLETED = frozenset({SUCCESS, "promoted", "gate_failed"})
NOT_ERRORS = COMPLETED | {"cancelled"}  # every other outcome (an error code) is a failure
CODE_OF_ERROR = {cls.__name__: code for code, cls in ERRORS_BY_CODE.items()}


# ------------------------------------------------------------------ records


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


def model_of(payload: Any) -> str | None:
    """The model name a job payload is about (None when the payload does not say)."""
    if not isinstance(payload, Mapping):
        return None
    train = payload.get("train")
    if isinstance(train, Mapping) and isinstance(train.get("model_name"), str):
        return str(train["model_name"])
    if isinstance(payload.get("model_name"), str):
        return str(payload["model_name"])
    for key in ("model", "source"):  # infer, compress and pipeline: a model reference
        ref = payload.get(key)
        if isinstance(ref, str):
            try:
                return ModelRef.parse(ref).name
            except ValueError:
                return None
    return None


def is_error(outcome: Any) -> bool:
    """A failed job: anything but a completed, cancelled or retried one."""
    return outcome not in NOT_ERRORS and outcome != RETRY


def append_record(entry: dict[str, str], maxlen: int) -> Callable[[Pipeline], object]:
    """The write of one record to the capped stream, for the write-behind queue."""
    return lambda pipe: pipe.xadd(KEY_STATS, entry, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]


# ------------------------------------------------------------------ basics
def parse_since(text: str) -> float:
    """Seconds in ``10m``, ``2h``, ``30s``, ``1d``, ``500ms`` or a bare number of seconds."""
    match = SINCE_RE.match(text)
    if match is None or float(match["n"]) <= 0:
        raise InputError(f"bad duration {text!r}: use a positive number with s, m, h or d (10m)")
    return float(match["n"]) * UNIT_S[match["unit"] or "s"]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentiles(values: Sequence[float]) -> LatencyPercentiles:
    """p50, p95 and p99, rounded to microseconds."""
    return LatencyPercentiles(
        p50=round(percentile(values, 50), 3),
        p95=round(percentile(values, 95), 3),
        p99=round(percentile(values, 99), 3),
    )


def decode_record(fields: Mapping[Any, Any]) -> dict[str, Any]:
    """A stats-stream entry (flat strings or bytes) with its numbers turned back into floats."""
    record: dict[str, Any] = {}
    for raw_key, raw_value in fields.items():
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        record[key] = _text(raw_value) if key in TEXT_FIELDS else _number(raw_value)
    return record


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: Any) -> float | str:
    try:
        return float(value)  # float() takes bytes as well as str
    except ValueError:
        return _text(value)


# ------------------------------------------------------------------ stats stream
def group_stats(
    records: Iterable[Mapping[str, Any]],
    *,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    window_s: float | None = None,
) -> list[dict[str, Any]]:
    """Count, error rate, throughput and p50/p95/p99 of each latency field, per group.

    Transient ``retry`` records count as retries, not as jobs; only failures count as errors
    (a pipeline's ``promoted`` or ``gate_failed``, a ``cancelled`` job are not). Latency is
    over completed jobs. Throughput is jobs per second over ``window_s`` (the ``--since``
    window) or, without one, over the records' own span.
    """
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        groups[tuple(str(record.get(k, "-")) for k in group_by)].append(record)
    return [
        {**dict(zip(group_by, key, strict=True)), **summarize(members, window_s)}
        for key, members in sorted(groups.items())
    ]


def summarize(records: Sequence[Mapping[str, Any]], window_s: float | None) -> dict[str, Any]:
    """The figures of one group of stats records (see :func:`group_stats`)."""
    jobs = [r for r in records if r.get("outcome") != RETRY]
    errors = [r for r in jobs if is_error(r.get("outcome"))]
    stamps = [float(r["ts"]) for r in records if isinstance(r.get("ts"), float)]
    span = window_s if window_s is not None else (max(stamps) - min(stamps) if stamps else 0.0)
    succeeded = [r for r in jobs if r.get("outcome") in COMPLETED]
    inputs = sum(float(r.get("inputs", 0) or 0) for r in succeeded)
    values: dict[str, list[float]] = {name: [] for name in STAT_FIELDS}
    for r in succeeded:  # one pass over the records, not one per field
        for name, column in values.items():
            value: Any = r.get(name)
            if _is_number(value):
                column.append(float(value))
    latency = {name: percentiles(v).model_dump() for name, v in values.items() if v}
    return {
        "count": len(jobs),
        "errors": len(errors),
        "retries": len(records) - len(jobs),
        "error_rate": round(len(errors) / len(jobs), 6) if jobs else 0.0,
        "throughput_per_s": round(len(jobs) / span, 6) if span > 0 else None,
        "inputs_per_s": round(inputs / span, 6) if span > 0 and inputs else None,
        "outcomes": dict(sorted(Counter(str(r.get("outcome")) for r in jobs).items())),
        "latency_ms": latency,
    }


def _is_number(value: Any) -> bool:
    return type(value) in (float, int) and math.isfinite(value)


def choose_bucket_s(span_s: float, buckets: int = 30) -> float:
    """A round bucket width that cuts ``span_s`` into about ``buckets`` pieces."""
    for width in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400):
        if span_s / width <= buckets:
            return float(width)
    return 86400.0


def bucket_stats(
    records: Iterable[Mapping[str, Any]], *, bucket_s: float, field: str = "total_worker_ms"
) -> list[dict[str, Any]]:
    """p50/p95/p99 of ``field`` per time bucket of completed jobs: ``[{start, count, p50...}]``.

    Only buckets that hold data are listed; a plot must leave a gap where one is missing.
    """
    buckets: dict[float, list[float]] = defaultdict(list)
    for r in records:
        if r.get("outcome") in COMPLETED and _is_number(r.get(field)) and _is_number(r.get("ts")):
            start = math.floor(float(r["ts"]) / bucket_s) * bucket_s
            buckets[start].append(float(r[field]))
    return [
        {"start": start, "count": len(values), **percentiles(values).model_dump()}
        for start, values in sorted(buckets.items())
    ]


# ------------------------------------------------------------------ groups of jobs
@dataclass(frozen=True)
class Member:
    """One job of a group as the result backend holds it."""

    status: str
    result: dict[str, Any] | None = None
    error_code: str | None = None


def member_from_meta(meta: Mapping[str, Any] | None) -> Member:
    """A result-backend record (Celery's JSON meta; ``None`` if absent) as a :class:`Member`."""
    if not meta:
        return Member("PENDING")
    status = str(meta.get("status", "PENDING"))
    payload = meta.get("result")
    if status == "SUCCESS":
        return Member(status, result=payload if isinstance(payload, dict) else None)
    if status == "FAILURE":
        exc_type = payload.get("exc_type") if isinstance(payload, dict) else None
        return Member(status, error_code=CODE_OF_ERROR.get(str(exc_type), str(exc_type or "error")))
    if status == "REVOKED":
        return Member(status, error_code="cancelled")
    return Member(status)


def summarize_group(
    group_id: str, members: Sequence[Member], *, by: str = "producer", now: float | None = None
) -> GroupSummary:
    """Progress, outcomes, accuracy (weighted by labelled inputs) and latency of a group."""
    finished = [m for m in members if m.status in ("SUCCESS", "FAILURE", "REVOKED")]
    results = [m.result for m in finished if m.result is not None]
    outcomes = Counter(
        "success" if m.status == "SUCCESS" else (m.error_code or "error") for m in finished
    )
    labelled = [
        (r["accuracy"], len(r.get("predictions", [])))
        for r in results
        if r.get("accuracy") is not None
    ]
    labelled_inputs = sum(n for _, n in labelled)
    latency = {}
    for name in LATENCY_FIELDS:
        values = [float(r["latency"][name]) for r in results if name in r.get("latency", {})]
        if values:
            latency[name] = percentiles(values)
    succeeded = sum(1 for m in finished if m.status == "SUCCESS")
    return GroupSummary(
        group_id=group_id,
        count=len(members),
        done=len(finished),
        succeeded=succeeded,
        failed=len(finished) - succeeded,
        pending=len(members) - len(finished),
        outcomes=dict(sorted(outcomes.items())),
        inputs=sum(len(r.get("predictions", [])) for r in results),
        labelled_inputs=labelled_inputs,
        accuracy=(
            round(sum(a * n for a, n in labelled) / labelled_inputs, 6) if labelled_inputs else None
        ),
        latency=latency,
        models=sorted({f"{r['model']}:{r['version']}:{r['variant']}" for r in results}),
        workers=sorted({str(r["worker"]) for r in results}),
        aggregated_at=time.time() if now is None else now,
        aggregated_by=by,
    )
