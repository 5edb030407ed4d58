"""The chaos report: a total-queue check under injected faults, and a load-and-soak run.

queue  Submit unique job ids to a private fleet (its own redis-server with AOF, two chaos
       workers kept alive by a supervisor thread, as compose's restart policy would) and
       inject every fault in a seeded random order: a worker killed mid-job, a whole worker
       lost, a warm shutdown, Redis restarted under load, Redis paused, a poison job, a
       duplicate delivery. Then drain and count: submitted, completed, lost, unexpected,
       dead-lettered, duplicates executed, and the recovery time of each fault (from the
       fault until every job accepted before it has its answer). Lost must be 0.
soak   N inference jobs (cifar_cnn, micro-batching on) from P producer threads against one
       worker: errors, lost results, throughput, the worker's RSS after warm-up and at the
       end, and the TTL on result keys.

Run:   .venv/bin/python scripts/chaos.py [queue|soak|all] [--jobs N] [--producers P]
                                         [--seed S] [--json]
Exits 1 when a job was lost, an unexpected result appeared, or a soak job failed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import redis

from producers.client import Client
from shared.deadletter import list_dead_letters
from shared.names import KEY_STATS
from tests.fleet import WorkerProcess
from tests.integration.chaos_harness import (
    RESULT_PREFIX,
    ChaosFleet,
    chaos_input,
    cleanup_dir,
    counts,
    drain,
    drain_reconciled,
    open_fleet,
    register_chaos,
    register_cnn,
)
from tests.integration.chaos_models import MODE_HOLD, MODE_KILL

FAULTS = (
    "kill_mid_job",
    "lose_worker",
    "warm_shutdown",
    "redis_restart",
    "redis_pause",
    "poison",
    "duplicate",
)
WORKERS = 2
QUEUE_FIGURES = (
    "jobs_submitted",
    "submissions_refused",
    "completed",
    "dead_lettered",
    "lost",
    "unexpected",
    "duplicates_executed",
    "orphans_resubmitted",
    "redeliveries",
    "workers_started",
    "elapsed_s",
)
PAUSE_MS = 2000
DRAIN_S = 240.0
SUBMIT_ATTEMPTS = 3


# ----------------------------------------------------------------- supervisor
class Supervisor(threading.Thread):
    """Keeps ``size`` workers alive: a dead one is replaced, as compose's restart policy does."""

    def __init__(self, fleet: ChaosFleet, size: int) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.fleet, self.size = fleet, size
        self.live: list[WorkerProcess] = []
        self.replaced = 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopping.wait(0.2):  # poll interval of the supervisor
            self.top_up()

    def top_up(self) -> None:
        with self.lock:
            self.live = [w for w in self.live if w.alive()]
            while len(self.live) < self.size:
                self.live.append(self.fleet.worker(ready=False))
                self.replaced += 1

    def holder(self, mark: Path) -> WorkerProcess:
        """The worker whose process wrote a ``holding-<pid>-<n>`` mark."""
        pid = int(mark.name.split("-")[1])
        with self.lock:
            return next(w for w in self.live if w.pid == pid)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


