"""A full Redis must not take the fleet down (issue 14, item 1): what a job keeps in Redis is
bounded by bytes and by age, and a Redis at maxmemory is a pause, not a crash.

One private redis-server and one worker (tight limits) for the module; the full-Redis test
runs last and gives the memory back.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from producers.client import Client
from shared.errors import RedisFull
from shared.names import (
    TASK_INFER,
    cancel_key,
    input_key,
    job_key,
    result_key,
)
from tests.fleet import until
from tests.integration.chaos_harness import (
    REDIS_DOWN_WARNINGS,
    ChaosFleet,
    chaos_input,
    drain,
    open_fleet,
    register_chaos,
    submit_many,
)
from tests.integration.deliveries import doom
from workers.bench.chaos_memory import fill_redis, free_redis, run_memory
from workers.bench.chaos_models import MODE_HOLD

pytestmark = [pytest.mark.integration, REDIS_DOWN_WARNINGS]  # or full: the same warning
WAIT_S = 60
PAYLOAD_CAP = 256 * 1024
RESULT_CAP = 32 * 1024
FAILURE_TTL_S = 120
LIMITS = {
    "TORCHFLEET_MAX_PAYLOAD_BYTES": str(PAYLOAD_CAP),
    "TORCHFLEET_MAX_RESULT_BYTES": str(RESULT_CAP),
    "TORCHFLEET_FAILURE_TTL_S": str(FAILURE_TTL_S),
}
CONCURRENCY = 2


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFleet]:
    chaos = open_fleet(Path(tmp_path_factory.mktemp("memory")))
    try:
        chaos.worker(concurrency=CONCURRENCY, **LIMITS)
        yield chaos
    finally:
        chaos.close()


@pytest.fixture(scope="module")
def model(fleet: ChaosFleet) -> str:
    return register_chaos(fleet.settings)


@pytest.fixture(scope="module")
def stored(fleet: ChaosFleet) -> Iterator[Client]:
    """A client that stores every tensor beside its message."""
    with Client(fleet.settings.model_copy(update={"inline_input_bytes": 0})) as client:
        yield client


def send_raw(fleet: ChaosFleet, job_id: str, payload: dict[str, Any]) -> None:
    """An infer job straight to the broker, past the producer's checks (a hostile producer)."""
    fleet.client.redis.set(job_key(job_id), "infer", ex=600)
    fleet.client.app.send_task(TASK_INFER, args=[payload], task_id=job_id)


@pytest.fixture(scope="module")
def outcomes(fleet: ChaosFleet, model: str, stored: Client) -> dict[str, Any]:
    """One job with stored inputs per terminal outcome, each waited for; by outcome."""
    ids = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in ("cancelled", "dead", "refused")}
    stored.redis.set(cancel_key(ids["cancelled"]), "1", ex=600)  # cancelled before it starts
    doom(stored.redis, ids["dead"], fleet.settings.max_deliveries)
    two = chaos_input(n=2)
    jobs = {
        "success": stored.submit_infer(model, two),
        "failure": stored.submit_infer("no-such-model", two),
        "expired": stored.submit_infer(model, two, deadline=time.time() - 1),
        "cancelled": stored.submit_infer(model, two, job_id=ids["cancelled"]),
        "dead": stored.submit_infer(model, two, job_id=ids["dead"]),
    }
    # Declares more than the worker's cap: refused before its bytes are read.
    refused = ids["refused"]
    stored.redis.set(input_key(refused), b"\0" * 64, ex=600)
    inputs = {"dtype": "float32", "shape": [8192, 1, 4, 4], "key": input_key(refused)}
    send_raw(fleet, refused, {"kind": "infer", "model": model, "inputs": inputs})
    jobs["refused"] = refused
    states = drain(stored, jobs.values(), WAIT_S)
    return {name: (job_id, states[job_id]) for name, job_id in jobs.items()}


# ------------------------------------------------------------------ payload caps
def test_the_worker_refuses_stored_inputs_larger_than_declared_and_over_its_cap(
    fleet: ChaosFleet, model: str
) -> None:
    job_id = f"liar-{uuid.uuid4().hex[:8]}"
    fleet.client.redis.set(input_key(job_id), b"\0" * (PAYLOAD_CAP * 2), ex=600)
    inputs = {"dtype": "float32", "shape": [1, 1, 4, 4], "key": input_key(job_id)}
    send_raw(fleet, job_id, {"kind": "infer", "model": model, "inputs": inputs})
    state = drain(fleet.client, [job_id], WAIT_S)[job_id]
    assert (state.status, state.error_code) == ("FAILURE", "invalid_job")
    assert "TORCHFLEET_MAX_PAYLOAD_BYTES" in (state.error or "")


