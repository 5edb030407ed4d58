"""The side-effect checks of the chaos report: a job run twice must leave one set of effects.

Each check runs on a fresh private fleet (its own redis-server, chaos workers, visibility
timeout 3 s) and trains a tiny ``chaos_net`` that registers a version and points the
``production`` alias at it:

frozen     the worker running the job is frozen (SIGSTOP) mid-epoch; another worker takes the
           job over once the visibility timeout has passed and holds it mid-epoch too; the
           frozen worker is let go on (SIGCONT) beside it. Its next progress report meets the
           delivery fence and it stops (outcome ``stale``), writing nothing.
killed     the worker stops itself right after the job's registry writes, before its answer is
           stored (``TORCHFLEET_FAULT_STOP_AT=registered``), and is killed there (SIGKILL);
           the redelivery resumes from the checkpoint and finds the version reserved for it.
promotions ``WRITERS`` producers, each with its own client, promote a different version to one
           alias at the same moment, as ``torchfleet models promote`` does: every move must be
           in the alias's history.

Counted: ``duplicates_with_side_effects`` (a second version registered by one job, an alias
moved more than once by one job, a second delivery that ran to the end and so registered and
answered again, an answer disagreeing with what the alias serves, a promotion recorded twice)
and ``lost`` (a job without its answer or its version, a promotion missing from the history).
Both must be 0. ``run_effects`` takes about 25 s (two workers started per training check).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol, cast

from shared.deadletter import delivery_counts
from shared.names import KEY_STATS
from shared.registry import BASE_VARIANT, ModelRegistry
from shared.stats import decode_record
from workers.bench.chaosfleet import (
    ChaosFleet,
    ClientFactory,
    FleetClient,
    JobState,
    drain,
    open_fleet,
    register_chaos,
)
from workers.bench.harness import WorkerProcess
from workers.faultpoints import REGISTERED

ALIAS = "production"
WRITERS = 8
HOLD_AFTER_STEPS = 4  # digits limit 160, batch 32: 4 train steps per epoch
EPOCHS = 3
DRAIN_S = 240.0
OUTCOME_S = 120.0
POLL_S = 0.05
EFFECTS_FIGURES = ("duplicates_with_side_effects", "lost", "elapsed_s")
JOB_FIGURES = (
    "status",
    "versions",
    "alias_version",
    "alias_moves",
    "result_version",
    "agree",
    "executed",
    "completed",
    "duplicates_with_side_effects",
    "lost",
    "elapsed_s",
)
FROZEN_FIGURES = (*JOB_FIGURES[:-1], "frozen_s", "stale_outcome", "elapsed_s")
KILLED_FIGURES = (*JOB_FIGURES[:-1], "at_stop", "digest_rewritten", "elapsed_s")
PROMOTION_FIGURES = (
    "writers",
    "history_entries",
    "moves_recorded",
    "errors",
    "duplicates_with_side_effects",
    "lost",
    "elapsed_s",
)

SCENARIO_FIGURES = {
    "frozen": FROZEN_FIGURES,
    "killed": KILLED_FIGURES,
    "promotions": PROMOTION_FIGURES,
}


class TrainClient(Protocol):
    """What the checks use of a producers ``Client`` beyond :class:`FleetClient`."""

    registry: Any

    def submit_train(self, *, job_id: str | None = None, **spec: Any) -> str: ...


def submit_training(fleet: ChaosFleet, name: str, hold_after: int = 0) -> str:
    """A training job that registers ``name`` and points its alias at it; with
    ``hold_after``, each run holds after that many train steps (until released)."""
    client = cast(TrainClient, fleet.client)
    return client.submit_train(
        model_name=name,
        arch="chaos_net",
        arch_kwargs={"num_classes": 10, "hold_train_after": hold_after},
        epochs=EPOCHS,
        batch_size=32,
        dataset={"name": "digits", "limit": 160, "image_size": 4, "channels": 1},
        aliases=[ALIAS],
    )


# ----------------------------------------------------------------- what a job left behind
def effects(client: FleetClient, name: str, job_id: str) -> dict[str, Any]:
    """The versions ``job_id`` registered under ``name`` and where the alias points (the
    model is the job's alone, so every move of the alias is the job's)."""
    described = ModelRegistry(client.redis).describe(name)
    versions = sorted(
        int(version)
        for version, variants in described["versions"].items()
        if variants.get(BASE_VARIANT, {}).get("job_id") == job_id
    )
    alias = described["aliases"].get(ALIAS)
    target = described["versions"].get(str(alias["version"]), {}) if alias else {}
    return {
        "versions": versions,
        "alias_version": alias["version"] if alias else None,
        "alias_moves": len(alias["history"]) + 1 if alias else 0,
        "alias_digest": target.get(alias["variant"], {}).get("digest") if alias else None,
    }


def judged(
    fleet: ChaosFleet, name: str, job_id: str, answer: JobState, workers: list[WorkerProcess]
) -> dict[str, Any]:
    """The job's figures once the deliveries of ``workers`` have ended: what the registry
    holds, whether ``answer`` (what the producer got) agrees with the alias, the two counts."""
    ended = {w.name: wait_outcome(fleet.client, job_id, w.name, OUTCOME_S) for w in workers}
    found = effects(fleet.client, name, job_id)
    result = answer.result if answer.status == "SUCCESS" and answer.result else {}
    agree = bool(result) and (result.get("version"), result.get("model_digest")) == (
        found["alias_version"],
        found["alias_digest"],
    )
    completed = sum(1 for r in outcomes(fleet.client, job_id) if r.get("outcome") == "success")
    duplicates = (
        max(0, len(found["versions"]) - 1)  # a second version registered by the job
        + max(0, found["alias_moves"] - 1)  # the alias moved again by the job
        + max(0, completed - 1)  # a second delivery ran to the end: registered, answered again
        + (1 if result and not agree else 0)  # the answer is not what the alias serves
    )
    return {
        "status": answer.status,
        "error": answer.error,
        **{k: v for k, v in found.items() if k != "alias_digest"},
        "result_version": result.get("version"),
        "agree": agree,
        "executed": delivery_counts(fleet.client.redis, job_id)["executed"],
        "completed": completed,
        "outcomes": ended,
        "duplicates_with_side_effects": duplicates,
        "lost": 0 if result and found["versions"] else 1,
    }


def outcomes(client: FleetClient, job_id: str) -> list[dict[str, Any]]:
    """The stats records of ``job_id`` (one per delivery that ended)."""
    records = (decode_record(fields) for _, fields in client.redis.xrange(KEY_STATS))
    return [r for r in records if r.get("job_id") == job_id]


def wait_outcome(client: FleetClient, job_id: str, worker: str, timeout: float) -> str | None:
    """How ``worker``'s delivery of ``job_id`` ended (None if it did not within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = [r["outcome"] for r in outcomes(client, job_id) if r.get("worker") == worker]
        if ended:
            return str(ended[-1])
        time.sleep(POLL_S)  # the worker's stats record is the thing waited on
    return None


