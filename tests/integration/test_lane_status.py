"""`torchfleet status` shows the online lane's streams: length, waiting, pending by
consumer, live consumers and the oldest pending request's age (real Redis, real worker)."""

from __future__ import annotations

import json
import uuid

import pytest

from producers.client import Client
from shared.names import LANE_GROUP, lane_stream
from shared.settings import Settings
from tests.fleet import WorkerProcess, register_cnn
from tests.integration.test_cli import torchfleet
from tests.integration.test_infer import batch
from tests.integration.test_lane import Paused, raw_request

pytestmark = pytest.mark.integration
WAIT_S = 120


def test_status_shows_each_lane_streams_depth_pending_and_consumers(
    client: Client, worker: WorkerProcess, fleet_settings: Settings, fleet_env: dict[str, str]
) -> None:
    model = register_cnn(fleet_settings).name
    stream = lane_stream("cpu")
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"  # a consumer with no heartbeat: a dead worker
    with Paused(client, worker):
        entry_id = client.redis.xadd(stream, raw_request(model))  # type: ignore[arg-type]
        client.redis.xreadgroup(LANE_GROUP, ghost, {stream: ">"}, count=1)
        futures = [client.infer_async(model, batch(1, seed=i)) for i in range(2)]
        done = torchfleet(fleet_env, "status", "--json")
        table = torchfleet({**fleet_env, "COLUMNS": "200"}, "status")
        client.redis.xack(stream, LANE_GROUP, entry_id)  # the ghost's request, cleared
        client.redis.xdel(stream, entry_id)
    assert all(f.result(WAIT_S)["model"] == model for f in futures)

    assert done.returncode == 0, done.stderr
    lane = json.loads(done.stdout)["lane_streams"]
    normal, high = lane[stream], lane[lane_stream("cpu", high=True)]
    assert (normal["length"], normal["pending"], normal["waiting"]) == (3, 1, 2)
    assert normal["pending_by_consumer"] == {ghost: 1}
    assert normal["consumers"] == [worker.name] and ghost not in normal["consumers"]
    assert 0 <= normal["oldest_pending_s"] < WAIT_S
    assert (normal["lane"], normal["high_priority"]) == ("cpu", False)
    assert (high["length"], high["pending"], high["oldest_pending_s"]) == (0, 0, None)
    assert high["high_priority"] and high["consumers"] == [worker.name]
    assert lane[lane_stream("cuda")]["consumers"] == []  # no cuda worker, no group yet

    assert table.returncode == 0, table.stderr
    assert "online lane" in table.stdout and f"1 {ghost}:1" in table.stdout
