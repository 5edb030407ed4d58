"""Operations against real Redis and real workers: status, stats, groups, priorities,
deadlines and cancellation."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from producers.client import Client, UnknownJob, read_metas
from shared.deadletter import delivery_counts
from shared.settings import Settings
from tests.fleet import WorkerProcess, recorded, until
from tests.integration.test_infer import Registered, batch, expected_labels, register_cnn

pytestmark = pytest.mark.integration

WAIT_S = 60
BACKLOG_DB = 7


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "producers.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def own_record(client: Client, name: str) -> dict[str, Any] | None:
    return next((w for w in client.status()["workers"] if w["name"] == name), None)


@pytest.fixture
def cnn(fleet_settings: Settings) -> Registered:
    return register_cnn(fleet_settings, seed=uuid.uuid4().int % 2**31)


# ------------------------------------------------------------------ status
def test_status_shows_the_worker_with_device_queues_cache_and_jobs_done(
    client: Client, worker: WorkerProcess, cnn: Registered, fleet_env: dict[str, str]
) -> None:
    before = until(lambda: own_record(client, worker.name), "the worker's heartbeat")
    done_before = before["jobs"].get("success", 0)
    for seed in range(3):
        client.wait(client.submit_infer(cnn.name, batch(2, seed)), timeout=WAIT_S)
    answered = time.time()  # a record written before this may predate the jobs it counts
    record = until(
        lambda: (
            (r := own_record(client, worker.name))
            and r["last_seen"] > answered
            and r["jobs"].get("success", 0) >= done_before + 3
            and r
        ),
        "the heartbeat to count the jobs",
    )
    assert record["device"] == "cpu" and record["gpu_lease"] is None
    assert {"infer", "infer.cpu", "train.cpu"} <= set(record["queues"])
    assert record["pid"] == worker.process.pid  # type: ignore[union-attr]
    digest = client.registry.resolve(cnn.name).record.digest
    assert digest in record["cached"]
    assert record["last_seen"] >= record["started_at"]

    out = cli(fleet_env, "status", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    shown = next(w for w in report["workers"] if w["name"] == worker.name)
    assert f"{cnn.name}:{cnn.version}:base" in shown["cached_refs"][digest]
    assert set(report["queues"]) >= {"train", "compress", "infer", "infer.cuda"}
    assert report["queues"]["infer"]["lanes"].keys() == {"0", "3", "6", "9"}
    assert isinstance(report["deadletter"], int)
    table = cli({**fleet_env, "COLUMNS": "250"}, "status")
    assert table.returncode == 0 and worker.name.split("@")[0] in table.stdout


# ------------------------------------------------------------------ stats
def test_stats_group_jobs_by_model_and_worker_with_percentiles(
    client: Client,
    worker: WorkerProcess,
    cnn: Registered,
    fleet_env: dict[str, str],
    tmp_path: Path,
) -> None:
    for seed in range(5):
        client.wait(client.submit_infer(cnn.name, batch(3, seed)), timeout=WAIT_S)
    bad = client.submit_infer(cnn.name, batch(2), labels=[1, 2, 3])  # 3 labels for 2 inputs
    assert client.wait_state(bad, timeout=WAIT_S).error_code == "bad_tensor"
    recorded(client, [bad])  # records land a moment after the answers: the last one is in

    groups = client.stats(model=cnn.name, since_s=600)
    # The failed job carries its kind and model too (no variant: it never resolved one).
    failed, group = sorted(groups, key=lambda g: g["variant"] != "-")
    assert (failed["kind"], failed["model"], failed["variant"]) == ("infer", cnn.name, "-")
    assert failed["count"] == 1 and failed["error_rate"] == 1.0
    assert (group["model"], group["variant"], group["device"]) == (cnn.name, "base", "cpu")
    assert group["kind"] == "infer" and group["worker"] == worker.name
    assert group["count"] == 5
    assert group["error_rate"] == 0.0 and group["throughput_per_s"] > 0
    latency = group["latency_ms"]
    assert {"total_worker_ms", "compute_ms", "queued_ms", "wall_ms"} <= latency.keys()
    assert 0 < latency["compute_ms"]["p50"] <= latency["compute_ms"]["p99"]

    out = cli(fleet_env, "stats", "--model", cnn.name, "--since", "10m", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["records"] == 6 and sorted(g["count"] for g in report["groups"]) == [1, 5]

    everything = client.stats(since_s=600)
    failures = [g for g in everything if g["outcomes"].get("bad_tensor")]
    assert failures and all(g["error_rate"] > 0 for g in failures)

    plot = tmp_path / "latency.png"
    drawn = cli(fleet_env, "stats", "--model", cnn.name, "--plot", str(plot), "--json")
    assert drawn.returncode == 0, drawn.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(drawn.stdout)["plot"]["bucket_s"] >= 1
    assert cli(fleet_env, "stats", "--since", "yesterday").returncode == 2


# ------------------------------------------------------------------ groups
def _group_jobs(cnn: Registered) -> tuple[list[dict[str, Any]], float]:
    """Four jobs: two labelled right, one labelled wrong, one unlabelled; the expected accuracy."""
    jobs = []
    for seed, labelling in enumerate(["right", "right", "wrong", None]):
        inputs = batch(2 + seed, seed)
        truth = expected_labels(cnn.module, inputs)
        labels = truth if labelling == "right" else [(y + 1) % 10 for y in truth]
        job: dict[str, Any] = {"model": cnn.name, "inputs": inputs}
        if labelling is not None:
            job["labels"] = labels
        jobs.append(job)
    return jobs, (2 + 3) / (2 + 3 + 4)


def _encoded(job: dict[str, Any]) -> dict[str, Any]:
    from producers.encoding import encode_array

    inputs = encode_array(np.asarray(job["inputs"])).model_dump()
    return {"kind": "infer", **job, "inputs": inputs}


def test_group_aggregates_outcomes_accuracy_and_latency(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    jobs, accuracy = _group_jobs(cnn)
    group_id = client.submit_group([_encoded(j) for j in jobs])
    members = client.group_members(group_id)
    assert len(members) == 4
    for job_id in members:
        client.wait(job_id, timeout=WAIT_S)
    summary = client.group_results(group_id)
    assert (summary.count, summary.done, summary.succeeded, summary.pending) == (4, 4, 4, 0)
    assert summary.accuracy == pytest.approx(accuracy, abs=1e-6)
    assert summary.labelled_inputs == 9 and summary.inputs == 2 + 3 + 4 + 5
    assert summary.models == [f"{cnn.name}:{cnn.version}:base"]
    assert summary.latency["total_worker_ms"].p50 > 0

    fleet = client.wait_fleet_summary(group_id, timeout=WAIT_S)
    assert fleet.aggregated_by == worker.name
    assert fleet.accuracy == pytest.approx(accuracy, abs=1e-6) and fleet.done == 4


def test_group_with_a_failed_member_is_still_aggregated_in_the_fleet(
    client: Client,
    worker: WorkerProcess,
    cnn: Registered,
    fleet_env: dict[str, str],
    tmp_path: Path,
) -> None:
    jobs, _ = _group_jobs(cnn)
    spec = [_encoded(j) for j in jobs[:2]]
    spec.append({**_encoded(jobs[2]), "labels": [0]})  # wrong number of labels: bad_tensor
    path = tmp_path / "group.json"
    path.write_text(
        json.dumps(
            {"kind": "group", "jobs": [{k: v for k, v in j.items() if k != "kind"} for j in spec]}
        )
    )
    out = cli(fleet_env, "group", "submit", str(path), "--json")
    assert out.returncode == 0, out.stderr
    group_id = json.loads(out.stdout)["group_id"]

    fleet = client.wait_fleet_summary(group_id, timeout=WAIT_S)
    assert (fleet.done, fleet.succeeded, fleet.failed) == (3, 2, 1)
    assert fleet.outcomes == {"bad_tensor": 1, "success": 2}
    assert fleet.accuracy == pytest.approx(1.0)

    shown = cli(fleet_env, "group", "results", group_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["failed"] == 1
    unknown = cli(fleet_env, "group", "results", "g-nope")
    assert unknown.returncode == 2 and "no group" in unknown.stderr


# ------------------------------------------------------------------ deadlines, cancellation
def test_a_job_past_its_deadline_is_expired_not_computed(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    late = client.submit_infer(cnn.name, batch(1), deadline=time.time() - 1)
    state = client.wait_state(late, timeout=WAIT_S)
    assert (state.status, state.error_code) == ("FAILURE", "expired")

    name = f"late-{uuid.uuid4().hex[:8]}"
    train = client.submit_train(model_name=name, deadline=time.time() - 1)
    state = client.wait_state(train, timeout=WAIT_S)
    assert (state.status, state.error_code) == ("FAILURE", "expired")
    assert name not in client.registry.names()  # never trained, so never registered


def test_cancel_of_an_unknown_job_is_a_clear_error(
    client: Client, fleet_env: dict[str, str]
) -> None:
    with pytest.raises(UnknownJob, match="no job 'never-submitted'"):
        client.cancel("never-submitted")
    out = cli(fleet_env, "cancel", "never-submitted")
    assert out.returncode == 2 and "no job 'never-submitted' was submitted" in out.stderr


def test_cancel_stops_a_running_training_job_between_epochs(
    client: Client, worker: WorkerProcess, fleet_env: dict[str, str]
) -> None:
    name = f"cancelled-{uuid.uuid4().hex[:8]}"
    job_id = client.submit_train(
        model_name=name,
        arch="mlp",
        epochs=1000,  # the most a job may ask for; cancelled after the first
        batch_size=32,
        dataset={"name": "digits", "limit": 200, "image_size": 8, "channels": 1},
    )
    cancelled_at: list[int] = []

    def cancel_once_training(state: Any) -> None:
        if not cancelled_at and state.progress.get("epoch", 0) >= 1:
            out = cli(fleet_env, "cancel", job_id, "--json")
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["outcome"] == "cancel requested"
            cancelled_at.append(state.progress["epoch"])

    state = client.wait_state(job_id, timeout=120, on_progress=cancel_once_training)
    assert cancelled_at, "the job finished before it could be cancelled"
    assert (state.status, state.error_code) == ("REVOKED", "cancelled")
    assert name not in client.registry.names()
    checkpoints = Path(client.settings.artifacts) / "checkpoints" / job_id
    assert not checkpoints.exists()  # nothing will resume it, so nothing is kept
    assert client.cancel(job_id).status == "REVOKED"  # a finished job is left as it is


# ------------------------------------------------------------------ device routing
def test_a_job_that_asks_for_a_device_goes_to_that_devices_queue(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    on_cpu = client.submit_infer(cnn.name, batch(1), device="cpu")
    assert client.wait(on_cpu, timeout=WAIT_S)["device"] == "cpu"

    before = client.status()["queues"]["infer.cuda"]["depth"]
    on_gpu = client.submit_infer(cnn.name, batch(1), device="cuda")  # no GPU worker here
    assert client.status()["queues"]["infer.cuda"]["depth"] == before + 1
    assert client.state(on_gpu).status == "PENDING"
    client.cancel(on_gpu)


# ------------------------------------------------------------------ a backlog: priorities
@dataclass
class Backlog:
    client: Client
    normal: list[str]
    high: list[str]
    cancelled: str
    expired: str


@pytest.fixture(scope="module")
def backlog(
    fleet_env: dict[str, str], fleet_dir: Path, fleet_settings: Settings
) -> Iterator[Backlog]:
    """Jobs queued on a private database before its only worker (one thread) starts."""
    url = fleet_settings.redis_url.rsplit("/", 1)[0] + f"/{BACKLOG_DB}"
    settings = Settings(redis_url=url, artifacts=fleet_settings.artifacts)
    env = {**fleet_env, "TORCHFLEET_REDIS_URL": url}
    model = register_cnn(settings, seed=3)
    with Client(settings) as client:
        normal = [client.submit_infer(model.name, batch(1, i)) for i in range(4)]
        cancelled = client.submit_infer(model.name, batch(1))
        expired = client.submit_infer(model.name, batch(1), deadline=time.time() - 1)
        high = [client.submit_infer(model.name, batch(1, i), priority=9) for i in range(4)]
        assert client.cancel(cancelled).status == "PENDING"
        lanes = client.status()["queues"]["infer"]["lanes"]
        assert (lanes["0"], lanes["9"]) == (4, 6)
        solo = WorkerProcess(env=env, log_dir=fleet_dir, queues="infer", concurrency=1).start()
        try:
            solo.wait_ready(client)
            for job_id in [*normal, *high, cancelled, expired]:
                client.wait_state(job_id, timeout=WAIT_S)
            yield Backlog(client, normal, high, cancelled, expired)
        finally:
            solo.kill()  # a private database: nothing to hand over, no need to wait


def _done_at(client: Client, job_ids: list[str]) -> list[datetime]:
    return [datetime.fromisoformat(m["date_done"]) for m in read_metas(client.app, job_ids) if m]


def test_high_priority_jobs_are_consumed_before_the_normal_backlog(backlog: Backlog) -> None:
    high = _done_at(backlog.client, backlog.high)
    normal = _done_at(backlog.client, backlog.normal)
    assert len(high) == len(normal) == 4
    assert max(high) < min(normal)


def test_a_job_cancelled_while_queued_is_never_run(backlog: Backlog) -> None:
    state = backlog.client.state(backlog.cancelled)
    assert (state.status, state.error_code) == ("REVOKED", "cancelled")
    records = recorded(backlog.client, [backlog.cancelled, backlog.expired])
    outcomes = {r["job_id"]: r["outcome"] for r in records}
    assert outcomes[backlog.cancelled] == "cancelled"
    assert outcomes[backlog.expired] == "expired"
    # delivered to a worker that missed the revoke broadcast, dropped there: not executed
    counts = delivery_counts(backlog.client.redis, backlog.cancelled)
    assert counts == {"delivered": 1, "executed": 0}


def test_status_counts_queued_jobs_per_lane_and_dead_letters(backlog: Backlog) -> None:
    report = backlog.client.status()
    assert report["queues"]["infer"]["depth"] == 0  # the backlog drained
    backlog.client.redis.rpush("torchfleet:deadletter", json.dumps({"job_id": "x"}))
    assert backlog.client.status()["deadletter"] == 1