def wait_stopped(worker: WorkerProcess, client: FleetClient, job_id: str, timeout: float) -> None:
    """Wait until the worker process is stopped (state T: it reached its stop point)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive() or worker.pid is None:
            raise AssertionError(f"the worker exited instead of stopping: {worker.tail()}")
        if Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        if (state := client.state(job_id)).finished:
            raise AssertionError(f"job {job_id} finished without stopping its worker: {state}")
        time.sleep(POLL_S)  # the process state is the thing waited on
    raise TimeoutError(f"the worker did not reach its stop point within {timeout} s")


# ----------------------------------------------------------------- the checks
def frozen_past_visibility(fleet: ChaosFleet) -> dict[str, Any]:
    """A worker frozen mid-job past the visibility timeout, resumed beside its replacement."""
    started = time.monotonic()
    name = f"frozen-{uuid.uuid4().hex[:8]}"
    stalled = fleet.worker(concurrency=1)
    fleet.hold()
    job_id = submit_training(fleet, name, hold_after=HOLD_AFTER_STEPS)
    fleet.wait_holding(1, job_id=job_id)
    assert stalled.pid is not None
    os.kill(stalled.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        # its restore sweep hands it the job once the frozen worker's lease lapses
        taker = fleet.worker(concurrency=1)
        fleet.wait_holding(2, job_id=job_id)  # the replacement runs the job, held mid-epoch
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
    frozen_s = time.monotonic() - frozen
    fleet.release()
    answer = drain(fleet.client, [job_id], DRAIN_S)[job_id]
    figures = judged(fleet, name, job_id, answer, [stalled, taker])
    return {
        **figures,
        "frozen_s": round(frozen_s, 1),
        "stale_outcome": figures["outcomes"][stalled.name],
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def killed_after_registration(fleet: ChaosFleet) -> dict[str, Any]:
    """A worker killed between the job's registry writes and its stored answer."""
    started = time.monotonic()
    name = f"killed-{uuid.uuid4().hex[:8]}"
    doomed = fleet.worker(concurrency=1, TORCHFLEET_FAULT_STOP_AT=REGISTERED)
    job_id = submit_training(fleet, name)
    wait_stopped(doomed, fleet.client, job_id, DRAIN_S)
    at_stop = effects(fleet.client, name, job_id)
    answered = fleet.client.state(job_id).finished
    doomed.kill()
    redelivered = fleet.worker(concurrency=1)
    answer = drain(fleet.client, [job_id], DRAIN_S)[job_id]
    figures = judged(fleet, name, job_id, answer, [redelivered])
    rewritten = at_stop["alias_digest"] != effects(fleet.client, name, job_id)["alias_digest"]
    # a redelivery keeps the record its job wrote: a new digest behind the alias is a side
    # effect done twice (the manifest's lineage would name the second worker)
    duplicates = figures["duplicates_with_side_effects"] + int(rewritten)
    return {
        **figures,
        "duplicates_with_side_effects": duplicates,
        "at_stop": {
            "versions": at_stop["versions"],
            "alias_version": at_stop["alias_version"],
            "answered": answered,
        },
        "digest_rewritten": rewritten,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def concurrent_promotions(
    fleet: ChaosFleet, client: ClientFactory, writers: int = WRITERS
) -> dict[str, Any]:
    """``writers`` producers promote a different version each to one alias at once."""
    started = time.monotonic()
    name = f"promoted-{uuid.uuid4().hex[:8]}"
    for _ in range(writers):
        register_chaos(fleet.settings, name)
    barrier = threading.Barrier(writers)
    errors: list[str] = []

    def promote(version: int) -> None:
        own = cast(TrainClient, client(fleet.settings))
        try:
            barrier.wait()
            resolved = own.registry.resolve(f"{name}:{version}")  # as `models promote` does
            own.registry.set_alias(resolved.name, ALIAS, resolved.version, resolved.variant)
        except Exception as e:  # counted and shown in the figures
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            cast(FleetClient, own).close()

    threads = [threading.Thread(target=promote, args=(v,)) for v in range(1, writers + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    alias = ModelRegistry(fleet.client.redis).describe(name)["aliases"].get(ALIAS)
    visited = [v for v, _ in alias["history"]] + [alias["version"]] if alias else []
    return {
        "writers": writers,
        "history_entries": len(alias["history"]) if alias else 0,
        "moves_recorded": len(set(visited)),
        "errors": errors,
        "duplicates_with_side_effects": len(visited) - len(set(visited)),
        "lost": writers - len(set(visited)),
        "elapsed_s": round(time.monotonic() - started, 1),
    }


# ----------------------------------------------------------------- entry points
def run_frozen(root: Path, client: ClientFactory) -> dict[str, Any]:
    with open_fleet(root / "frozen", client=client) as fleet:
        return frozen_past_visibility(fleet)


def run_killed(root: Path, client: ClientFactory) -> dict[str, Any]:
    with open_fleet(root / "killed", client=client) as fleet:
        return killed_after_registration(fleet)


def run_promotions(root: Path, client: ClientFactory, writers: int = WRITERS) -> dict[str, Any]:
    with open_fleet(root / "promotions", client=client) as fleet:
        return concurrent_promotions(fleet, client, writers)


def run_effects(root: Path, client: ClientFactory, *, writers: int = WRITERS) -> dict[str, Any]:
    """Every side-effect check, each on a fresh private fleet under ``root``; the figures of
    each under its name, and the two counts summed over them."""
    started = time.monotonic()
    report: dict[str, Any] = {
        "frozen": run_frozen(root, client),
        "killed": run_killed(root, client),
        "promotions": run_promotions(root, client, writers),
    }
    for total in ("duplicates_with_side_effects", "lost"):
        report[total] = sum(report[s][total] for s in SCENARIO_FIGURES)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    return report


def effects_failed(report: dict[str, Any]) -> bool:
    """Whether the report of :func:`run_effects` shows a duplicate effect or a loss."""
    return bool(report["duplicates_with_side_effects"] or report["lost"])
