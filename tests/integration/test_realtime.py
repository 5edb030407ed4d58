"""Real-time serving through real Redis and real workers: alias hot-swap under load, Prometheus
metrics over HTTP, micro-batching under concurrent load with a bad job in the batch, and the
`torchfleet bench` JSON contract."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from producers.client import Client
from producers.encoding import encode_array
from shared.connection import redis_client
from shared.embedded import EmbeddedRedis, free_port
from shared.manifest import Manifest
from shared.registry import ModelRegistry, VariantRecord
from shared.settings import Settings
from tests.fleet import WorkerProcess, register_module
from tests.integration.test_infer import batch, expected_labels, register_cnn
from workers.artifacts import ArtifactStore
from workers.zoo import create_model

pytestmark = pytest.mark.integration


def add_variant(settings: Settings, name: str, version: int, variant: str, seed: int) -> str:
    """Another set of cifar_cnn weights as a variant of ``name:version``; its digest."""
    torch.manual_seed(seed)
    module = create_model("cifar_cnn").eval()
    manifest = Manifest(arch="cifar_cnn", input_shape=[3, 32, 32], num_classes=10)
    stored = ArtifactStore(settings.artifacts).put_model(module.state_dict(), manifest)
    ModelRegistry(redis_client(settings)).register(
        name, version, variant, VariantRecord(digest=stored.sha256, arch="cifar_cnn")
    )
    return stored.sha256


def test_promoting_an_alias_under_load_swaps_the_model_with_no_failed_request(
    client: Client, worker: WorkerProcess, fleet_settings: Settings
) -> None:
    base = register_cnn(fleet_settings, seed=uuid.uuid4().int % 2**31)
    registry = ModelRegistry(redis_client(fleet_settings))
    old_digest = registry.get(base.name, base.version).digest
    new_digest = add_variant(fleet_settings, base.name, base.version, "fresh", seed=12345)
    registry.set_alias(base.name, "production", base.version)
    ref = f"{base.name}@production"
    answers: list[tuple[bool, str, str]] = []  # (submitted after the move, status, digest)
    lock = threading.Lock()
    before_move, after_move, moved, stop = (threading.Event() for _ in range(4))

    def stream() -> None:
        while not stop.is_set():
            after = moved.is_set()
            state = client.wait_state(client.submit_infer(ref, batch(1)), timeout=60)
            digest = (state.result or {}).get("model_digest", "")
            with lock:
                answers.append((after, state.status, digest))
                if sum(1 for a, _, _ in answers if not a) >= 6:
                    before_move.set()
                if sum(1 for a, _, _ in answers if a) >= 12:
                    after_move.set()

    streams = [threading.Thread(target=stream) for _ in range(3)]
    for t in streams:
        t.start()
    try:
        assert before_move.wait(timeout=120)
        registry.set_alias(base.name, "production", base.version, "fresh")
        moved.set()
        assert after_move.wait(timeout=120)
    finally:
        stop.set()
        for t in streams:
            t.join(timeout=120)
    assert all(status == "SUCCESS" for _, status, _ in answers), answers
    # A job sent before the move may be resolved after it; one sent after never sees the old.
    assert old_digest in {d for after, _, d in answers if not after}
    assert {d for after, _, d in answers if not after} <= {old_digest, new_digest}
    assert {d for after, _, d in answers if after} == {new_digest}


def test_worker_preloads_and_serves_prometheus_metrics_that_move_with_jobs(
    client: Client, fleet_env: dict[str, str], fleet_dir: Path, fleet_settings: Settings
) -> None:
    cnn = register_cnn(fleet_settings, seed=uuid.uuid4().int % 2**31)
    port = free_port()
    env = {
        **fleet_env,
        "TORCHFLEET_METRICS_PORT": str(port),
        "TORCHFLEET_PRELOAD": json.dumps([cnn.name]),
    }
    process = WorkerProcess(env=env, log_dir=fleet_dir, queues="infer", concurrency=2).start()
    try:
        process.wait_ready(client)
        mine = []
        for _ in range(100):  # other workers share the queue: send until two land on this one
            result = client.wait(client.submit_infer(cnn.name, batch(2)), timeout=60)
            if result["worker"] == process.name:
                mine.append(result)
            if len(mine) == 2:
                break
        assert len(mine) == 2, process.log()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        process.stop()
    assert all(r["cache_hit"] for r in mine)  # preloaded at start-up: no request paid a load
    values = parse_metrics(text)
    job = (("device", "cpu"), ("model", cnn.name), ("variant", "base"))
    assert values["torchfleet_worker_total_ms_count", job] == 2
    assert values["torchfleet_batch_size_sum", job] == 4
    assert values["torchfleet_compute_ms_sum", job] > 0
    assert values["torchfleet_queue_wait_ms_count", job] == 2
    assert values["torchfleet_cache_misses_total", (("device", "cpu"),)] == 1  # the preload
    assert values["torchfleet_cache_hits_total", (("device", "cpu"),)] == 2
    assert values["torchfleet_cache_bytes", (("device", "cpu"),)] > 0


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture(scope="module")
def lone_fleet(
    fleet_env: dict[str, str], fleet_dir: Path
) -> Iterator[tuple[Client, WorkerProcess, Settings]]:
    """A worker alone on a Redis of its own (no other worker can take its jobs), running one
    micro-batch at a time, so a slow job holds it deterministically."""
    with EmbeddedRedis() as server:
        settings = Settings(redis_url=server.url, artifacts=fleet_env["TORCHFLEET_ARTIFACTS"])
        env = {**fleet_env, "TORCHFLEET_REDIS_URL": server.url, "TORCHFLEET_BATCH_PARALLEL": "1"}
        process = WorkerProcess(env=env, log_dir=fleet_dir, queues="infer").start()
        with Client(settings) as client:
            try:
                process.wait_ready(client)
                yield client, process, settings
            finally:
                process.stop()


def test_jobs_queued_behind_a_busy_worker_share_a_forward_and_a_bad_one_fails_alone(
    lone_fleet: tuple[Client, WorkerProcess, Settings],
) -> None:
    client, worker, settings = lone_fleet
    cnn = register_cnn(settings, seed=uuid.uuid4().int % 2**31)
    client.wait(client.submit_infer(cnn.name, batch(1)), timeout=60)  # warm: no load in the way
    slow = slow_model(settings)
    # Loaded first: once the 64-input job is active it is in its forward within milliseconds,
    # not still loading the model (the jobs below would each run alone meanwhile).
    client.wait(client.submit_infer(slow, np.zeros((1, 3, 32, 32), dtype=np.float32)), timeout=120)
    hold = client.submit_infer(slow, np.zeros((64, 3, 32, 32), dtype=np.float32))
    wait_until_active(client, worker, hold)
    # While the worker computes the slow job, these reach the batcher and queue up together.
    inputs = [batch(1, seed=i) for i in range(6)]
    good = [client.submit_infer(cnn.name, x) for x in inputs]
    bad = client.submit_infer(cnn.name, encode_array(batch(1)[:, :, :16]))
    results = [client.wait(job_id, timeout=120) for job_id in good]
    bad_state = client.wait_state(bad, timeout=120)
    client.wait(hold, timeout=300)
    assert bad_state.status == "FAILURE" and bad_state.error_code == "bad_tensor"
    assert max(r["batch_size"] for r in results) > 1, [r["batch_size"] for r in results]
    assert all(r["worker"] == worker.name for r in results)
    for x, result in zip(inputs, results, strict=True):
        assert [p[0]["label"] for p in result["predictions"]] == expected_labels(cnn.module, x)


def slow_model(settings: Settings) -> str:
    """A resnet18 (slow on a CPU: a 64-input job holds the worker for a while)."""
    torch.manual_seed(0)
    module = create_model("resnet18").eval()
    manifest = Manifest(arch="resnet18", input_shape=[3, 32, 32], num_classes=10)
    name = f"slow-{uuid.uuid4().hex[:8]}"
    register_module(settings, module, manifest, name)
    return name


def wait_until_active(client: Client, worker: WorkerProcess, job_id: str) -> None:
    """Until the worker reports the job among its active tasks (a control broadcast round
    trip per try; independent of task_track_started and task events)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        inspect = client.app.control.inspect(destination=[worker.name], timeout=0.5)
        active = (inspect.active() or {}).get(worker.name, [])
        if any(task.get("id") == job_id for task in active):
            return
        if client.state(job_id).finished:
            raise AssertionError(f"job {job_id} finished before it was seen running")
    raise TimeoutError(f"job {job_id} was never seen running on {worker.name}")


