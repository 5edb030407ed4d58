"""Pipelines end to end on digits: train -> compress -> gate -> promote -> warm, and the
ways they stop (a failed gate leaves production alone; bad input fails before any work)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from producers.client import Client
from shared.deadletter import delivery_counts
from shared.errors import ModelNotFound
from shared.jobs import PipelineJob, PipelineResult
from shared.names import TASK_PIPELINE_TRAIN, fence_key
from tests.fleet import WorkerProcess, until

pytestmark = pytest.mark.integration

WAIT_S = 240
DIGITS = {"name": "digits", "limit": 300, "image_size": 8, "channels": 1}
QUICK: dict[str, Any] = {"latency_iters": 3, "warmup_iters": 0}


@pytest.fixture(scope="module")
def promoted(client: Client, worker: WorkerProcess) -> dict[str, Any]:
    """One pipeline that trains an MLP for an epoch, quantizes it and promotes the result."""
    name = f"pipe-{uuid.uuid4().hex[:8]}"
    job_id = client.submit_pipeline(
        train={"model_name": name, "arch": "mlp", "epochs": 1, "dataset": DIGITS},
        steps=[{"method": "quantize_dynamic", "variant": "int8"}],
        gates={"max_accuracy_drop": 50},
        **QUICK,
    )
    return client.wait(job_id, timeout=WAIT_S)


def test_pipeline_trains_compresses_promotes_and_warms(
    client: Client, worker: WorkerProcess, promoted: dict[str, Any]
) -> None:
    name = promoted["model"]
    assert promoted["status"] == "promoted", promoted.get("error")
    assert [s["stage"] for s in promoted["stages"]] == [
        "train",
        "compress",
        "gate",
        "promote",
        "warm",
    ]
    assert all(s["status"] == "done" for s in promoted["stages"])
    assert promoted["train"]["history"] and promoted["compress"]["variants"][0]["passed"]
    assert promoted["promoted"] == f"{name}:{promoted['version']}:int8"
    assert promoted["previous"] is None
    resolved = client.registry.resolve(f"{name}@production")
    assert (resolved.version, resolved.variant) == (promoted["version"], "int8")
    assert promoted["warmed"] == [worker.name]  # preloaded by the only inference worker
    warm = next(s for s in promoted["stages"] if s["stage"] == "warm")
    assert warm["detail"]["digest"] == resolved.record.digest

    # every stage's own result is kept under {job id}:{stage}
    gate = client.state(f"{promoted['job_id']}:gate")
    assert gate.status == "SUCCESS" and gate.result is not None
    assert gate.result["stages"][-1]["detail"]["chosen"] == "int8"
    # the train stage's checkpoint goes once its own answer is stored
    checkpoint = Path(client.settings.artifacts) / "checkpoints" / f"{promoted['job_id']}-train"
    until(lambda: not checkpoint.exists(), "the train stage's checkpoint to be dropped")

    served = client.wait(client.submit_infer(name, [[[[0.0] * 8] * 8]]), timeout=60)
    assert served["variant"] == "int8" and served["cache_hit"] is True


def test_a_failed_gate_stops_the_pipeline_and_leaves_production_unchanged(
    client: Client,
    worker: WorkerProcess,
    promoted: dict[str, Any],
    tmp_path: Path,
    fleet_env: dict[str, str],
) -> None:
    name, version = promoted["model"], promoted["version"]
    spec = {
        "source": f"{name}:{version}",
        "steps": [{"method": "prune_l1", "amount": 0.3, "variant": "l1"}],
        "gates": {"min_speedup": 1000},
        "eval_dataset": DIGITS,
        **QUICK,
    }
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "producers.cli", "pipeline", "submit", str(path)]
    out = subprocess.run(
        [*command, "--wait", "--json"],
        env=fleet_env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert out.returncode == 1, out.stderr  # nothing promoted
    report = json.loads(out.stdout)
    assert report["status"] == "gate_failed" and report["promoted"] is None
    assert "no variant passed the gates" in report["error"] and "speed-up" in report["error"]
    assert [s["status"] for s in report["stages"]] == ["done", "failed", "skipped", "skipped"]
    resolved = client.registry.resolve(f"{name}@production")
    assert (resolved.version, resolved.variant) == (version, "int8")
    assert client.registry.get(name, version, "int8")  # the passing variant stays registered


def test_promoting_a_named_variant_that_failed_its_gate_is_a_clear_error(
    client: Client, worker: WorkerProcess, promoted: dict[str, Any]
) -> None:
    name, version = promoted["model"], promoted["version"]
    job_id = client.submit_pipeline(
        source=f"{name}:{version}",
        steps=[{"method": "quantize_dynamic", "variant": "int8-strict"}],
        eval_dataset=DIGITS,
        gates={"max_accuracy_drop": 0, "min_speedup": 1000},
        variant="int8-strict",
        **QUICK,
    )
    report = client.wait(job_id, timeout=WAIT_S)
    assert report["status"] == "gate_failed"
    assert report["error_code"] == "gate_failed"
    assert "'int8-strict' failed its gates" in report["error"]
    assert client.registry.resolve(f"{name}@production").variant == "int8"


def test_a_pipeline_from_a_missing_model_fails_before_it_is_queued(client: Client) -> None:
    with pytest.raises(ModelNotFound, match="not registered"):
        client.submit_pipeline(source="no-such-model", steps=[{"method": "quantize_dynamic"}])


def test_a_stage_delivered_again_after_its_report_is_stored_is_not_run_again(
    client: Client, worker: WorkerProcess, promoted: dict[str, Any]
) -> None:
    # A worker killed after storing the train stage's report but before acknowledging it:
    # the stage's message comes back under the same id. It is admitted like any task and
    # answered from its stored report (a redelivery of a finished job is not counted): the
    # stage does not start again (it would take a new fencing token for its registry writes,
    # and train again).
    job_id, stage_id = promoted["job_id"], f"{promoted['job_id']}:train"
    assert client.state(stage_id).status == "SUCCESS"
    assert delivery_counts(client.redis, stage_id) == {"delivered": 1, "executed": 1}
    fence = client.redis.get(fence_key(f"{job_id}-train"))
    assert fence is not None  # the first delivery's token, which a second start would move
    runs = _started(client, worker)
    first = PipelineResult(job_id=job_id, model=promoted["model"], alias="production")
    train = {"model_name": promoted["model"], "arch": "mlp", "epochs": 1, "dataset": DIGITS}
    payload = PipelineJob.model_validate(
        {"train": train, "steps": [{"method": "quantize_dynamic", "variant": "int8"}], **QUICK}
    ).model_dump(mode="json", exclude_none=True)
    client.app.send_task(
        TASK_PIPELINE_TRAIN, args=[first.model_dump(mode="json"), payload], task_id=stage_id
    )
    until(lambda: _started(client, worker) > runs and not _running(client, worker, stage_id),
          "the stage's second delivery to be answered")  # fmt: skip
    assert client.redis.get(fence_key(f"{job_id}-train")) == fence  # the stage never started
    assert delivery_counts(client.redis, stage_id) == {"delivered": 1, "executed": 1}
    assert list(client.registry.describe(promoted["model"])["versions"]) == ["1"]


def _started(client: Client, worker: WorkerProcess) -> int:
    """How many train-stage deliveries the worker has taken (Celery's own count)."""
    stats = client.app.control.inspect([worker.name], timeout=5).stats() or {}
    return int(stats.get(worker.name, {}).get("total", {}).get(TASK_PIPELINE_TRAIN, 0))


def _running(client: Client, worker: WorkerProcess, task_id: str) -> bool:
    active = client.app.control.inspect([worker.name], timeout=5).active() or {}
    return any(task["id"] == task_id for task in active.get(worker.name, []))
