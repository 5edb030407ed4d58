"""The outage check of the chaos report: three short Redis restarts during one training job.

A private fleet (its own redis-server with AOF, one chaos worker, the default visibility
timeout) trains a tiny ``chaos_net`` that holds mid-epoch until released. For each restart
the job is held, Redis is stopped, the job is let go so that its next report meets the
outage, and Redis is started again once the worker has seen the connection error. The job
must finish (SUCCESS), nothing may be dead-lettered, no delivery may be counted as a crash,
and the job must be working again within seconds of Redis coming back (not after the
visibility timeout).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Protocol, cast

from shared.deadletter import crash_count, delivery_counts, list_dead_letters
from shared.settings import DEFAULT_VISIBILITY_TIMEOUT_S
from workers.bench.chaosfleet import ChaosFleet, ClientFactory, drain, open_fleet
from workers.bench.harness import WorkerProcess
from workers.effects import CHECK_INTERVAL_S
from workers.train.loop import PROGRESS_INTERVAL_S

RESTARTS = 3
HOLD_AFTER_STEPS = 4  # digits limit 160, batch 32: 4 train steps per epoch
DRAIN_S = 240.0
SEEN_S = 60.0
POLL_S = 0.05
HELD_THROUGH_S = 2 * max(CHECK_INTERVAL_S, PROGRESS_INTERVAL_S)
# The worker's log line when a job meets the outage (older workers rejected the delivery).
MET_OUTAGE = re.compile(r"lost its connection to Redis|\bReject", re.IGNORECASE)
OUTAGE_FIGURES = (
    "restarts",
    "status",
    "dead_lettered",
    "delivered",
    "executed",
    "crashes",
    "outage_s",
    "recovery_s",
    "visibility_timeout_s",
    "elapsed_s",
)


class TrainClient(Protocol):
    """What the check uses of a producers ``Client`` beyond :class:`FleetClient`."""

    def submit_train(self, *, job_id: str | None = None, **spec: Any) -> str: ...


def submit_held_training(fleet: ChaosFleet, restarts: int) -> str:
    """A training job that holds at the first step of each run's second epoch."""
    client = cast(TrainClient, fleet.client)
    return client.submit_train(
        model_name="outage-trained",
        arch="chaos_net",
        arch_kwargs={"num_classes": 10, "hold_train_after": HOLD_AFTER_STEPS},
        epochs=2 * restarts + 2,  # each run after a restart finishes at least one more epoch
        batch_size=32,
        dataset={"name": "digits", "limit": 160, "image_size": 4, "channels": 1},
    )


def wait_seen(worker: WorkerProcess, job_id: str, count: int, timeout: float = SEEN_S) -> None:
    """Wait until the worker has logged ``count`` connection errors of ``job_id``: the job
    met the outage (it called Redis while Redis was away)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = worker.log().splitlines()
        if sum(1 for line in lines if job_id in line and MET_OUTAGE.search(line)) >= count:
            return
        if not worker.alive():
            raise AssertionError(f"the worker exited during the outage: {worker.tail()}")
        time.sleep(POLL_S)  # the worker's log is the thing waited on
    raise TimeoutError(f"job {job_id} did not meet the outage within {timeout} s")


def restart_under(fleet: ChaosFleet, worker: WorkerProcess, job_id: str, n: int) -> float:
    """Stop Redis under the held job, let the job meet the outage, start Redis again.
    Returns how long Redis was away."""
    stopped = time.monotonic()
    fleet.redis.stop()
    # The fault's shape: the job stays held past its progress throttle, so that its first
    # report once let go asks Redis (its fence check) instead of being skipped.
    time.sleep(HELD_THROUGH_S)
    fleet.release()
    wait_seen(worker, job_id, n)
    fleet.hold()  # the job's next forward (once Redis is back) holds again
    fleet.redis.start()
    return time.monotonic() - stopped


def run_outage(
    root: Path,
    client: ClientFactory,
    *,
    restarts: int = RESTARTS,
    visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S,
) -> dict[str, Any]:
    """The outage check on a fresh private fleet under ``root``; its figures."""
    fleet = open_fleet(
        root / "outage", client=client, appendonly=True, visibility_timeout_s=visibility_timeout_s
    )
    try:
        worker = fleet.worker(concurrency=1)
        fleet.hold()
        started = time.monotonic()
        job_id = submit_held_training(fleet, restarts)
        outages: list[float] = []
        recoveries: list[float] = []
        try:
            for n in range(1, restarts + 1):
                fleet.wait_holding(1, job_id=job_id)
                outages.append(restart_under(fleet, worker, job_id, n))
                back = time.monotonic()
                fleet.wait_holding(1, job_id=job_id)  # working again: held at its next epoch
                recoveries.append(time.monotonic() - back)
        except AssertionError:  # the job ended before its last restart: the figures say how
            pass
        fleet.release()
        state = drain(fleet.client, [job_id], DRAIN_S)[job_id]
        redis = fleet.client.redis
        counts = delivery_counts(redis, job_id)
        return {
            "restarts": restarts,
            "status": state.status,
            "error": state.error,
            "dead_lettered": sum(1 for e in list_dead_letters(redis) if e.job_id == job_id),
            "delivered": counts["delivered"],
            "executed": counts["executed"],
            "crashes": crash_count(redis, job_id),
            "outage_s": [round(s, 2) for s in outages],
            "recovery_s": [round(s, 2) for s in recoveries],
            "visibility_timeout_s": visibility_timeout_s,
            "elapsed_s": round(time.monotonic() - started, 1),
        }
    finally:
        fleet.close()
