"""Hard time limits and the cancel of a hung job (issue 14, items 3 and 5), end to end.

A worker of its own (a private database: no other worker takes its jobs; two job threads, a
grace of 1 s) runs jobs that hang two ways: a training job whose dataset holds a named pipe
(its thread blocks in a read, a call Python cannot interrupt: the worker answers for it and
leaves the thread behind), and jobs held in a loop by the chaos model (Python code: the stop
lands at once). Each must end with a clear answer, register nothing, never come back, and
leave the worker serving.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from producers.client import Client
from shared.deadletter import delivery_counts
from shared.names import KOMBU_UNACKED, input_key, model_key
from shared.settings import Settings
from tests.fleet import WorkerProcess, register_cnn, until
from workers.bench import chaos_models
from workers.bench.chaosfleet import chaos_input, register_chaos

pytestmark = pytest.mark.integration
LIMITS_DB = 8
WAIT_S = 60
GRACE_S = 1


@dataclass
class Limited:
    client: Client
    worker: WorkerProcess
    settings: Settings
    data: Path
    chaos: Path


@pytest.fixture(scope="module")
def limited(fleet_env: dict[str, str], fleet_dir: Path) -> Iterator[Limited]:
    url = fleet_env["TORCHFLEET_REDIS_URL"].rsplit("/", 1)[0] + f"/{LIMITS_DB}"
    chaos = fleet_dir / "limits-chaos"
    chaos.mkdir(exist_ok=True)
    env = {
        **fleet_env,
        "TORCHFLEET_REDIS_URL": url,
        "TORCHFLEET_TIME_LIMIT_GRACE_S": str(GRACE_S),
        "TORCHFLEET_PLUGINS": json.dumps([chaos_models.__name__]),
        "TF_CHAOS_DIR": str(chaos),
    }
    settings = Settings(redis_url=url, artifacts=fleet_env["TORCHFLEET_ARTIFACTS"])
    data = Path(fleet_env["TORCHFLEET_DATA_ROOTS"])
    data.mkdir(parents=True, exist_ok=True)
    with Client(settings) as client:
        client.redis.flushdb()
        process = WorkerProcess(env=env, log_dir=fleet_dir, concurrency=2).start()
        try:
            process.wait_ready(client)
            yield Limited(client, process, settings, data, chaos)
        finally:
            process.stop()


class HungDataset:
    """An image folder whose first image is a named pipe: the scan's read of it blocks.

    :meth:`wait_reader` opens the write end once the worker has the pipe open, which keeps
    its read blocked (no bytes, no end of file) until :meth:`close`."""

    def __init__(self, root: Path) -> None:
        self.name = f"hung-{uuid.uuid4().hex[:8]}"
        self.pipes = [root / self.name / label / "x.png" for label in ("a", "b")]
        for pipe in self.pipes:
            pipe.parent.mkdir(parents=True)
            os.mkfifo(pipe)
        self.writer: int | None = None

    def spec(self) -> dict[str, Any]:
        return {"name": "imagefolder", "path": self.name, "image_size": 8, "channels": 1}

    def wait_reader(self) -> None:
        self.writer = open_writer(self.pipes[0], "the worker to open the dataset's pipe")

    def close(self) -> None:
        if self.writer is not None:
            os.close(self.writer)  # end of file: the stuck read returns


def open_writer(pipe: Path, what: str) -> int:
    """The write end of a named pipe, once a reader has it open (which keeps that reader
    blocked, no bytes and no end of file, until the write end is closed)."""

    def opened() -> int | None:
        try:  # only succeeds once a reader has the pipe open
            return os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return None

    return int(until(opened, what, WAIT_S))


def pool_of(limited: Limited) -> dict[str, Any]:
    stats = limited.client.app.control.inspect([limited.worker.name], timeout=5).stats()
    return dict(stats[limited.worker.name]["pool"])


def held_by_broker(limited: Limited, job_id: str) -> bool:
    """Whether the job's message is still unacknowledged (it would be delivered again)."""
    return any(job_id.encode() in raw for raw in limited.client.redis.hvals(KOMBU_UNACKED))


def hung_train(limited: Limited, dataset: HungDataset, **fields: Any) -> tuple[str, str]:
    name = f"hung-{uuid.uuid4().hex[:6]}"
    job = limited.client.submit_train(
        model_name=name, arch="mlp", epochs=1, dataset=dataset.spec(), **fields
    )
    return name, job


