"""Fault injection against real Redis and real worker processes (issue 7, items 1-3, 6, 7, 9).

Every test runs a private redis-server and chaos workers (visibility timeout 3 s, restore
sweeps every second). Jobs are held mid-computation by ``chaos_net`` until the test writes
a release file, so "killed mid-job" is certain, never a race. These tests start several
worker processes each: they run under ``make chaos`` (TORCHFLEET_CHAOS=1), not ``make test``.
"""

from __future__ import annotations

import signal
import time

import pytest

from producers.client import Client
from shared.deadletter import list_dead_letters
from shared.requeue import requeue
from tests.fleet import recorded
from tests.integration.chaos_harness import (
    CHAOS_ONLY,
    ChaosFleet,
    chaos_input,
    counts,
    drain,
    register_chaos,
    submit_many,
    wait_status,
)
from workers.bench.chaos_models import MODE_FATAL, MODE_HOLD, MODE_KILL, MODE_OOM
from workers.faults import EXIT_DEVICE_FAULT

pytestmark = [pytest.mark.integration, CHAOS_ONLY]
WAIT_S = 120


def successes(client: Client, job_id: str) -> int:
    """Successful executions the workers recorded for a job (the stats stream)."""
    records = recorded(client, [job_id])
    return sum(1 for r in records if r.get("job_id") == job_id and r.get("outcome") == "success")


# ----------------------------------------------------------------- 1. killed mid-job
def test_worker_killed_mid_inference_is_redelivered_and_answered_once(fleet: ChaosFleet) -> None:
    model = register_chaos(fleet.settings)
    first = fleet.worker()
    job = fleet.client.submit_infer(model, chaos_input(MODE_HOLD, n=2))
    fleet.wait_holding(1, job_id=job)
    first.kill()
    fleet.release()
    second = fleet.worker()
    state = drain(fleet.client, [job], WAIT_S)[job]
    assert state.status == "SUCCESS" and state.result is not None
    assert state.result["worker"] == second.name
    assert counts(fleet.client, [job])[job] == {"delivered": 2, "executed": 2}
    assert successes(fleet.client, job) == 1  # the killed run never reported anything


def test_worker_killed_mid_training_resumes_from_its_checkpoint(fleet: ChaosFleet) -> None:
    first = fleet.worker()
    job = fleet.client.submit_train(
        model_name="chaos-trained",
        arch="chaos_net",
        arch_kwargs={"num_classes": 10, "hold_train_after": 4},
        epochs=3,
        batch_size=32,
        dataset={"name": "digits", "limit": 160, "image_size": 4, "channels": 1},
    )
    progress = wait_status(fleet.client, job, {"PROGRESS"}, WAIT_S)
    fleet.wait_holding(1)  # 4 train steps done: epoch 1 (4 steps) is checkpointed
    assert progress.progress.get("epoch", 0) >= 1
    first.kill()
    fleet.release()
    fleet.worker()
    state = drain(fleet.client, [job], WAIT_S)[job]
    assert state.status == "SUCCESS" and state.result is not None, state.error
    assert state.result["resumed_from_epoch"] == 1
    assert len(state.result["history"]) == 3
    assert successes(fleet.client, job) == 1


def test_worker_killed_mid_compression_is_redelivered_and_completes(fleet: ChaosFleet) -> None:
    source = register_chaos(fleet.settings, num_classes=10, hold_eval_after=1)
    first = fleet.worker()
    job = fleet.client.submit_compress(
        source=source,
        steps=[{"method": "quantize_dynamic", "variant": "int8"}],
        eval_dataset={"name": "digits", "limit": 64, "image_size": 4, "channels": 1},
        gates={"max_accuracy_drop": 1.0},
        latency_iters=3,
        warmup_iters=0,
    )
    fleet.wait_holding(1, job_id=job)
    first.kill()
    fleet.release()
    fleet.worker()
    state = drain(fleet.client, [job], WAIT_S)[job]
    assert state.status == "SUCCESS" and state.result is not None, state.error
    assert counts(fleet.client, [job])[job]["executed"] == 2
    assert successes(fleet.client, job) == 1


# ----------------------------------------------------------------- 2. whole worker lost
def test_another_worker_restores_the_job_of_a_lost_worker(fleet: ChaosFleet) -> None:
    model = register_chaos(fleet.settings)
    lost = fleet.worker()
    job = fleet.client.submit_infer(model, chaos_input(MODE_HOLD))
    fleet.wait_holding(1, job_id=job)
    survivor = fleet.worker()  # up before the loss: it finds the job by its periodic sweep
    fleet.release()
    killed_at = time.monotonic()
    lost.kill()  # the worker is one process (a thread pool): parent and children at once
    state = drain(fleet.client, [job], WAIT_S)[job]
    recovered_s = time.monotonic() - killed_at
    assert state.status == "SUCCESS" and state.result is not None
    assert state.result["worker"] == survivor.name
    # restored within the visibility timeout plus one sweep (and the job's own run)
    assert recovered_s < fleet.settings.visibility_timeout_s + 2 + 10


