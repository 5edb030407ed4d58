"""The chaos report: every fault-injection check of the fleet, each against a private fleet.

queue   Submit unique job ids to a private fleet (its own redis-server with AOF, two chaos
        workers kept alive by a supervisor thread, as compose's restart policy would) and
        inject every fault in a seeded random order: a worker killed mid-job, a whole worker
        lost, a warm shutdown, Redis restarted under load, Redis paused, a poison job, a
        duplicate delivery. Then drain and count: submitted, completed, lost, unexpected,
        dead-lettered, duplicates executed, and the recovery time of each fault (from the
        fault until every job accepted before it has its answer). Lost must be 0.
lane    N online-lane requests from P producer threads to a private fleet while a worker is
        killed mid-batch, Redis is restarted and paused, and a poison request kills whoever
        runs it: sent, answered, dead-lettered, lost (must be 0), duplicate replies,
        recovery per fault.
memory  Redis at maxmemory under load: the fleet keeps serving what fits, workers pause and
        resume when memory frees, lost = 0, no worker crashes.
outage  Three short Redis restarts during one training job: it finishes, nothing is
        dead-lettered, no delivery is counted as a crash.
effects Side effects of a job run twice: a worker frozen (SIGSTOP) past the visibility
        timeout during training, a worker killed between registration and the stored
        answer, concurrent promotions of one alias. Duplicates with visible side effects (a
        second version, a second alias move, an answer that disagrees with the alias) must
        be 0, and so must lost alias moves.
hostile A batch of hostile specs (paths outside the data roots, symlink escapes and loops,
        an image bomb, absurd sizes): each fails clearly, none retried, no directory listed,
        and the worker serves a normal job afterwards.
soak    N inference jobs (cifar_cnn, micro-batching on) from P producer threads against one
        worker: errors, lost results, throughput, the worker's RSS after warm-up and at the
        end, and the TTL on result keys.

The report ends with two totals over every check: lost (must be 0) and duplicates with
visible side effects (must be 0).

Run:   .venv/bin/python scripts/chaos.py [CHECK ...|all] [--jobs N] [--producers P]
                         [--lane-requests N] [--lane-producers P] [--memory-jobs N]
                         [--seed S] [--json]
Exits 1 when any check failed: a job or a lane request lost, an unexpected result or a
wrong lane answer, a request other than the poison dead-lettered, a worker crashed by a
full Redis, a training job hurt by Redis restarts, a side effect done twice, a hostile spec
not refused clearly or a worker that stopped serving, or a soak job failed.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.bench.chaos_effects import EFFECTS_FIGURES, effects_failed, run_effects
from workers.bench.chaos_hostile import HOSTILE_FIGURES, hostile_failed, run_hostile
from workers.bench.chaos_lane import LANE_FIGURES, run_lane
from workers.bench.chaos_memory import MEMORY_FIGURES, run_memory
from workers.bench.chaos_outage import OUTAGE_FIGURES, run_outage
from workers.bench.chaos_queue import QUEUE_FIGURES, run_queue
from workers.bench.chaos_soak import run_soak
from workers.bench.chaosfleet import ClientFactory, cleanup_dir

Run = Callable[[argparse.Namespace, int, Path, ClientFactory], dict[str, Any]]


@dataclass(frozen=True)
class Check:
    """One check of the report: how to run it, its headline figures, when it failed."""

    title: str
    run: Run
    figures: tuple[str, ...]
    failed: Callable[[dict[str, Any]], bool]


def queue_failed(queue: dict[str, Any]) -> bool:
    return bool(queue["lost"] or queue["unexpected"])


def lane_failed(lane: dict[str, Any]) -> bool:
    """A lane request lost, answered with an error, or dead-lettered though not poison; or
    the poison answered instead of dead-lettered."""
    unaccounted = lane["requests_sent"] - lane["answered"] - lane["dead_lettered"]
    return bool(
        lane["lost"]
        or unaccounted
        or lane["error_replies"]
        or lane["innocents_dead_lettered"]
        or lane["poison_dead_lettered"] != lane["poison_sent"]
    )


def memory_failed(memory: dict[str, Any]) -> bool:
    return bool(memory["lost"] or memory["workers_crashed"])


def outage_failed(outage: dict[str, Any]) -> bool:
    return bool(outage["status"] != "SUCCESS" or outage["dead_lettered"] or outage["crashes"])


def soak_failed(soak: dict[str, Any]) -> bool:
    return bool(soak["errors"] or soak["lost"])


CHECKS: dict[str, Check] = {
    "queue": Check(
        "total-queue check (faults in random order)",
        lambda a, seed, root, client: run_queue(a.jobs, seed, root, client),
        QUEUE_FIGURES,
        queue_failed,
    ),
    "lane": Check(
        "online lane under faults (random order)",
        lambda a, seed, root, client: run_lane(
            a.lane_requests, a.lane_producers, seed, root, client
        ),
        LANE_FIGURES,
        lane_failed,
    ),
    "memory": Check(
        "Redis at maxmemory under load",
        lambda a, _, root, client: run_memory(a.memory_jobs, root, client),
        MEMORY_FIGURES,
        memory_failed,
    ),
    "outage": Check(
        "three short Redis restarts during one training job",
        lambda _, __, root, client: run_outage(root, client),
        OUTAGE_FIGURES,
        outage_failed,
    ),
    "effects": Check(
        "side effects of a job run twice",
        lambda _, __, root, client: run_effects(root, client),
        EFFECTS_FIGURES,
        effects_failed,
    ),
    "hostile": Check(
        "a hostile-spec batch against a live worker",
        lambda _, __, root, client: run_hostile(root, client),
        HOSTILE_FIGURES,
        hostile_failed,
    ),
    "soak": Check(
        "soak: inference jobs from many producers",
        lambda a, _, root, client: run_soak(a.soak_jobs, a.producers, root, client),
        (),
        soak_failed,
    ),
}


def render(report: dict[str, Any]) -> None:
    """Each check's figures, then its faults' recovery times where it has them."""
    for name, check in CHECKS.items():
        section = report.get(name)
        if not section:
            continue
        verdict = "FAILED" if check.failed(section) else "ok"
        print(f"{name}: {check.title} [{verdict}]")
        figures = check.figures or tuple(k for k in section if not _nested(section[k]))
        for key in figures:
            print(f"  {key:<26} {section[key]}")
        for key, value in section.items():  # the scenarios of a check, each on one line
            if isinstance(value, dict) and value:
                flat = ", ".join(f"{k} {v}" for k, v in value.items() if not _nested(v))
                print(f"  {key}: {flat}")
        faults = section.get("faults")
        if isinstance(faults, list) and faults:
            print("  recovery per fault (s):")
            for fault in faults:
                print(f"    {fault['fault']:<16} {fault['recovery_s']!s:>8}")
    lost, duplicates = totals(report)
    print(f"lost (must be 0): {lost}")
    print(f"duplicates with visible side effects (must be 0): {duplicates}")


def totals(report: dict[str, Any]) -> tuple[int, int]:
    """Lost jobs, requests and alias moves over every check; duplicates with side effects."""
    sections = [report[name] for name in CHECKS if report.get(name)]
    lost = sum(int(section.get("lost") or 0) for section in sections)
    duplicates = sum(int(section.get("duplicates_with_side_effects") or 0) for section in sections)
    return lost, duplicates


def _nested(value: Any) -> bool:
    return isinstance(value, (dict, list))


def failed(report: dict[str, Any]) -> bool:
    return any(check.failed(report[name]) for name, check in CHECKS.items() if report.get(name))


def main(client: ClientFactory, argv: list[str] | None = None) -> int:
    """The chaos report from the command line, with ``client`` as the producers' Client."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="*", choices=[*CHECKS, "all"], default=["all"])
    parser.add_argument("--jobs", type=int, default=400, help="Jobs of the queue check.")
    parser.add_argument(
        "--lane-requests", type=int, default=400, help="Requests of the lane check."
    )
    parser.add_argument("--lane-producers", type=int, default=4)
    parser.add_argument("--memory-jobs", type=int, default=300, help="Jobs of the memory check.")
    parser.add_argument("--soak-jobs", type=int, default=1000, help="Jobs of the soak.")
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--seed", type=int, default=None, help="Fault order (random if unset).")
    parser.add_argument("--json", action="store_true", help="One JSON object on stdout.")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    names = list(CHECKS) if "all" in args.what else list(dict.fromkeys(args.what))
    root = Path(tempfile.mkdtemp(prefix="tf-chaos-"))
    report: dict[str, Any] = {"seed": seed}
    try:
        for name in names:
            report[name] = CHECKS[name].run(args, seed, root, client)
    finally:
        cleanup_dir(root)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"chaos report (seed {seed})")
        render(report)
    return 1 if failed(report) else 0
