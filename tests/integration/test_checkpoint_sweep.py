"""Checkpoints of jobs nobody will resume are removed by a worker: at its start and then
periodically (workers/sweeper.py), against the session's real Redis and store."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from producers.client import Client
from shared.names import TASK_TRAIN, job_key
from shared.settings import Settings
from tests.fleet import WorkerProcess, until
from tests.integration.deliveries import doom
from workers.artifacts import ArtifactStore

pytestmark = pytest.mark.integration
WAIT_S = 60
SPEC = {"kind": "train", "model_name": "orphan", "arch": "mlp", "epochs": 1, "batch_size": 8}


def with_checkpoint(store: ArtifactStore, prefix: str) -> str:
    """A job id with a checkpoint on disk, as a training run leaves it after an epoch."""
    job_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    store.put_checkpoint(job_id, {"w": torch.zeros(1)}, {"epoch": 1})
    return job_id


def dead_letter(client: Client, settings: Settings, job_id: str) -> None:
    """Deliver a job that workers died under too often: the session's worker moves it
    to the dead letters (FAILURE, dead_lettered) without running it."""
    doom(client.redis, job_id, settings.max_deliveries)
    client.redis.set(job_key(job_id), "train", ex=3600)
    client.app.send_task(TASK_TRAIN, args=[SPEC], task_id=job_id)
    state = client.wait_state(job_id, timeout=WAIT_S)
    assert (state.status, state.error_code) == ("FAILURE", "dead_lettered"), state.error


def test_a_worker_removes_checkpoints_nobody_will_resume_at_start_and_periodically(
    client: Client,
    worker: WorkerProcess,
    fleet_env: dict[str, str],
    fleet_dir: Path,
    fleet_settings: Settings,
) -> None:
    store = ArtifactStore(fleet_settings.artifacts)
    dead = with_checkpoint(store, "dead")
    dead_letter(client, fleet_settings, dead)
    forgotten = with_checkpoint(store, "forgotten")  # its result and records expired
    queued = with_checkpoint(store, "queued")
    client.redis.set(job_key(queued), "train", ex=3600)  # known, unfinished: kept
    env = {**fleet_env, "TORCHFLEET_CHECKPOINT_SWEEP_S": "0.5"}
    sweeping = WorkerProcess(env=env, log_dir=fleet_dir, queues="compress").start()
    try:
        sweeping.wait_ready(client)
        until(
            lambda: not {dead, forgotten} & set(store.checkpoint_ids()),
            "the start-up sweep",
            timeout=WAIT_S,
        )
        later = with_checkpoint(store, "later")  # dead-lettered after the worker started
        dead_letter(client, fleet_settings, later)
        until(lambda: later not in store.checkpoint_ids(), "a periodic sweep", timeout=WAIT_S)
        assert queued in store.checkpoint_ids()
    finally:
        sweeping.stop()
        store.drop_checkpoint(queued)
