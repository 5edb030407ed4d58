"""A worker killed mid-training under the default settings (issue 13 item 6): `status` shows
the job held by a gone worker and when it comes back, and another worker takes it over
within the default visibility timeout (seconds, not the hour it used to be)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings
from tests.fleet import until
from tests.integration.chaos_harness import ChaosFleet, open_fleet

pytestmark = pytest.mark.integration

DEFAULT_TIMEOUT_S = int(Settings.model_fields["visibility_timeout_s"].default)
RESUME_MARGIN_S = 20  # one restore sweep (1 s here) and the two epochs left of a tiny model


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[ChaosFleet]:
    chaos = open_fleet(tmp_path / "fleet", visibility_timeout_s=DEFAULT_TIMEOUT_S)
    try:
        yield chaos
    finally:
        chaos.close()


def in_flight(fleet: ChaosFleet, job_id: str) -> dict[str, Any] | None:
    status = fleet.client.status()  # type: ignore[attr-defined]
    return next((j for j in status["in_flight"] if j["job_id"] == job_id), None)


def test_a_killed_workers_training_job_is_taken_over_within_the_default_timeout(
    fleet: ChaosFleet,
) -> None:
    first = fleet.worker(concurrency=1)
    job = fleet.client.submit_train(  # type: ignore[attr-defined]
        model_name="stranded",
        arch="chaos_net",
        arch_kwargs={"num_classes": 10, "hold_train_after": 4},
        epochs=3,
        batch_size=32,
        dataset={"name": "digits", "limit": 160, "image_size": 4, "channels": 1},
    )
    fleet.wait_holding(1, job_id=job)  # epoch 1 (4 steps) is checkpointed, epoch 2 is held
    held = until(
        lambda: (j := in_flight(fleet, job)) and j["worker"] == first.name and j,
        "status to show the job on its worker",
    )
    assert held["state"] == "running" and held["task"] == "torchfleet.train"

    first.kill()
    killed = time.monotonic()
    fleet.release()
    gone = until(
        lambda: (j := in_flight(fleet, job)) and j["state"] == "worker_gone" and j,
        "status to see the worker gone",
        timeout=DEFAULT_TIMEOUT_S,
    )
    assert gone["worker"] == first.name
    assert 0 <= gone["returns_in_s"] <= DEFAULT_TIMEOUT_S

    second = fleet.worker(concurrency=1)
    state = fleet.client.wait_state(job, timeout=DEFAULT_TIMEOUT_S + 2 * RESUME_MARGIN_S)  # type: ignore[attr-defined]
    taken_over_s = time.monotonic() - killed
    assert state.status == "SUCCESS" and state.result is not None, state.error
    assert state.result["worker"] == second.name
    assert state.result["resumed_from_epoch"] == 1
    assert taken_over_s < DEFAULT_TIMEOUT_S + RESUME_MARGIN_S, taken_over_s
    print(f"killed worker's training job finished on another worker {taken_over_s:.1f} s later")