# ------------------------------------------------------------------ inputs and failure TTLs
def test_stored_inputs_go_on_every_terminal_outcome(
    fleet: ChaosFleet, outcomes: dict[str, Any]
) -> None:
    codes = {name: (state.status, state.error_code) for name, (_, state) in outcomes.items()}
    assert codes == {
        "success": ("SUCCESS", None),
        "failure": ("FAILURE", "model_not_found"),
        "expired": ("FAILURE", "expired"),
        "cancelled": ("REVOKED", "cancelled"),
        "dead": ("FAILURE", "dead_lettered"),
        "refused": ("FAILURE", "invalid_job"),
    }
    keys = [input_key(job_id) for job_id, _ in outcomes.values()]
    until(lambda: not fleet.client.redis.exists(*keys), "every stored input to be deleted")


def test_failed_expired_cancelled_and_dead_lettered_results_expire_sooner(
    fleet: ChaosFleet, outcomes: dict[str, Any]
) -> None:
    ttls = {name: fleet.client.redis.ttl(result_key(job)) for name, (job, _) in outcomes.items()}
    assert ttls.pop("success") > FAILURE_TTL_S
    assert all(0 < ttl <= FAILURE_TTL_S for ttl in ttls.values()), ttls


# ------------------------------------------------------------------ result size cap
def test_an_oversize_result_is_an_error_result_not_a_huge_key(
    fleet: ChaosFleet, model: str
) -> None:
    job_id = fleet.client.submit_infer(model, chaos_input(n=1024), top_k=2)
    state = drain(fleet.client, [job_id], WAIT_S)[job_id]
    assert (state.status, state.error_code) == ("FAILURE", "result_too_large")
    assert "TORCHFLEET_MAX_RESULT_BYTES" in (state.error or "")
    assert "top_k" in (state.error or "") and "split" in (state.error or "")
    assert fleet.client.redis.strlen(result_key(job_id)) < RESULT_CAP
    small = fleet.client.submit_infer(model, chaos_input(n=8), top_k=2)
    assert drain(fleet.client, [small], WAIT_S)[small].status == "SUCCESS"


# ------------------------------------------------------------------ Redis at maxmemory
def paused_workers(client: Client) -> list[str]:
    return [w["name"] for w in client.status()["workers"] if w.get("paused")]


def test_a_full_redis_pauses_the_worker_which_resumes_when_memory_frees(
    fleet: ChaosFleet, model: str
) -> None:
    worker = fleet.workers[0]
    admin = redis.Redis.from_url(fleet.redis.url)
    fleet.hold()
    held = [
        fleet.client.submit_infer(model, chaos_input(MODE_HOLD, seed=i), job_id=f"held-{i}")
        for i in range(CONCURRENCY)
    ]
    fleet.wait_holding(CONCURRENCY)  # every slot busy: the queued jobs wait behind them
    queued = submit_many(fleet.client, model, 20, f"q-{uuid.uuid4().hex[:6]}")
    try:
        fill_redis(admin)
        fleet.release()  # their answers, acks and next deliveries all meet a full Redis
        until(lambda: paused_workers(fleet.client), "the worker to report a pause", WAIT_S)
        assert worker.alive()
        assert fleet.client.status()["redis_memory"]["full"]
        with pytest.raises(RedisFull, match="maxmemory"):
            fleet.client.submit_infer(model, chaos_input(seed=99))
    finally:
        free_redis(admin, unlimited=True)
    states = drain(fleet.client, [*held, *queued], 120)
    assert {job: s.status for job, s in states.items()} == dict.fromkeys(states, "SUCCESS")
    until(lambda: not paused_workers(fleet.client), "the worker to report it resumed", WAIT_S)
    assert worker.alive()
    assert "Unrecoverable error" not in worker.log()
    after = fleet.client.submit_infer(model, chaos_input(seed=7))
    assert drain(fleet.client, [after], WAIT_S)[after].status == "SUCCESS"
    admin.close()


def test_the_chaos_reports_full_redis_check_loses_nothing(tmp_path: Path) -> None:
    report = run_memory(30, tmp_path, Client)
    assert (report["jobs_submitted"], report["completed"], report["lost"]) == (30, 30, 0)
    assert report["jobs_before_full"] == 10 and report["submissions_refused"] >= 3
    assert (report["workers_alive"], report["workers_crashed"]) == (2, 0)