def test_bench_quick_json_has_the_documented_shape(fleet_dir: Path) -> None:
    command = [
        sys.executable, "-m", "producers.cli", "bench", "--quick", "--json", "--spawn",
        "--producers", "1,2", "--jobs", "8", "--drain", "200",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert {"cpu", "cores", "torch", "celery", "device"} <= set(report["machine"])
    arms = {row["arm"] for row in report["results"]}
    assert arms == {
        "floor",
        "celery_noop",
        "naive",
        "fleet_batched",
        "fleet_unbatched",
        "fleet_cold",
        "lane_batched",
        "lane_unbatched",
        "lane_drain",
        "floor_beside_drain",
    }
    keys = {
        "arm",
        "model",
        "producers",
        "inputs_per_job",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "throughput",
    }
    assert all(keys <= set(row) for row in report["results"])
    assert {row["inputs_per_job"] for row in report["results"] if row["arm"] == "floor"} == {1, 32}
    [drain] = [row for row in report["results"] if row["arm"] == "lane_drain"]
    assert drain["jobs"] == 200 and drain["extra"]["busy_s"] > 0
    for row in report["results"]:  # the spawned worker and Redis are read from /proc
        sweeps = ("lane_batched", "lane_unbatched", "fleet_batched", "lane_drain")
        if row["arm"] in sweeps and row["inputs_per_job"] == 1:
            assert {"client_cpu_us", "worker_cpu_us", "redis_cpu_us"} <= set(row["extra"])
    figures = report["ratios"]["cifar_cnn"]
    lane_bars = ("lane_overhead_vs_noop", "lane_vs_celery_16", "lane_vs_naive_16",
                 "lane_batched_vs_unbatched_16", "drain_vs_floor")  # fmt: skip
    for name in (*lane_bars, "cold_start_s"):
        assert figures[name] is not None and name in report["bars"]
    for name in lane_bars[1:]:
        assert figures[name] > 0
    for name in ("overhead_vs_noop", "batched_vs_unbatched_16", "batched_vs_naive_16",
                 "efficiency_32"):  # fmt: skip
        assert figures[name] is not None and figures[name] > 0  # figures, no longer bars
        assert name not in report["bars"]
