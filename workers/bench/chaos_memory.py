"""The full-Redis check of the chaos report: Redis at ``maxmemory`` under load.

A private fleet (its own redis-server with AOF, two chaos workers) and one producer that
submits ``jobs`` unique ids. After a third of them, filler takes Redis past ``maxmemory``
(policy ``noeviction``) and the load goes on. Redis now refuses every write that may grow
memory: submissions fail with ``RedisFull`` (nothing queued; the producer backs off and tries
again), and the workers stay up, take no jobs and say so in their heartbeat. Then the filler
goes and the limit stays: the workers resume, every job accepted before is answered, and the
rest of the load is served under the limit.

Figures: jobs submitted (and before the fill), submissions refused, completed, lost (must be
0), duplicates executed, redeliveries, workers alive and crashed (must be 0); seconds from
the fill until every worker reports a pause, from the free until every worker has resumed,
and until every job accepted before the fill has its answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from shared.errors import RedisFull
from workers.bench.chaosfleet import (
    POLL_S,
    ChaosFleet,
    ClientFactory,
    chaos_input,
    counts,
    drain,
    open_fleet,
    register_chaos,
)
from workers.bench.harness import WorkerProcess

MEMORY_FIGURES = (
    "jobs_submitted",
    "jobs_before_full",
    "submissions_refused",
    "completed",
    "lost",
    "duplicates_executed",
    "redeliveries",
    "workers_alive",
    "workers_crashed",
    "pause_s",
    "resume_s",
    "recovery_s",
    "elapsed_s",
)
WORKERS = 2
REFUSALS = 3  # submissions refused while full before memory is given back
REFUSED_BACKOFF_S = 0.05
WAIT_S = 60.0
DRAIN_S = 240.0
FILLER_KEY = "chaos:filler"  # no torchfleet: prefix: it is the test's, not the fleet's
FILLER_CHUNK = 64 * 1024
FILLER_BYTES = 4 * 1024 * 1024


def fill_redis(admin: redis.Redis, filler_bytes: int = FILLER_BYTES) -> int:
    """Make Redis full and keep it full until :func:`free_redis`: write ``filler_bytes`` of
    filler, then set ``maxmemory`` half of it below what is used. Returns that maxmemory.

    Deleting the filler frees twice what is needed to get under the limit again, so the
    worker's own reads and pops cannot make Redis flap between full and not.
    """
    admin.config_set("maxmemory", 0)  # room for the filler first
    chunk = b"x" * FILLER_CHUNK
    for i in range(filler_bytes // FILLER_CHUNK):
        admin.hset(FILLER_KEY, str(i), chunk)
    admin.config_set("maxmemory-policy", "noeviction")
    limit = int(admin.info("memory")["used_memory"]) - filler_bytes // 2
    admin.config_set("maxmemory", limit)
    return limit


def free_redis(admin: redis.Redis, *, unlimited: bool = False) -> None:
    """Delete the filler (allowed at maxmemory); with ``unlimited`` also lift the limit."""
    admin.delete(FILLER_KEY)
    if unlimited:
        admin.config_set("maxmemory", 0)


def is_full(admin: redis.Redis) -> bool:
    """Whether Redis refuses writes for memory now (a tiny write is the only exact test)."""
    try:
        admin.set("chaos:probe", b"", px=1000)
    except redis.OutOfMemoryError:
        return True
    return False


class Load(threading.Thread):
    """One producer submitting ``jobs`` unique ids; it stops at ``hold_at`` until
    :attr:`go_on` is set. A submission Redis refuses for memory is counted and tried again
    after a short back-off, as a careful producer does."""

    def __init__(self, fleet: ChaosFleet, model: str, jobs: int, hold_at: int) -> None:
        super().__init__(name="memory-load", daemon=True)
        self.fleet, self.model, self.jobs, self.hold_at = fleet, model, jobs, hold_at
        self.accepted: list[str] = []
        self.refused = 0
        self.errors: list[str] = []
        self.held, self.go_on, self.stopping = (threading.Event() for _ in range(3))

    def run(self) -> None:
        for n in range(self.jobs):
            if n == self.hold_at:
                self.held.set()
                self.go_on.wait()
            if self.stopping.is_set() or not self.submit(f"mem-{n}", n):
                return

    def submit(self, job_id: str, seed: int) -> bool:
        """Submit until accepted (True); False when stopped or on an error other than
        a full Redis (a finding: reported, not retried)."""
        while not self.stopping.is_set():
            try:
                self.fleet.client.submit_infer(self.model, chaos_input(seed=seed), job_id=job_id)
            except RedisFull:
                self.refused += 1
                self.stopping.wait(REFUSED_BACKOFF_S)
                continue
            except Exception as e:
                self.errors.append(f"{job_id}: {type(e).__name__}: {e}")
                return False
            self.accepted.append(job_id)
            return True
        return False


def paused_workers(fleet: ChaosFleet) -> int:
    """How many live workers say (in their heartbeat) that they are paused."""
    return sum(1 for w in fleet.client.status()["workers"] if w.get("paused"))


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> float:
    """Seconds until ``check`` holds (polled; the fleet's state in Redis is the thing waited on)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(POLL_S)
    return time.monotonic() - started


def run_memory(jobs: int, root: Path, client: ClientFactory) -> dict[str, Any]:
    """The full-Redis check on a fresh private fleet under ``root`` (AOF, two workers);
    its figures. ``lost`` must be 0."""
    fleet = open_fleet(root / "memory", client=client, appendonly=True)
    admin = redis.Redis.from_url(fleet.redis.url)
    load: Load | None = None
    try:
        workers = [fleet.worker(ready=False) for _ in range(WORKERS)]
        for worker in workers:
            worker.wait_ready(fleet.client)
        load = Load(fleet, register_chaos(fleet.settings), jobs, hold_at=jobs // 3)
        started = time.monotonic()
        load.start()
        wait_for(load.held.is_set, "a third of the jobs submitted")
        before_full = list(load.accepted)
        limit = fill_redis(admin)
        load.go_on.set()  # the load goes on against a full Redis
        pause_s = wait_for(lambda: paused_workers(fleet) == WORKERS, "every worker paused")
        wait_for(lambda: load.refused >= REFUSALS, "submissions refused")
        free_redis(admin)
        freed = time.monotonic()
        resume_s = wait_for(lambda: paused_workers(fleet) == 0, "every worker resumed")
        drain(fleet.client, before_full, DRAIN_S)
        recovery_s = time.monotonic() - freed
        load.join(DRAIN_S)
        return {
            "maxmemory_bytes": limit,
            "jobs_before_full": len(before_full),
            "pause_s": round(pause_s, 2),
            "resume_s": round(resume_s, 2),
            "recovery_s": round(recovery_s, 2),
            **tally(fleet, load, workers),
            "elapsed_s": round(time.monotonic() - started, 1),
        }
    finally:
        if load is not None:
            load.stopping.set()
        admin.close()
        fleet.close()


def tally(fleet: ChaosFleet, load: Load, workers: list[WorkerProcess]) -> dict[str, Any]:
    """Drain every accepted job and count: completed, lost, duplicates, survivors."""
    states = drain(fleet.client, load.accepted, DRAIN_S)
    completed = [job for job, state in states.items() if state.status == "SUCCESS"]
    lost = [job for job in load.accepted if job not in completed]
    delivered = counts(fleet.client, load.accepted)
    return {
        "jobs_submitted": len(load.accepted),
        "submissions_refused": load.refused,
        "completed": len(completed),
        "lost": len(lost),
        "lost_ids": lost[:10],
        "submit_errors": load.errors[:5],
        "duplicates_executed": sum(max(0, c["executed"] - 1) for c in delivered.values()),
        "redeliveries": sum(max(0, c["delivered"] - 1) for c in delivered.values()),
        "workers_alive": sum(1 for w in workers if w.alive()),
        "workers_crashed": sum(1 for w in workers if "Unrecoverable error" in w.log()),
    }
