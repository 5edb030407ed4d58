"""The lane's part of the chaos report at a small size: a worker killed mid-batch, Redis
restarted and paused under lane load, a poison request; every request accounted for.

It starts a private fleet and kills several worker processes: it runs under ``make chaos``
(TORCHFLEET_CHAOS=1), not ``make test``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.client import Client
from tests.integration.chaos_harness import CHAOS_ONLY
from workers.bench.chaos_lane import LANE_FAULTS, run_lane
from workers.bench.chaos_report import lane_failed

pytestmark = [pytest.mark.integration, CHAOS_ONLY]
REQUESTS = 100
SETTLE_S = 60.0


def test_every_lane_request_is_answered_or_dead_lettered_under_every_fault(
    tmp_path: Path,
) -> None:
    lane = run_lane(REQUESTS, 2, seed=7, root=tmp_path, client=Client, settle_s=SETTLE_S)
    assert lane["lost"] == 0, lane["lost_ids"]
    assert lane["requests_sent"] == lane["answered"] + lane["dead_lettered"]
    assert lane["requests_sent"] >= REQUESTS and lane["requests_refused"] == 0
    assert lane["error_replies"] == 0, lane["error_samples"]
    assert (lane["dead_lettered"], lane["poison_dead_lettered"]) == (1, 1)  # the poison alone
    assert lane["dead_letters_missing"] == [] and lane["left_in_lane"] == 0
    faults = {f["fault"]: f for f in lane["faults"]}
    assert set(faults) == set(LANE_FAULTS)
    assert all(f["recovery_s"] is not None for f in faults.values())
    assert faults["kill_mid_batch"]["batch_killed"] > 1  # a real batch died with the worker
    assert not lane_failed(lane)
