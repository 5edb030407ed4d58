"""Redis outages are not failures (issue 14 item 4): a job that loses Redis waits for it and
runs on as soon as it is back; only a worker dying under a job counts against the job, and
a poison job's kills are not held against the jobs beside it.

Run under ``make chaos`` (TORCHFLEET_CHAOS=1): each test owns a redis-server and workers.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from producers.client import Client
from shared.deadletter import crash_count, list_dead_letters
from shared.names import KOMBU_UNACKED
from tests.fleet import until
from tests.integration.chaos_harness import (
    CHAOS_ONLY,
    REDIS_DOWN_WARNINGS,
    ChaosFleet,
    chaos_input,
    counts,
    drain,
    open_fleet,
    register_chaos,
)
from workers.bench.chaos_models import MODE_HOLD, MODE_KILL
from workers.bench.chaos_outage import run_outage

pytestmark = [pytest.mark.integration, REDIS_DOWN_WARNINGS, CHAOS_ONLY]
WAIT_S = 120


def test_three_short_redis_restarts_during_training_cost_no_delivery(tmp_path: Path) -> None:
    report = run_outage(tmp_path, Client, restarts=3)
    assert report["status"] == "SUCCESS", report
    assert report["dead_lettered"] == 0 and report["crashes"] == 0, report
    assert (report["delivered"], report["executed"]) == (1, 1), report
    # back at work as soon as Redis is, not after the visibility timeout (30 s)
    assert len(report["recovery_s"]) == 3, report
    assert max(report["recovery_s"]) < report["visibility_timeout_s"] / 3, report


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[ChaosFleet]:
    chaos = open_fleet(tmp_path / "fleet", max_deliveries=1)
    try:
        yield chaos
    finally:
        chaos.close()


def finished(fleet: ChaosFleet, job_ids: list[str]) -> bool:
    return all(fleet.client.state(job_id).finished for job_id in job_ids)


def test_the_job_beside_a_poison_job_is_not_blamed_for_its_kills(fleet: ChaosFleet) -> None:
    model = register_chaos(fleet.settings)
    first = fleet.worker(concurrency=2)
    innocent = fleet.client.submit_infer(model, chaos_input(MODE_HOLD), job_id="innocent")
    fleet.wait_holding(1, job_id=innocent)  # running when the poison job kills the worker
    poison = fleet.client.submit_infer(model, chaos_input(MODE_KILL), job_id="poison")
    assert first.wait_exit(WAIT_S) == -signal.SIGKILL
    fleet.release()
    for _ in range(3):  # each one is killed by the poison job, until it is dead-lettered
        worker = fleet.worker(concurrency=2, ready=False)
        until(
            lambda: not worker.alive() or finished(fleet, [innocent, poison]),  # noqa: B023
            "a worker to die or both jobs to finish",
            WAIT_S,
        )
        if worker.alive():
            break
    states = drain(fleet.client, [innocent, poison], WAIT_S)
    assert states[innocent].status == "SUCCESS", states[innocent]
    assert states[poison].error_code == "dead_lettered", states[poison]
    assert [e.job_id for e in list_dead_letters(fleet.client.redis)] == [poison]
    # the first kill could be either's doing; the second, with the poison job alone, its own
    assert (crash_count(fleet.client.redis, innocent), crash_count(fleet.client.redis, poison)) == (
        1,
        2,
    )


def unacked_tags(fleet: ChaosFleet, job_id: str) -> set[bytes]:
    """The delivery tags under which kombu holds ``job_id`` as unacknowledged."""
    tags = set()
    for tag, raw in fleet.client.redis.hgetall(KOMBU_UNACKED).items():
        message = json.loads(raw)[0]
        headers = (json.loads(message) if isinstance(message, str) else message).get("headers")
        if (headers or {}).get("id") == job_id:
            tags.add(tag)
    return tags


def test_a_worker_whose_clock_is_a_minute_behind_keeps_its_running_job(
    tmp_path: Path,
) -> None:
    fleet = open_fleet(tmp_path / "skew")  # visibility timeout 3 s, sweeps every second
    try:
        model = register_chaos(fleet.settings)
        fleet.worker(concurrency=1, TORCHFLEET_CLOCK_SKEW_S="-60")
        held = fleet.client.submit_infer(model, chaos_input(MODE_HOLD), job_id="held")
        fleet.wait_holding(1, job_id=held)
        [tag] = unacked_tags(fleet, held)
        doomed = fleet.worker(concurrency=1)
        lost = fleet.client.submit_infer(model, chaos_input(MODE_HOLD), job_id="lost")
        fleet.wait_holding(2, job_id=lost)
        doomed.kill()
        fleet.worker(concurrency=2)  # its sweeps judge every unacknowledged job
        until(
            lambda: (
                counts(fleet.client, [lost])[lost]["delivered"] == 2
                or unacked_tags(fleet, held) != {tag}
            ),
            "the dead worker's job to be restored",
            WAIT_S,
        )
        # the sweep that restored the dead worker's job judged the live one too: kept
        assert unacked_tags(fleet, held) == {tag}, "the live worker's job was restored"
        assert counts(fleet.client, [held])[held] == {"delivered": 1, "executed": 1}
        fleet.release()
        states = drain(fleet.client, [held, lost], WAIT_S)
        assert all(s.status == "SUCCESS" for s in states.values()), states
    finally:
        fleet.close()
