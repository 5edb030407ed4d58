"""The bench's tasks wait on a queue of their own: production workers never run them, a
worker started with ``--bench`` (as `torchfleet bench --spawn` starts its own) does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from producers.bench.plan import Plan
from producers.bench.run import FleetArms
from producers.client import Client
from shared.names import QUEUE_BENCH, TASK_NAIVE_INFER, TASK_NOOP, TASK_QUEUES, queue_keys
from tests.fleet import WorkerProcess, until

pytestmark = pytest.mark.integration
WAIT_S = 60


def queues_of(client: Client, name: str) -> list[str] | None:
    """The queues a live worker's heartbeat says it consumes (None before its first beat)."""
    record = next((w for w in client.status()["workers"] if w["name"] == name), None)
    return None if record is None else list(record.get("queues", []))


def depth(client: Client, queue: str) -> int:
    return sum(int(client.redis.llen(key)) for key in queue_keys(queue))


def test_bench_tasks_never_reach_a_production_worker_only_a_bench_one(
    client: Client, worker: WorkerProcess, fleet_env: dict[str, str], fleet_dir: Path
) -> None:
    assert TASK_QUEUES[TASK_NOOP] == TASK_QUEUES[TASK_NAIVE_INFER] == QUEUE_BENCH
    production = until(lambda: queues_of(client, worker.name), "the worker's heartbeat")
    assert QUEUE_BENCH not in production
    logged: list[str] = []
    arms = FleetArms(client, None, {}, Plan.quick(), "", logged.append, None)  # type: ignore[arg-type]
    assert not arms.bench_served()  # `torchfleet bench` on this fleet skips those arms
    assert "torchfleet worker --bench" in logged[0]
    sent: Any = client.app.send_task(TASK_NOOP, args=[7])
    assert depth(client, QUEUE_BENCH) == 1  # waiting for a bench worker, not on infer
    bench = WorkerProcess(
        env=fleet_env, log_dir=fleet_dir, queues="compress", extra=["--bench"]
    ).start()
    try:
        bench.wait_ready(client)
        assert sent.get(timeout=WAIT_S) == 7
        assert QUEUE_BENCH in until(lambda: queues_of(client, bench.name), "its heartbeat")
        assert arms.bench_served()
    finally:
        bench.stop()
