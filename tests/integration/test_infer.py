"""Inference through real Redis and a real worker: references, cache, latency, bad input."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import torch

from producers.client import Client
from producers.encoding import encode_array
from shared.connection import redis_client
from shared.jobs import TensorPayload
from shared.names import QUEUE_INFER, device_queue, input_key, queue_keys
from shared.registry import ModelRegistry
from shared.settings import Settings
from tests.fleet import Registered, WorkerProcess, register_cnn, until

pytestmark = pytest.mark.integration


@pytest.fixture
def cnn(fleet_settings: Settings) -> Registered:
    """A model with weights of its own: artifacts are content-addressed, so equal weights share."""
    return register_cnn(fleet_settings, seed=uuid.uuid4().int % 2**31)


def batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def expected_labels(module: torch.nn.Module, inputs: np.ndarray) -> list[int]:
    with torch.inference_mode():
        return module(torch.from_numpy(inputs)).argmax(1).tolist()


def test_infer_returns_the_models_own_predictions(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    inputs = batch(5)
    result = client.wait(client.submit_infer(cnn.name, inputs, top_k=3), timeout=60)
    assert [p[0]["label"] for p in result["predictions"]] == expected_labels(cnn.module, inputs)
    assert all(len(p) == 3 for p in result["predictions"])
    assert result["model"] == cnn.name and result["version"] == cnn.version
    assert result["variant"] == "base" and result["device"] == "cpu"
    assert result["worker"] == worker.name and len(result["model_digest"]) == 64


def test_second_request_is_a_cache_hit_with_no_load_time(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    first = client.wait(client.submit_infer(cnn.name, batch(1)), timeout=60)
    second = client.wait(client.submit_infer(cnn.name, batch(1)), timeout=60)
    assert not first["cache_hit"] and first["latency"]["load_ms"] > 0
    assert second["cache_hit"] and second["latency"]["load_ms"] == 0
    latency = second["latency"]
    assert all(value >= 0 for value in latency.values())
    assert latency["total_worker_ms"] >= latency["compute_ms"] > 0


def test_every_reference_form_resolves(
    client: Client, worker: WorkerProcess, cnn: Registered, fleet_settings: Settings
) -> None:
    registry = ModelRegistry(redis_client(fleet_settings))
    other = register_cnn(
        fleet_settings, seed=uuid.uuid4().int % 2**31, name=cnn.name
    )  # version 2 of the same name
    registry.register(cnn.name, 1, "copy", registry.get(cnn.name, 1, "base"))
    registry.set_alias(cnn.name, "staging", 1)
    inputs = batch(4, seed=3)
    answers = {}
    for ref in [
        cnn.name,
        f"{cnn.name}:1",
        f"{cnn.name}:2",
        f"{cnn.name}@staging",
        f"{cnn.name}:1:copy",
    ]:
        answers[ref] = client.wait(client.submit_infer(ref, inputs), timeout=60)
    assert answers[cnn.name]["version"] == 2  # a bare name is the latest without `production`
    assert answers[f"{cnn.name}@staging"]["version"] == 1
    assert answers[f"{cnn.name}:1:copy"]["variant"] == "copy"
    labels_v1 = expected_labels(cnn.module, inputs)
    labels_v2 = expected_labels(other.module, inputs)
    assert [p[0]["label"] for p in answers[f"{cnn.name}:1"]["predictions"]] == labels_v1
    assert [p[0]["label"] for p in answers[f"{cnn.name}:2"]["predictions"]] == labels_v2


@pytest.mark.parametrize(
    ("make_inputs", "code"),
    [
        (lambda: encode_array(batch(1)[:, :, :31]), "bad_tensor"),
        (lambda: encode_array(np.zeros((1, 3, 32, 32), dtype=np.int64)), "bad_tensor"),
        (lambda: encode_array(np.full((1, 3, 32, 32), np.nan, dtype=np.float32)), "bad_tensor"),
    ],
    ids=["wrong-shape", "wrong-dtype", "nan"],
)
def test_bad_inputs_fail_fast_and_the_worker_keeps_serving(
    client: Client, worker: WorkerProcess, cnn: Registered, make_inputs: object, code: str
) -> None:
    payload: TensorPayload = make_inputs()  # type: ignore[operator]
    state = client.wait_state(client.submit_infer(cnn.name, payload), timeout=60)
    assert state.status == "FAILURE" and state.error_code == code
    assert state.error
    healthy = client.wait(client.submit_infer(cnn.name, batch(1)), timeout=60)
    assert healthy["predictions"]


def test_unknown_model_is_a_clear_error_not_retried(client: Client, worker: WorkerProcess) -> None:
    job_id = client.submit_infer("no-such-model", batch(1))
    state = client.wait_state(job_id, timeout=60)
    assert state.status == "FAILURE" and state.error_code == "model_not_found"
    assert "no-such-model" in (state.error or "")
    meta = client.app.backend.get_task_meta(job_id)
    assert meta.get("retries", 0) == 0


# ------------------------------------------------------------------ stored inputs
def test_large_inputs_wait_beside_the_message_and_go_once_answered(
    client: Client, worker: WorkerProcess, cnn: Registered, fleet_settings: Settings
) -> None:
    inputs = batch(8, seed=5)  # 98 KB, far over inline_input_bytes
    job_id = client.submit_infer(cnn.name, inputs)
    result = client.wait(job_id, timeout=60)
    assert [p[0]["label"] for p in result["predictions"]] == expected_labels(cnn.module, inputs)
    until(lambda: not client.redis.exists(input_key(job_id)), "the stored inputs to be deleted")

    inline = Client(fleet_settings.model_copy(update={"inline_input_bytes": 10**9}))
    try:
        same = inline.wait(inline.submit_infer(cnn.name, inputs), timeout=60)
    finally:
        inline.close()
    assert same["predictions"] == result["predictions"]


def test_the_message_carries_a_key_and_redis_the_raw_bytes(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    inputs = batch(2)
    job = client.submit_infer(cnn.name, inputs, device="cuda")  # a queue no worker here reads
    lanes = queue_keys(device_queue(QUEUE_INFER, "cuda"))
    try:
        [raw] = [m for lane in lanes for m in client.redis.lrange(lane, 0, -1)]
        body = json.loads(json.loads(raw)["body"])  # kombu envelope, then Celery's args
        tensor = body[0][0]["inputs"]
        assert "data" not in tensor and tensor["key"] == input_key(job)
        assert client.redis.get(input_key(job)) == inputs.tobytes()
        assert len(raw) < 2048 < inputs.nbytes
    finally:
        client.redis.delete(*lanes)


def test_stored_inputs_missing_or_of_another_job_are_clear_errors(
    client: Client, worker: WorkerProcess, cnn: Registered
) -> None:
    missing = uuid.uuid4().hex
    payload = TensorPayload(shape=[1, 3, 32, 32], key=input_key(missing))
    state = client.wait_state(client.submit_infer(cnn.name, payload, job_id=missing), timeout=60)
    assert (state.status, state.error_code) == ("FAILURE", "bad_tensor")
    assert "never stored, or expired" in (state.error or "")

    owner = client.submit_infer(cnn.name, batch(1), device="cuda")  # stays queued
    client.redis.delete(*queue_keys(device_queue(QUEUE_INFER, "cuda")))
    thief = client.submit_infer(cnn.name, TensorPayload(shape=[1, 3, 32, 32], key=input_key(owner)))
    state = client.wait_state(thief, timeout=60)
    assert (state.status, state.error_code) == ("FAILURE", "invalid_job")
    assert "only its own stored inputs" in (state.error or "")

    huge = uuid.uuid4().hex  # declares 1.2 GB: refused before anything is read
    payload = TensorPayload(shape=[100_000, 3, 32, 32], key=input_key(huge))
    state = client.wait_state(client.submit_infer(cnn.name, payload, job_id=huge), timeout=60)
    assert (state.status, state.error_code) == ("FAILURE", "invalid_job")
    assert "max_payload_bytes" in (state.error or "")

    healthy = client.wait(client.submit_infer(cnn.name, batch(2)), timeout=60)
    assert len(healthy["predictions"]) == 2  # the worker kept serving
