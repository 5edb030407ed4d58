"""The chaos report: a total-queue check under injected faults, and a load-and-soak run.

queue  Submit unique job ids to a private fleet (its own redis-server with AOF, two chaos
       workers kept alive by a supervisor thread, as compose's restart policy would) and
       inject every fault in a seeded random order: a worker killed mid-job, a whole worker
       lost, a warm shutdown, Redis restarted under load, Redis paused, a poison job, a
       duplicate delivery. Then drain and count: submitted, completed, lost, unexpected,
       dead-lettered, duplicates executed, and the recovery time of each fault (from the
       fault until every job accepted before it has its answer). Lost must be 0.
lane   N online-lane requests from P producer threads to a private fleet (its own
       redis-server with AOF, two workers kept alive) while a worker is killed mid-batch,
       Redis is restarted and paused, and a poison request kills whoever runs it: sent,
       answered, dead-lettered, lost (must be 0), duplicate replies, recovery per fault.
soak   N inference jobs (cifar_cnn, micro-batching on) from P producer threads against one
       worker: errors, lost results, throughput, the worker's RSS after warm-up and at the
       end, and the TTL on result keys.

Run:   .venv/bin/python scripts/chaos.py [queue|lane|soak|all] [--jobs N] [--producers P]
                         [--lane-requests N] [--lane-producers P] [--seed S] [--json]
Exits 1 when a job or a lane request was lost, an unexpected result or a wrong lane answer
appeared, a request other than the poison was dead-lettered, or a soak job failed.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from workers.bench.chaos_lane import LANE_FIGURES, run_lane
from workers.bench.chaos_queue import QUEUE_FIGURES, run_queue
from workers.bench.chaos_soak import run_soak
from workers.bench.chaosfleet import ClientFactory, cleanup_dir


def render(report: dict[str, Any]) -> None:
    queue = report.get("queue")
    if queue:
        print(f"total-queue check (faults in random order, seed {queue['seed']})")
        for key in QUEUE_FIGURES:
            print(f"  {key:<22} {queue[key]}")
        print("  recovery per fault (s):")
        for fault in queue["faults"]:
            print(f"    {fault['fault']:<16} {fault['recovery_s']:>8.2f}")
    lane = report.get("lane")
    if lane:
        print(
            f"online lane under faults (random order, seed {lane['seed']}, "
            f"{lane['producers']} producers)"
        )
        for key in LANE_FIGURES:
            print(f"  {key:<24} {lane[key]}")
        print("  recovery per fault (s):")
        for fault in lane["faults"]:
            print(
                f"    {fault['fault']:<16} {fault['recovery_s']!s:>8}"
                f"   ({fault['in_flight_at_fault']} in flight at the fault)"
            )
    soak = report.get("soak")
    if soak:
        print(f"soak: {soak['jobs']} inference jobs from {soak['producers']} producers")
        for key, value in soak.items():
            if key not in ("jobs", "producers"):
                print(f"  {key:<22} {value}")


def failed(report: dict[str, Any]) -> bool:
    queue, soak = report.get("queue") or {}, report.get("soak") or {}
    return bool(
        queue.get("lost")
        or queue.get("unexpected")
        or lane_failed(report.get("lane") or {})
        or soak.get("errors")
        or soak.get("lost")
    )


def lane_failed(lane: dict[str, Any]) -> bool:
    """A lane request lost, answered with an error, or dead-lettered though not poison; or
    the poison answered instead of dead-lettered."""
    if not lane:
        return False
    unaccounted = lane["requests_sent"] - lane["answered"] - lane["dead_lettered"]
    return bool(
        lane["lost"]
        or unaccounted
        or lane["error_replies"]
        or lane["innocents_dead_lettered"]
        or lane["poison_dead_lettered"] != lane["poison_sent"]
    )


def main(client: ClientFactory, argv: list[str] | None = None) -> int:
    """The chaos report from the command line, with ``client`` as the producers' Client."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=["queue", "lane", "soak", "all"], default="all")
    parser.add_argument("--jobs", type=int, default=400, help="Jobs of the queue check.")
    parser.add_argument(
        "--lane-requests", type=int, default=400, help="Requests of the lane check."
    )
    parser.add_argument("--lane-producers", type=int, default=4)
    parser.add_argument("--soak-jobs", type=int, default=1000, help="Jobs of the soak.")
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--seed", type=int, default=None, help="Fault order (random if unset).")
    parser.add_argument("--json", action="store_true", help="One JSON object on stdout.")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    root = Path(tempfile.mkdtemp(prefix="tf-chaos-"))
    report: dict[str, Any] = {}
    try:
        if args.what in ("queue", "all"):
            report["queue"] = run_queue(args.jobs, seed, root, client)
        if args.what in ("lane", "all"):
            report["lane"] = run_lane(args.lane_requests, args.lane_producers, seed, root, client)
        if args.what in ("soak", "all"):
            report["soak"] = run_soak(args.soak_jobs, args.producers, root, client)
    finally:
        cleanup_dir(root)
    if args.json:
        print(json.dumps(report))
    else:
        render(report)
    return 1 if failed(report) else 0