def test_a_training_job_stuck_in_a_read_fails_at_its_time_limit_and_the_worker_serves_on(
    limited: Limited,
) -> None:
    client = limited.client
    dataset = HungDataset(limited.data)
    try:
        name, job = hung_train(limited, dataset, time_limit_s=1)
        dataset.wait_reader()
        state = client.wait_state(job, timeout=WAIT_S)
        assert (state.status, state.error_code) == ("FAILURE", "time_limit"), state
        assert state.error == (
            "time limit of 1 s for train jobs reached; raise time_limit_s up to the worker's "
            "maximum of 86400 s (TORCHFLEET_TIME_LIMIT_TRAIN_S)"
        )
        assert not client.redis.exists(model_key(name))
        until(lambda: not held_by_broker(limited, job), "the ack")  # it never runs again
        assert delivery_counts(client.redis, job) == {"delivered": 1, "executed": 1}
        pool = pool_of(limited)  # the stuck thread was replaced: both job threads serve
        assert (pool["stuck"], pool["threads"]) == (1, 2), pool
        model = register_cnn(limited.settings).name
        inputs = np.zeros((1, 3, 32, 32), np.float32)
        jobs = [client.submit_infer(model, inputs) for _ in range(2)]
        assert all(client.wait(j, timeout=WAIT_S)["worker"] == limited.worker.name for j in jobs)
    finally:
        dataset.close()
    until(lambda: pool_of(limited)["stuck"] == 0, "the released thread to leave")
    assert client.state(job).error_code == "time_limit"  # the late thread stored nothing
    assert not client.redis.exists(model_key(name))


def test_a_training_job_stuck_in_a_read_can_be_cancelled(limited: Limited) -> None:
    client = limited.client
    dataset = HungDataset(limited.data)
    try:
        name, job = hung_train(limited, dataset)
        dataset.wait_reader()
        cancelled_at = time.monotonic()
        client.cancel(job)
        state = client.wait_state(job, timeout=WAIT_S)
        assert (state.status, state.error_code) == ("REVOKED", "cancelled"), state
        assert time.monotonic() - cancelled_at < GRACE_S + 5
        until(lambda: not held_by_broker(limited, job), "the ack (after the answer)")
    finally:
        dataset.close()
    until(lambda: pool_of(limited)["stuck"] == 0, "the released thread to leave")
    assert client.state(job).status == "REVOKED"
    assert not client.redis.exists(model_key(name))


def test_an_infer_job_stuck_in_io_is_answered_at_its_time_limit_and_its_inputs_go(
    limited: Limited,
) -> None:
    block = limited.chaos / "block"  # chaos_net MODE_BLOCK reads this pipe: stuck in the kernel
    os.mkfifo(block)
    model = register_chaos(limited.settings)
    writer: int | None = None
    try:
        with Client(limited.settings.model_copy(update={"inline_input_bytes": 0})) as client:
            job = client.submit_infer(model, chaos_input(chaos_models.MODE_BLOCK), time_limit_s=1)
            assert client.redis.exists(input_key(job))  # stored beside the message
            writer = open_writer(block, "the job to open the pipe")
            state = client.wait_state(job, timeout=WAIT_S)
            assert (state.status, state.error_code) == ("FAILURE", "time_limit"), state
            until(lambda: not client.redis.exists(input_key(job)), "its stored inputs to go")
            assert pool_of(limited)["stuck"] == 1  # answered for while its thread is stuck
    finally:
        if writer is not None:
            os.close(writer)  # end of file: the stuck read returns
        block.unlink()
    until(lambda: pool_of(limited)["stuck"] == 0, "the released thread to leave")
    assert limited.client.state(job).error_code == "time_limit"  # the late thread stored nothing


# A compress spec whose evaluation holds (hold_eval_after), with a 2 s limit.
COMPRESS_2S: dict[str, Any] = {
    "steps": [{"method": "quantize_dynamic", "variant": "int8"}],
    "eval_dataset": {"name": "digits", "limit": 64, "image_size": 4, "channels": 1},
    "gates": {"max_accuracy_drop": 1.0},
    "time_limit_s": 2,
}


def test_a_compress_job_held_in_a_loop_is_stopped_at_its_time_limit(limited: Limited) -> None:
    client = limited.client
    source = register_chaos(limited.settings, num_classes=10, hold_eval_after=1)
    job = client.submit_compress(
        source=source,
        **COMPRESS_2S,
    )
    state = client.wait_state(job, timeout=WAIT_S)
    assert (state.status, state.error_code) == ("FAILURE", "time_limit"), state
    assert state.error is not None and "time limit of 2 s for compress jobs" in state.error
    assert "TORCHFLEET_TIME_LIMIT_COMPRESS_S" in state.error
    assert list(client.registry.describe(source)["versions"]["1"]) == ["base"]
    assert pool_of(limited)["stuck"] == 0  # Python code: the stop landed, no thread left


def test_a_pipeline_stage_past_its_time_limit_ends_the_pipeline_with_a_report(
    limited: Limited,
) -> None:
    client = limited.client
    source = register_chaos(limited.settings, num_classes=10, hold_eval_after=1)
    job = client.submit_pipeline(
        source=source,
        **COMPRESS_2S,
    )
    report = client.wait(job, timeout=WAIT_S)
    assert (report["status"], report["error_code"]) == ("failed", "time_limit"), report
    assert "the pipeline's compress stage" in report["error"]
    assert [(s["stage"], s["status"]) for s in report["stages"]] == [
        ("compress", "failed"),
        ("gate", "skipped"),
        ("promote", "skipped"),
        ("warm", "skipped"),
    ]
    assert "production" not in client.registry.describe(source)["aliases"]