# ----------------------------------------------------------------- the queue check
class QueueCheck:
    """Submits unique ids, injects faults, and keeps the books."""

    def __init__(self, fleet: ChaosFleet, supervisor: Supervisor, jobs: int, seed: int) -> None:
        self.fleet, self.supervisor = fleet, supervisor
        self.client = fleet.client
        self.model = register_chaos(fleet.settings)
        self.rng = random.Random(seed)
        self.per_fault = max(1, jobs // (len(FAULTS) + 1))
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self.maybe_sent: list[str] = []  # refused, though the message may have gone out
        self.inputs: dict[str, tuple[float, int]] = {}
        self.orphans: list[str] = []  # dropped by the transport, resubmitted under their id
        self.poisoned: list[str] = []
        self.recovery: dict[str, float] = {}
        self.next_id = 0

    # -- submissions
    def submit(self, mode: float = 0.0, prefix: str = "q") -> str | None:
        job_id = f"{prefix}-{self.next_id}"
        self.next_id += 1
        inputs = chaos_input(mode, seed=self.next_id)
        self.inputs[job_id] = (mode, self.next_id)
        for attempt in range(SUBMIT_ATTEMPTS):
            # A submission that raised may still have been enqueued: send it again under
            # the same id (the worker answers a second delivery from the stored result).
            try:
                self.client.submit_infer(self.model, inputs, job_id=job_id)
            except Exception as e:
                if attempt == SUBMIT_ATTEMPTS - 1:  # refused: reported, never counted as lost
                    self.refused.append(f"{job_id}: {type(e).__name__}: {e}")
                    self.maybe_sent.append(job_id)
                    return None
                continue
            self.accepted.append(job_id)
            return job_id
        return None

    def submit_chunk(self) -> None:
        for _ in range(self.per_fault):
            self.submit()

    def settled(self, started: float) -> float:
        """Seconds from ``started`` until every job accepted so far (but poison) finished.

        Jobs the transport dropped (see shared.deadletter.orphaned) are resubmitted under
        their own id, as a careful producer does, and counted.
        """
        ids = [j for j in self.accepted if j not in self.poisoned]
        _, resubmitted = drain_reconciled(self.client, ids, self.resubmit, DRAIN_S)
        self.orphans += resubmitted
        return time.monotonic() - started

    def resubmit(self, job_id: str) -> None:
        mode, seed = self.inputs[job_id]
        self.client.submit_infer(self.model, chaos_input(mode, seed=seed), job_id=job_id)

    def held_worker(self, job_id: str | None) -> WorkerProcess:
        [mark] = self.fleet.wait_holding(1, job_id=job_id)
        return self.supervisor.holder(mark)

    # -- faults
    def kill_mid_job(self) -> float:
        self.fleet.hold()
        victim = self.held_worker(self.submit(MODE_HOLD, "hold"))
        started = time.monotonic()
        victim.kill()
        self.fleet.release()
        return self.settled(started)

    def lose_worker(self) -> float:
        # the same loss, but the survivor must find the job by its own periodic sweep
        self.fleet.hold()
        victim = self.held_worker(self.submit(MODE_HOLD, "hold"))
        with self.supervisor.lock:
            self.supervisor.size -= 1  # no replacement: only the survivor is left
        started = time.monotonic()
        victim.kill()
        self.fleet.release()
        took = self.settled(started)
        with self.supervisor.lock:
            self.supervisor.size += 1
        return took

    def warm_shutdown(self) -> float:
        self.fleet.hold()
        victim = self.held_worker(self.submit(MODE_HOLD, "hold"))
        self.submit_chunk()  # queued and prefetched behind the held job
        started = time.monotonic()
        assert victim.process is not None
        victim.process.terminate()  # SIGTERM: warm shutdown
        self.fleet.release()
        return self.settled(started)

    def redis_restart(self) -> float:
        producer = threading.Thread(target=self.submit_chunk)
        producer.start()
        started = time.monotonic()
        self.fleet.redis.stop()
        self.fleet.redis.start()
        producer.join()
        return self.settled(started)

    def redis_pause(self) -> float:
        admin = redis.Redis.from_url(self.fleet.redis.url)
        started = time.monotonic()
        admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        self.submit_chunk()
        admin.close()
        return self.settled(started)

    def poison(self) -> float:
        job_id = self.submit(MODE_KILL, "poison")
        started = time.monotonic()
        if job_id is None:
            return 0.0
        self.poisoned.append(job_id)
        drain(self.client, [job_id], DRAIN_S)  # it ends dead-lettered
        return time.monotonic() - started

    def duplicate(self) -> float:
        done = [j for j in self.accepted if j.startswith("q-")][:1]
        if not done:
            return 0.0
        drain(self.client, done, DRAIN_S)
        started = time.monotonic()
        mode, seed = self.inputs[done[0]]
        self.client.submit_infer(self.model, chaos_input(mode, seed=seed), job_id=done[0])
        return self.settled(started)

    def run(self) -> list[dict[str, Any]]:
        order = self.rng.sample(FAULTS, len(FAULTS))
        faults: list[dict[str, Any]] = []
        for name in order:
            self.submit_chunk()
            fault: Callable[[], float] = getattr(self, name)
            faults.append({"fault": name, "recovery_s": round(fault(), 3)})
        self.submit_chunk()
        return faults

    def report(self, faults: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
        states = drain(self.client, self.accepted, DRAIN_S)
        delivered = counts(self.client, self.accepted)
        dead = {e.job_id for e in list_dead_letters(self.client.redis)}
        completed = [j for j, s in states.items() if s.status == "SUCCESS"]
        expected_dead = [j for j in self.poisoned if j in dead]
        lost = [j for j in self.accepted if j not in completed and j not in expected_dead]
        known = set(self.accepted) | set(self.maybe_sent)
        stored = {
            k.decode()[len(RESULT_PREFIX) :]
            for k in self.client.redis.scan_iter(match=f"{RESULT_PREFIX}*", count=1000)
        }
        unexpected = sorted(stored - known)
        return {
            "jobs_submitted": len(self.accepted),
            "submissions_refused": len(self.refused),
            "completed": len(completed),
            "dead_lettered": len(expected_dead),
            "lost": len(lost),
            "lost_ids": lost[:10],
            "unexpected": len(unexpected),
            "unexpected_ids": unexpected[:10],
            "refused_ids": self.refused[:10],
            "lost_states": {j: str(states.get(j)) for j in lost[:5]},
            "duplicates_executed": sum(max(0, c["executed"] - 1) for c in delivered.values()),
            "orphans_resubmitted": len(self.orphans),
            "redeliveries": sum(max(0, c["delivered"] - 1) for c in delivered.values()),
            "workers_started": self.supervisor.replaced,
            "faults": faults,
            "elapsed_s": round(elapsed, 1),
        }


def run_queue(jobs: int, seed: int, root: Path) -> dict[str, Any]:
    fleet = open_fleet(root / "queue", appendonly=True)
    supervisor = Supervisor(fleet, WORKERS)
    try:
        supervisor.top_up()
        for worker in supervisor.live:
            worker.wait_ready(fleet.client)
        supervisor.start()
        check = QueueCheck(fleet, supervisor, jobs, seed)
        started = time.monotonic()
        faults = check.run()
        return {"seed": seed, **check.report(faults, time.monotonic() - started)}
    finally:
        supervisor.stop()
        fleet.close()


# ----------------------------------------------------------------- load and soak
def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_at(series: list[tuple[int, float]], done: int, default: float) -> float:
    """The worker's RSS at the first sample where it had finished ``done`` jobs."""
    return next((rss for count, rss in series if count >= done), default)


def by_progress(series: list[tuple[int, float]], jobs: int) -> dict[str, float]:
    """RSS when 20, 40, 60, 80 and 100 % of the jobs were done."""
    last = series[-1][1] if series else 0.0
    return {f"{p}%": round(rss_at(series, jobs * p // 100, last), 1) for p in (20, 40, 60, 80, 100)}


def run_soak(jobs: int, producers: int, root: Path) -> dict[str, Any]:
    fleet = open_fleet(root / "soak")
    try:
        worker = fleet.worker(concurrency=8, batching=True)
        model = register_cnn(fleet.settings)
        inputs = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
        warm = [fleet.client.submit_infer(model, inputs, job_id=f"warm-{i}") for i in range(50)]
        drain(fleet.client, warm, DRAIN_S)
        assert worker.pid is not None
        rss_warm = rss_mb(worker.pid)
        rss_peak = rss_warm
        errors: list[str] = []
        finished: dict[str, str] = {}
        lock = threading.Lock()

        def produce(index: int) -> None:
            with Client(fleet.settings) as client:
                ids = []
                for i in range(index, jobs, producers):
                    try:
                        ids.append(client.submit_infer(model, inputs, job_id=f"soak-{i}"))
                    except Exception as e:
                        with lock:
                            errors.append(f"submit soak-{i}: {type(e).__name__}: {e}")
                for job_id, state in drain(client, ids, DRAIN_S * 2).items():
                    with lock:
                        finished[job_id] = state.status

        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        series: list[tuple[int, float]] = []  # (jobs the worker finished, its RSS in MB)
        while any(t.is_alive() for t in threads):
            rss = rss_mb(worker.pid)
            rss_peak = max(rss_peak, rss)
            series.append((int(fleet.client.redis.xlen(KEY_STATS)) - len(warm), rss))
            threads[0].join(0.5)  # sample the worker's memory while the producers run
        elapsed = time.monotonic() - started
        rss_end = rss_mb(worker.pid)
        failed = [j for j, status in finished.items() if status != "SUCCESS"]
        sample = list(finished)[:: max(1, len(finished) // 100)]
        ttls = [int(fleet.client.redis.ttl(RESULT_PREFIX + j)) for j in sample]
        return {
            "jobs": jobs,
            "producers": producers,
            "completed": sum(1 for s in finished.values() if s == "SUCCESS"),
            "errors": len(errors) + len(failed),
            "error_samples": (errors + failed)[:5],
            "lost": jobs - len(finished) - len(errors),
            "elapsed_s": round(elapsed, 2),
            "jobs_per_s": round(jobs / elapsed, 1),
            "rss_after_warmup_mb": round(rss_warm, 1),
            "rss_peak_mb": round(rss_peak, 1),
            "rss_end_mb": round(rss_end, 1),
            "rss_growth_mb": round(rss_end - rss_warm, 1),
            "rss_growth_pct": round(100 * (rss_end - rss_warm) / rss_warm, 1),
            "rss_by_progress_mb": by_progress(series, jobs),
            "rss_growth_after_20pct_mb": round(rss_end - rss_at(series, jobs // 5, rss_warm), 1),
            "result_ttl_s": fleet.settings.result_ttl_s,
            "result_keys_with_ttl": sum(1 for t in ttls if 0 < t <= fleet.settings.result_ttl_s),
            "result_keys_sampled": len(ttls),
        }
    finally:
        fleet.close()


# ----------------------------------------------------------------- report
def render(report: dict[str, Any]) -> None:
    queue = report.get("queue")
    if queue:
        print(f"total-queue check (faults in random order, seed {queue['seed']})")
        for key in QUEUE_FIGURES:
            print(f"  {key:<22} {queue[key]}")
        print("  recovery per fault (s):")
        for fault in queue["faults"]:
            print(f"    {fault['fault']:<16} {fault['recovery_s']:>8.2f}")
    soak = report.get("soak")
    if soak:
        print(f"soak: {soak['jobs']} inference jobs from {soak['producers']} producers")
        for key, value in soak.items():
            if key not in ("jobs", "producers"):
                print(f"  {key:<22} {value}")


def failed(report: dict[str, Any]) -> bool:
    queue, soak = report.get("queue") or {}, report.get("soak") or {}
    return bool(
        queue.get("lost") or queue.get("unexpected") or soak.get("errors") or soak.get("lost")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=["queue", "soak", "all"], default="all")
    parser.add_argument("--jobs", type=int, default=400, help="Jobs of the queue check.")
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
            report["queue"] = run_queue(args.jobs, seed, root)
        if args.what in ("soak", "all"):
            report["soak"] = run_soak(args.soak_jobs, args.producers, root)
    finally:
        cleanup_dir(root)
    if args.json:
        print(json.dumps(report))
    else:
        render(report)
    return 1 if failed(report) else 0


if __name__ == "__main__":
    sys.exit(main())
