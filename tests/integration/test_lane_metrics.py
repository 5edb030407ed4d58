"""A worker's Prometheus endpoint counts online lane requests (real Redis, real workers)."""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path

import pytest

from producers.client import Client
from shared.embedded import free_port
from shared.errors import JobFailed
from shared.settings import Settings
from tests.fleet import WorkerProcess
from tests.integration.test_infer import batch, register_cnn
from tests.integration.test_lane import Paused
from tests.integration.test_realtime import parse_metrics

pytestmark = pytest.mark.integration
WAIT_S = 120


def test_lane_requests_move_the_workers_lane_metrics(
    client: Client,
    worker: WorkerProcess,
    fleet_env: dict[str, str],
    fleet_dir: Path,
    fleet_settings: Settings,
) -> None:
    cnn = register_cnn(fleet_settings, seed=uuid.uuid4().int % 2**31)
    port = free_port()
    env = {**fleet_env, "TORCHFLEET_METRICS_PORT": str(port)}
    process = WorkerProcess(env=env, log_dir=fleet_dir, queues="infer", concurrency=2).start()
    try:
        process.wait_ready(client)
        with Paused(client, worker):  # the session worker's lane waits: this one serves
            answers = [client.infer(cnn.name, batch(2), timeout=WAIT_S) for _ in range(3)]
            with pytest.raises(JobFailed):
                client.infer(f"missing-{uuid.uuid4().hex[:6]}", batch(1), timeout=WAIT_S)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        process.stop()
    assert all(a["worker"] == process.name for a in answers)
    values = parse_metrics(text)
    labels = (("device", "cpu"), ("model", cnn.name), ("variant", "base"))
    assert values["torchfleet_lane_worker_total_ms_count", labels] == 3
    assert values["torchfleet_lane_batch_size_sum", labels] == 6
    assert values["torchfleet_lane_compute_ms_sum", labels] > 0
    assert values["torchfleet_lane_queue_wait_ms_count", labels] == 3
    assert values["torchfleet_lane_failures_total", (("code", "model_not_found"),)] == 1
    assert ("torchfleet_worker_total_ms_count", labels) not in values  # no Celery job ran
