"""Reads of the fleet's operational state: worker heartbeats, queue depths, the stats stream."""

from __future__ import annotations

import json
import time
from typing import Any

from redis import Redis

from shared.clock import server_time
from shared.deadletter import in_flight
from shared.names import (
    DEVICE_KINDS,
    KEY_DEADLETTER,
    KEY_STATS,
    KEY_WORKER,
    LANE_GROUP,
    PRIORITY_STEPS,
    QUEUE_COMPRESS,
    QUEUE_INFER,
    QUEUE_TRAIN,
    WORKER_KEYS,
    device_queue,
    every_queue,
    lane_alive_key,
    lane_streams,
    queue_keys,
)
from shared.registry_records import text
from shared.settings import DEFAULT_VISIBILITY_TIMEOUT_S
from shared.stats import decode_record

STATS_PAGE = 10_000
# The queue a job waits on, by the kind its record holds (group members are infer jobs).
KIND_QUEUES = {
    "train": QUEUE_TRAIN,
    "compress": QUEUE_COMPRESS,
    "pipeline": QUEUE_COMPRESS,
    "infer": QUEUE_INFER,
    "group": QUEUE_INFER,
    "job": QUEUE_INFER,
}


def fleet_status(
    redis: Redis,
    *,
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
    restore_interval_s: float = 0.0,
) -> dict[str, Any]:
    """Live workers (heartbeat records), queue depths per priority lane, dead letters, and
    the jobs in flight (see :func:`shared.deadletter.in_flight`); a dead worker's jobs come
    back ``returns_in_s`` plus at most ``restore_interval_s`` (one sweep) from now."""
    workers = []
    for key in sorted(redis.scan_iter(match=f"{KEY_WORKER}*", count=500)):
        raw = redis.get(key)
        if raw:
            workers.append(json.loads(raw))
    names = every_queue()
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            for key in queue_keys(name):
                pipe.llen(key)
        pipe.llen(KEY_DEADLETTER)
        counts = pipe.execute()
    lanes = len(PRIORITY_STEPS)
    queues = {}
    for i, name in enumerate(names):
        per_lane = counts[i * lanes : (i + 1) * lanes]
        queues[name] = {
            "depth": sum(per_lane),
            "lanes": {str(s): int(n) for s, n in zip(PRIORITY_STEPS, per_lane, strict=True)},
        }
    live = {str(w.get("name")): w.get("holding", []) for w in workers}
    now = server_time(redis)  # the clock the workers write and judge ages by
    return {
        "time": time.time(),
        "workers": sorted(workers, key=lambda w: str(w.get("name"))),
        "queues": queues,
        "lane_streams": lane_depths(redis, now=now),
        "deadletter": int(counts[-1]),
        "redis_memory": redis_memory(redis),
        "in_flight": in_flight(redis, live, visibility_timeout_s=visibility_timeout_s, now=now),
        "visibility_timeout_s": visibility_timeout_s,
        "restore_interval_s": restore_interval_s,
    }


def lane_depths(redis: Redis, *, now: float) -> dict[str, dict[str, Any]]:
    """Each online lane stream: entries (``length``), read but unanswered (``pending``, by
    consumer), not read yet (``waiting``), live consumers (a heartbeat), and the age of the
    oldest pending request since it was sent, by the Redis server's clock (``now``)."""
    now_ms = now * 1000
    streams = [(kind, stream) for kind in DEVICE_KINDS for stream in lane_streams(kind)]
    with redis.pipeline(transaction=False) as pipe:
        for _, stream in streams:
            pipe.xlen(stream)
            pipe.xpending(stream, LANE_GROUP)
            pipe.xinfo_consumers(stream, LANE_GROUP)
        replies = pipe.execute(raise_on_error=False)  # NOGROUP: no worker served it yet
    names = {
        stream: [text(c["name"]) for c in found] if isinstance(found, list) else []
        for (_, stream), found in zip(streams, replies[2::3], strict=True)
    }
    alive = live_consumers(redis, {(kind, n) for kind, stream in streams for n in names[stream]})
    depths = {}
    for i, (kind, stream) in enumerate(streams):
        length, pending = replies[3 * i : 3 * i + 2]
        summary = pending if isinstance(pending, dict) else {}
        oldest = summary.get("min")
        depths[stream] = {
            "lane": kind,
            "high_priority": stream == lane_streams(kind)[0],
            "length": int(length),
            "pending": int(summary.get("pending") or 0),
            "waiting": max(0, int(length) - int(summary.get("pending") or 0)),
            "pending_by_consumer": {
                text(c["name"]): int(c["pending"]) for c in summary.get("consumers") or []
            },
            "consumers": sorted(n for n in names[stream] if (kind, n) in alive),
            "oldest_pending_s": (now_ms - _id_ms(oldest)) / 1000 if oldest else None,
        }
    return depths


def live_consumers(redis: Redis, candidates: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (lane, consumer) pairs whose heartbeat is there (a group keeps the dead), in one
    round trip."""
    pairs = sorted(candidates)
    with redis.pipeline(transaction=False) as pipe:
        for lane, name in pairs:
            pipe.exists(lane_alive_key(lane, name))
        alive = pipe.execute()
    return {pair for pair, up in zip(pairs, alive, strict=True) if up}


def _id_ms(entry_id: bytes | str) -> int:
    return int(text(entry_id).split("-", 1)[0])


def redis_memory(redis: Redis) -> dict[str, Any]:
    """Redis's memory against its ``maxmemory`` (0: no limit). ``full``: used is over the
    limit, so Redis refuses writes (under ``noeviction``) and workers pause."""
    info = redis.info("memory")
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    return {
        "used_bytes": used,
        "max_bytes": limit,
        "policy": str(info.get("maxmemory_policy", "")),
        "full": bool(limit) and used >= limit,
    }


def stats_records(
    redis: Redis, *, since_s: float | None = None, model: str | None = None
) -> list[dict[str, Any]]:
    """Records of the stats stream from ``since_s`` seconds ago (all kept if None)."""
    start = f"{int((time.time() - since_s) * 1000)}-0" if since_s is not None else "-"
    records: list[dict[str, Any]] = []
    while True:
        page: list[tuple[Any, Any]] = redis.xrange(  # type: ignore[assignment]
            KEY_STATS, min=start, max="+", count=STATS_PAGE
        )
        records.extend(decode_record(fields) for _, fields in page)
        if len(page) < STATS_PAGE:
            break
        last = page[-1][0].decode() if isinstance(page[-1][0], bytes) else page[-1][0]
        start = f"({last}"
    if model is not None:
        records = [r for r in records if r.get("model") == model]
    return records


def live_queues(redis: Redis) -> set[str]:
    """Every queue some live worker consumes, from the heartbeat records (they expire)."""
    keys = list(redis.scan_iter(match=WORKER_KEYS, count=500))
    queues: set[str] = set()
    for raw in redis.mget(keys) if keys else []:
        if raw:
            queues.update(str(q) for q in json.loads(raw).get("queues", []))
    return queues


def unserved_queues(redis: Redis, job: dict[str, Any]) -> list[str]:
    """The queues a job (its JSON) needs that no live worker consumes."""
    kind, device = str(job.get("kind")), str(job.get("device") or "any")
    needed = [KIND_QUEUES.get(kind, QUEUE_INFER)]
    if kind == "pipeline" and job.get("train") is not None:
        needed.insert(0, QUEUE_TRAIN)
    if device in DEVICE_KINDS:
        needed = [device_queue(q, device) for q in needed]
    live = live_queues(redis)
    return [q for q in needed if q not in live]
