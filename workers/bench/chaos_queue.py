"""The total-queue check of the chaos report: unique job ids submitted to a private fleet
while every fault is injected in a seeded random order; then drained and counted."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from shared.deadletter import list_dead_letters
from workers.bench.chaos_models import MODE_HOLD, MODE_KILL
from workers.bench.chaosfleet import (
    RESULT_PREFIX,
    ChaosFleet,
    ClientFactory,
    chaos_input,
    counts,
    drain,
    drain_reconciled,
    open_fleet,
    register_chaos,
)
from workers.bench.harness import WorkerProcess

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


class Supervisor(threading.Thread):
    """Keeps ``size`` workers alive: a dead one is replaced, as compose's restart policy does."""

    def __init__(self, fleet: ChaosFleet, size: int, *, batching: bool = False) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.fleet, self.size, self.batching = fleet, size, batching
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
                self.live.append(self.fleet.worker(ready=False, batching=self.batching))
                self.replaced += 1

    def holder(self, mark: Path) -> WorkerProcess:
        """The worker whose process wrote a ``holding-<pid>-<n>`` mark."""
        pid = int(mark.name.split("-")[1])
        with self.lock:
            return next(w for w in self.live if w.pid == pid)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


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


def run_queue(jobs: int, seed: int, root: Path, client: ClientFactory) -> dict[str, Any]:
    """The total-queue check on a fresh private fleet under ``root``; its figures."""
    fleet = open_fleet(root / "queue", client=client, appendonly=True)
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