# ----------------------------------------------------------------- 3. warm shutdown
def test_warm_shutdown_loses_nothing_and_reports_nothing_twice(fleet: ChaosFleet) -> None:
    model = register_chaos(fleet.settings)
    first = fleet.worker(concurrency=2)
    held = [
        fleet.client.submit_infer(model, chaos_input(MODE_HOLD), job_id=f"held-{i}")
        for i in range(2)
    ]
    queued = submit_many(fleet.client, model, 6, "queued")
    fleet.wait_holding(2)
    first.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    fleet.release()
    assert first.wait_exit(WAIT_S) == 0
    held_states = drain(fleet.client, held, WAIT_S)
    assert all(s.status == "SUCCESS" for s in held_states.values())
    assert all(s.result and s.result["worker"] == first.name for s in held_states.values())
    fleet.worker()
    states = drain(fleet.client, held + queued, WAIT_S)
    assert all(s.status == "SUCCESS" for s in states.values())
    executed = counts(fleet.client, held + queued)
    assert all(c["executed"] == 1 for c in executed.values()), executed


# ----------------------------------------------------------------- 6. poison job
def test_a_poison_job_is_dead_lettered_after_max_deliveries(fleet: ChaosFleet) -> None:
    model = register_chaos(fleet.settings)
    job = fleet.client.submit_infer(model, chaos_input(MODE_KILL), job_id="poison-1")
    limit = fleet.settings.max_deliveries
    for delivery in range(1, limit + 1):
        worker = fleet.worker(ready=False)  # the job may kill it before it answers a ping
        assert worker.wait_exit(WAIT_S) == -signal.SIGKILL, f"delivery {delivery} did not kill"
    survivor = fleet.worker()
    state = drain(fleet.client, [job], WAIT_S)[job]
    assert (state.status, state.error_code) == ("FAILURE", "dead_lettered")
    assert "deadletter" in (state.error or "")
    assert survivor.alive()
    [entry] = list_dead_letters(fleet.client.redis)
    assert entry.job_id == job and entry.task == "torchfleet.infer"
    assert entry.deliveries == limit + 1 and str(limit) in entry.reason
    assert entry.args and entry.args[0]["model"] == model
    assert fleet.client.status()["deadletter"] == 1


def test_a_requeued_dead_letter_runs_again_under_its_own_id(fleet: ChaosFleet) -> None:
    from shared.deadletter import DeadLetter, dead_letter

    model = register_chaos(fleet.settings)
    worker = fleet.worker()
    job = fleet.client.submit_infer(model, chaos_input(0.0), job_id="fixed-later")
    drain(fleet.client, [job], WAIT_S)
    fleet.client.app.backend.forget(job)
    payload = {"kind": "infer", "model": model, "inputs": _payload(chaos_input(0.0))}
    dead_letter(
        fleet.client.redis,
        DeadLetter(
            job_id=job, task="torchfleet.infer", args=[payload], reason="test", deliveries=4
        ),
    )
    assert requeue(fleet.client.redis, fleet.client.app, [job]).requeued == [job]
    state = drain(fleet.client, [job], WAIT_S)[job]
    assert state.status == "SUCCESS" and state.result is not None
    assert state.result["worker"] == worker.name
    assert list_dead_letters(fleet.client.redis) == []


def _payload(array: object) -> dict[str, object]:
    from producers.encoding import encode_array

    return encode_array(array).model_dump(mode="json")


# ----------------------------------------------------------------- 7. duplicates
def test_a_redelivered_job_with_a_stored_result_is_not_computed_again(fleet: ChaosFleet) -> None:
    model = register_chaos(fleet.settings)
    fleet.worker(concurrency=1)  # one thread, FIFO: the duplicate is consumed before `after`
    job = fleet.client.submit_infer(model, chaos_input(0.0), job_id="dup-1")
    first = drain(fleet.client, [job], WAIT_S)[job]
    # the same message again, as the broker redelivers it when an ack was lost
    message = {"kind": "infer", "model": model, "inputs": _payload(chaos_input(0.0))}
    fleet.client.app.send_task("torchfleet.infer", args=[message], task_id=job)
    after = fleet.client.submit_infer(model, chaos_input(0.0), job_id="dup-after")
    drain(fleet.client, [after], WAIT_S)
    again = drain(fleet.client, [job], WAIT_S)[job]
    assert again.result == first.result  # the stored answer, untouched
    assert counts(fleet.client, [job])[job] == {"delivered": 1, "executed": 1}
    assert successes(fleet.client, job) == 1


# ----------------------------------------------------------------- 9. device faults
def test_cuda_oom_is_answered_with_smaller_batches(fleet: ChaosFleet) -> None:
    model = register_chaos(fleet.settings)
    fleet.worker()
    job = fleet.client.submit_infer(model, chaos_input(MODE_OOM, n=8))
    state = drain(fleet.client, [job], WAIT_S)[job]
    assert state.status == "SUCCESS" and state.result is not None
    assert len(state.result["predictions"]) == 8


def test_an_unrecoverable_cuda_error_fails_the_job_and_replaces_the_worker(
    fleet: ChaosFleet,
) -> None:
    model = register_chaos(fleet.settings)
    broken = fleet.worker()
    job = fleet.client.submit_infer(model, chaos_input(MODE_FATAL))
    state = drain(fleet.client, [job], WAIT_S)[job]
    assert (state.status, state.error_code) == ("FAILURE", "device_fault")
    assert "replaced" in (state.error or "")
    assert broken.wait_exit(WAIT_S) == EXIT_DEVICE_FAULT
    fleet.worker()  # what the supervisor does: a fresh process serves the next job
    after = fleet.client.submit_infer(model, chaos_input(0.0))
    assert drain(fleet.client, [after], WAIT_S)[after].status == "SUCCESS"
    assert counts(fleet.client, [job])[job]["executed"] == 1  # failed once, not redelivered
