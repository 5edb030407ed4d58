"""Pipeline stages under worker kills (issue 14, item 2): a stage is admitted like any task.

A compress stage held mid-evaluation by ``chaos_net`` while its worker is killed comes back
to the next worker; after ``max_deliveries`` kills it is dead-lettered instead of running
again, and the pipeline still ends with a report. Runs under ``make chaos`` (several worker
processes).
"""

from __future__ import annotations

import pytest

from shared.deadletter import delivery_counts, list_dead_letters
from shared.names import TASK_PIPELINE_COMPRESS
from tests.integration.chaos_harness import CHAOS_ONLY, ChaosFleet, register_chaos

pytestmark = [pytest.mark.integration, CHAOS_ONLY]
WAIT_S = 120
DIGITS = {"name": "digits", "limit": 64, "image_size": 4, "channels": 1}


def test_a_stage_that_keeps_losing_its_worker_is_dead_lettered_with_a_report(
    fleet: ChaosFleet,
) -> None:
    source = register_chaos(fleet.settings, num_classes=10, hold_eval_after=1)
    client = fleet.client
    job = client.submit_pipeline(
        source=source,
        steps=[{"method": "quantize_dynamic", "variant": "int8"}],
        eval_dataset=DIGITS,
        gates={"max_accuracy_drop": 1.0},
        latency_iters=3,
        warmup_iters=0,
    )
    stage = f"{job}:compress"
    limit = fleet.settings.max_deliveries
    for delivery in range(1, limit + 1):
        worker = fleet.worker()
        fleet.wait_holding(delivery, WAIT_S)  # this delivery is mid-evaluation
        worker.kill()
    fleet.worker()
    report = client.wait(job, timeout=WAIT_S)
    assert (report["status"], report["error_code"]) == ("failed", "dead_lettered"), report
    assert [(s["stage"], s["status"]) for s in report["stages"]] == [
        ("compress", "failed"),
        ("gate", "skipped"),
        ("promote", "skipped"),
        ("warm", "skipped"),
    ]
    [entry] = list_dead_letters(client.redis)
    assert (entry.job_id, entry.task, entry.deliveries) == (stage, TASK_PIPELINE_COMPRESS, 4)
    assert delivery_counts(client.redis, stage) == {"delivered": limit + 1, "executed": limit}
    assert "production" not in client.registry.describe(source)["aliases"]
