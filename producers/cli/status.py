"""`torchfleet status`: live workers, queue depths per priority lane, the online lane's
streams, dead letters."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from producers.cli.common import console, reported_errors
from producers.client import Client
from shared.errors import ModelNotFound
from shared.registry import ModelRegistry


def model_refs(registry: ModelRegistry) -> dict[str, list[str]]:
    """digest -> the references that name it (``name:version:variant``, ``name@alias``)."""
    refs: dict[str, list[str]] = {}
    for name in registry.names():
        try:
            info = registry.describe(name)
        except ModelNotFound:
            continue
        for version, variants in info["versions"].items():
            for variant, record in variants.items():
                refs.setdefault(record["digest"], []).append(f"{name}:{version}:{variant}")
                for alias, target in info["aliases"].items():
                    if str(target["version"]) == version and target["variant"] == variant:
                        refs[record["digest"]].append(f"{name}@{alias}")
    return refs


def add_refs(status: dict[str, Any], refs: dict[str, list[str]]) -> dict[str, Any]:
    """Name each worker's cached digests by the references that point at them."""
    for worker in status["workers"]:
        worker["cached_refs"] = {d: refs.get(d, []) for d in worker.get("cached", [])}
    return status


def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Live workers (device, GPU lease, queues, cached models, jobs), queues, the online
    lane's streams, dead letters."""
    with reported_errors(), Client() as client:
        report = add_refs(client.status(), model_refs(client.registry))
    if as_json:
        print(json.dumps(report))
        return
    render(report)


def render(report: dict[str, Any]) -> None:
    now = report["time"]
    workers = Table(
        "worker", "device", "gpu lease", "queues", "cached", "jobs", "seen", title="workers"
    )
    for w in report["workers"]:
        cached = [", ".join(r[:1]) or d[:12] for d, r in w.get("cached_refs", {}).items()]
        jobs = " ".join(f"{k}={v}" for k, v in sorted(w.get("jobs", {}).items())) or "-"
        seen = f"{now - w['last_seen']:.0f}s ago"
        if w.get("paused"):  # the worker takes no jobs until Redis has memory again
            seen += "\npaused: Redis full"
        workers.add_row(
            w["name"],
            w["device"],
            "LOST: stepped down" if w.get("stepped_down") else (w.get("gpu_lease") or "-")[:12],
            ",".join(w.get("queues", [])),
            "\n".join(cached) or "-",
            jobs,
            seen,
        )
    console.print(workers if report["workers"] else "no live workers (no heartbeat in Redis)")
    queues = Table("queue", "depth", "lanes (0 = most urgent)", title="queues")
    for name, q in report["queues"].items():
        if q["depth"] or "." not in name:
            lanes = " ".join(f"{s}:{n}" for s, n in q["lanes"].items())
            queues.add_row(name, str(q["depth"]), lanes)
    console.print(queues)
    render_lane(report)
    render_in_flight(report)
    console.print(f"dead letters: {report['deadletter']}")
    render_memory(report.get("redis_memory"))


def render_memory(memory: dict[str, Any] | None) -> None:
    """Redis's memory, and what a full Redis means for the fleet."""
    if not memory:
        return
    used = memory["used_bytes"] / 2**20
    if not memory["max_bytes"]:
        console.print(f"redis memory: {used:.1f} MiB used (no maxmemory)")
        return
    line = f"redis memory: {used:.1f} of {memory['max_bytes'] / 2**20:.1f} MiB ({memory['policy']})"
    if memory["full"]:
        line += ": FULL, writes refused; workers pause and submissions fail until memory frees"
    console.print(line)


def render_lane(report: dict[str, Any]) -> None:
    """The online lane's streams that have consumers or requests."""
    streams = {
        name: s
        for name, s in report.get("lane_streams", {}).items()
        if s["length"] or s["consumers"]
    }
    if not streams:
        console.print("online lane: no consumers, no requests")
        return
    table = Table(
        "lane", "stream", "length", "waiting", "pending (by consumer)", "consumers",
        "oldest pending", title="online lane",
    )  # fmt: skip
    for s in streams.values():
        by = " ".join(f"{c}:{n}" for c, n in s["pending_by_consumer"].items())
        oldest = s["oldest_pending_s"]
        table.add_row(
            s["lane"],
            "high" if s["high_priority"] else "normal",
            str(s["length"]),
            str(s["waiting"]),
            f"{s['pending']} {by}".strip(),
            str(len(s["consumers"])),
            "-" if oldest is None else f"{oldest:.1f}s",
        )
    console.print(table)


def render_in_flight(report: dict[str, Any]) -> None:
    """Delivered, unacknowledged jobs: the worker on each, and when a dead one's come back."""
    jobs = report.get("in_flight", [])
    if not jobs:
        console.print("no jobs in flight")
        return
    sweep = report.get("restore_interval_s") or 0
    table = Table("job", "task", "queue", "worker", "state", title="jobs in flight")
    for job in jobs:
        if job["state"] == "worker_gone":
            state = (
                f"worker gone: back in ~{job['returns_in_s']:.0f}s (+ <= {sweep:.0f}s sweep)"
                if job["returns_in_s"]
                else f"worker gone: due back (next sweep, <= {sweep:.0f}s)"
            )
        else:
            state = f"running (renewed {job['renewed_s_ago']:.0f}s ago)"
        table.add_row(
            job["job_id"], str(job["task"]), str(job["queue"]), job["worker"] or "-", state
        )
    console.print(table)
