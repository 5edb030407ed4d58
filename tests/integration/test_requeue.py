"""`torchfleet deadletter requeue` end to end: real redis-server, real worker processes.

A lane request goes back onto its own lane stream (device kind and priority stream) and is
answered; a Celery job goes back to the device queue and priority it was delivered from.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from producers.client import Client
from shared.deadletter import list_dead_letters
from shared.errors import JobFailed
from shared.names import (
    LANE_GROUP,
    TASK_LANE,
    lane_stream,
    lane_streams,
    transport_priority,
)
from shared.requeue import requeue
from shared.settings import Settings
from tests.fleet import WorkerProcess, register_cnn
from tests.integration.chaos_harness import ChaosFleet, chaos_input, open_fleet, register_chaos
from tests.integration.deliveries import doom
from tests.integration.test_cli import torchfleet
from tests.integration.test_infer import batch
from tests.integration.test_lane import FAST_RECOVERY, Paused

pytestmark = pytest.mark.integration
WAIT_S = 120


@pytest.fixture
def lane_fleet(tmp_path: Path) -> Iterator[ChaosFleet]:
    fleet = open_fleet(tmp_path / "lane")
    fleet.env.update(FAST_RECOVERY)
    try:
        yield fleet
    finally:
        fleet.close()


def test_a_dead_lettered_lane_request_is_requeued_onto_its_stream_and_answered(
    lane_fleet: ChaosFleet,
) -> None:
    model = register_chaos(lane_fleet.settings)
    client = lane_fleet.client
    high = lane_stream("cpu", high=True)
    for stream in lane_streams("cpu"):
        client.redis.xgroup_create(stream, LANE_GROUP, id="0", mkstream=True)
    request_id = f"poisoned-{uuid.uuid4().hex[:8]}"
    future = client.infer_async(
        model, chaos_input(0.0), priority=9, store=True, request_id=request_id
    )
    for start in (">", "0"):  # two deliveries to a consumer that never answers, then dies
        client.redis.xreadgroup(LANE_GROUP, "dead@nowhere", {high: start})
    worker = lane_fleet.worker()
    with pytest.raises(JobFailed) as caught:
        future.result(WAIT_S)
    assert caught.value.error_code == "dead_lettered"
    [entry] = list_dead_letters(client.redis)
    assert (entry.job_id, entry.task) == (request_id, TASK_LANE)

    with Paused(client, worker):  # the requeued request waits on the high-priority stream
        done = torchfleet(lane_fleet.env, "deadletter", "requeue", request_id, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"requeued": [request_id], "refused": {}, "not_found": []}
        assert (client.redis.xlen(high), client.redis.xlen(lane_stream("cpu"))) == (1, 0)
    result = client.wait(request_id, timeout=WAIT_S)  # stored: the CLI's way to read it
    assert result["job_id"] == request_id and result["model"] == model
    assert result["worker"] == worker.name
    assert list_dead_letters(client.redis) == []


def test_a_dead_lettered_job_keeps_its_device_queue_and_priority(
    client: Client, worker: WorkerProcess, fleet_settings: Settings
) -> None:
    model = register_cnn(fleet_settings).name
    job_id = f"routed-{uuid.uuid4().hex[:8]}"
    doom(client.redis, job_id, fleet_settings.max_deliveries)
    client.submit_infer(model, batch(1), job_id=job_id, device="cpu", priority=9)
    with pytest.raises(JobFailed) as caught:
        client.wait(job_id, timeout=WAIT_S)
    assert caught.value.error_code == "dead_lettered"
    [entry] = [e for e in list_dead_letters(client.redis) if e.job_id == job_id]
    assert (entry.queue, entry.priority) == ("infer.cpu", transport_priority(9))
    assert requeue(client.redis, client.app, [job_id]).requeued == [job_id]
    assert client.wait(job_id, timeout=WAIT_S)["model"] == model
