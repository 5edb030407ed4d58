"""Hostile input sent straight to the real worker (bypassing the producer's validation).

Each case must come back as a FAILURE with a clear error code and message, and the worker
must keep serving. Messages the worker cannot even decode (malformed JSON, pickle, nesting
beyond the parser) are refused at receipt: never executed, never deserialised, never looping,
and answered with a FAILURE under the job id their headers carry.
Pure-function cases live in tests/unit (test_jobs, test_inference, test_artifacts,
test_hostile); these prove the same defences hold end to end.
"""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kombu import Producer

from producers.client import Client
from producers.encoding import encode_array
from shared.manifest import Manifest
from shared.names import TASK_COMPRESS, TASK_INFER, TASK_TRAIN, job_key
from shared.settings import Settings
from tests.fleet import WorkerProcess, recorded, register_module
from workers.artifacts import ArtifactStore, sha256
from workers.zoo import create_model

pytestmark = pytest.mark.integration
WAIT_S = 60
TINY = {"in_channels": 1, "image_size": 8, "hidden": 8, "depth": 1}


def register_tiny(settings: Settings, seed: int = 0) -> str:
    """An 8x8 single-channel MLP (inputs of 256 bytes): cheap to send many of."""
    torch.manual_seed(seed)
    module = create_model("mlp", **TINY).eval()
    manifest = Manifest(
        arch="mlp", arch_kwargs=TINY, input_shape=[1, 8, 8], num_classes=10,
        class_names=[str(i) for i in range(10)],
    )  # fmt: skip
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    register_module(settings, module, manifest, name)
    return name


@pytest.fixture(scope="module")
def tiny(fleet_settings: Settings) -> str:
    return register_tiny(fleet_settings)


def tensor(array: np.ndarray) -> dict[str, Any]:
    return encode_array(array).model_dump(mode="json")


def ok_inputs(n: int = 1) -> dict[str, Any]:
    return tensor(np.zeros((n, 1, 8, 8), np.float32))


def infer(model: str, **fields: Any) -> tuple[str, Any]:
    return TASK_INFER, {"kind": "infer", "model": model, "inputs": ok_inputs(), **fields}


def train(**fields: Any) -> tuple[str, Any]:
    spec = {"kind": "train", "model_name": "hostile", "arch": "mlp", "epochs": 1, "batch_size": 8}
    return TASK_TRAIN, {**spec, **fields}


def compress(model: str, **fields: Any) -> tuple[str, Any]:
    spec = {"kind": "compress", "source": model, "steps": [{"method": "quantize_dynamic"}]}
    return TASK_COMPRESS, {**spec, **fields}


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


Case = Callable[[str], tuple[str, Any]]
CASES: dict[str, tuple[Case, str, str]] = {
    # id: (payload from the model name, error code, message pattern)
    "not-an-object": (lambda m: (TASK_INFER, [1, 2, 3]), "invalid_job", "JSON object"),
    "null-payload": (lambda m: (TASK_INFER, None), "invalid_job", "JSON object"),
    "string-payload": (lambda m: (TASK_INFER, "rm -rf /"), "invalid_job", "JSON object"),
    "unknown-kind": (lambda m: (TASK_INFER, {"kind": "explode"}), "invalid_job", "kind"),
    "wrong-task-for-kind": (lambda m: (TASK_INFER, train()[1]), "invalid_job", "'train' job"),
    "future-schema": (lambda m: infer(m, schema_version=2), "invalid_job", "schema_version"),
    "unknown-top-field": (lambda m: infer(m, surprise=1), "invalid_job", "surprise"),
    "unknown-nested-field": (
        lambda m: infer(m, inputs={**ok_inputs(), "exec": "x"}),
        "invalid_job",
        "exec",
    ),
    "deeply-nested": (lambda m: infer(m, extra=nested(200)), "invalid_job", "nests deeper"),
    "traversal-ref": (lambda m: infer("../../etc/passwd"), "invalid_job", "model"),
    "absolute-ref": (lambda m: infer("/etc/passwd"), "invalid_job", "model"),
    "encoded-traversal-ref": (lambda m: infer("..%2f..%2fsecret"), "invalid_job", "model"),
    "traversal-model-name": (lambda m: train(model_name="../../x"), "invalid_job", "model_name"),
    "unknown-model": (lambda m: infer("no-such-model-x"), "model_not_found", "no-such-model"),
    "nan-input": (
        lambda m: infer(m, inputs=tensor(np.full((1, 1, 8, 8), np.nan, np.float32))),
        "bad_tensor",
        "NaN",
    ),
    "inf-input": (
        lambda m: infer(m, inputs=tensor(np.full((1, 1, 8, 8), -np.inf, np.float32))),
        "bad_tensor",
        "infinite",
    ),
    "wrong-shape": (
        lambda m: infer(m, inputs=tensor(np.zeros((1, 3, 8, 8), np.float32))),
        "bad_tensor",
        "does not fit",
    ),
    "wrong-dtype": (
        lambda m: infer(m, inputs=tensor(np.zeros((1, 1, 8, 8), np.int64))),
        "bad_tensor",
        "int64",
    ),
    "unsupported-dtype": (
        lambda m: infer(m, inputs={**ok_inputs(), "dtype": "complex128"}),
        "invalid_job",
        "dtype",
    ),
    "bytes-do-not-match-shape": (
        lambda m: infer(m, inputs={**ok_inputs(), "shape": [2, 1, 8, 8]}),
        "invalid_job",
        "wrong number of bytes",
    ),
    "not-base64": (
        lambda m: infer(m, inputs={**ok_inputs(), "data": "!" * len(ok_inputs()["data"])}),
        "bad_tensor",
        "base64",
    ),
    "garbage-image": (
        lambda m: infer(
            m, inputs=[{"format": "png", "data": base64.b64encode(b"GIF89a").decode()}]
        ),
        "bad_tensor",
        "could not be decoded",
    ),
    "oversized-batch": (
        lambda m: infer(m, inputs=tensor(np.zeros((1025, 1, 8, 8), np.float32))),
        "bad_tensor",
        "limit is 1024",
    ),
    "negative-top-k": (lambda m: infer(m, top_k=-1), "invalid_job", "top_k"),
    "absurd-top-k": (lambda m: infer(m, top_k=10**9), "invalid_job", "top_k"),
    "absurd-priority": (lambda m: infer(m, priority=99), "invalid_job", "priority"),
    "negative-lr": (lambda m: train(optimizer={"lr": -0.1}), "invalid_job", "lr"),
    "absurd-epochs": (lambda m: train(epochs=10**9), "invalid_job", "epochs"),
    "zero-batch": (lambda m: train(batch_size=0), "invalid_job", "batch_size"),
    "absurd-image-size": (
        lambda m: train(dataset={"name": "digits", "image_size": 10**6}),
        "invalid_job",
        "image_size",
    ),
    "unknown-arch": (
        lambda m: train(arch="rm_rf", dataset={"name": "digits", "limit": 20, "image_size": 8}),
        "unknown_architecture",
        "rm_rf",
    ),
    "absurd-arch-kwargs": (
        lambda m: train(
            arch_kwargs={"hidden": -5}, dataset={"name": "digits", "limit": 20, "image_size": 8}
        ),
        "invalid_job",
        "hidden",
    ),
    "prune-everything": (
        lambda m: compress(m, steps=[{"method": "prune_l1", "amount": 1.5}]),
        "invalid_job",
        "amount",
    ),
    "unknown-step": (
        lambda m: compress(m, steps=[{"method": "os_system"}]),
        "invalid_job",
        "method",
    ),
}


def send_unchecked(client: Client, task: str, payload: Any, job_id: str) -> None:
    """Send a payload the client would refuse, recorded as submitted (so the client tells
    it from an unknown id), as a producer that skips validation would."""
    client.redis.set(job_key(job_id), "job", ex=3600)
    client.app.send_task(task, args=[payload], task_id=job_id)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_job_fails_clearly(
    case: str, client: Client, worker: WorkerProcess, tiny: str
) -> None:
    build, code, pattern = CASES[case]
    task, payload = build(tiny)
    job_id = f"hostile-{case}-{uuid.uuid4().hex[:6]}"
    send_unchecked(client, task, payload, job_id)
    state = client.wait_state(job_id, timeout=WAIT_S)
    assert (state.status, state.error_code) == ("FAILURE", code), state.error
    if pattern is not None:
        assert pattern.lower() in (state.error or "").lower()
    assert worker.process is not None and worker.process.poll() is None


def test_a_payload_over_the_size_limit_is_refused_before_decoding(
    client: Client, worker: WorkerProcess, tiny: str, fleet_settings: Settings
) -> None:
    limit = fleet_settings.max_payload_bytes
    task, payload = infer(tiny, padding="x" * (limit + 1))
    job_id = f"hostile-huge-{uuid.uuid4().hex[:6]}"
    send_unchecked(client, task, payload, job_id)
    state = client.wait_state(job_id, timeout=WAIT_S)
    assert (state.status, state.error_code) == ("FAILURE", "invalid_job"), state.error
    assert "max_payload_bytes" in (state.error or "")


def test_a_tampered_artifact_is_refused(
    client: Client, worker: WorkerProcess, fleet_settings: Settings
) -> None:
    model = register_tiny(fleet_settings, seed=uuid.uuid4().int % 2**31)
    digest = client.registry.resolve(model).record.digest
    weights = Path(fleet_settings.artifacts) / "models" / digest / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    state = client.wait_state(client.submit(infer(model)[1]), timeout=WAIT_S)
    assert (state.status, state.error_code) == ("FAILURE", "integrity_error"), state.error


class Boom:
    """Unpickling this touches ``path``: the proof that a payload ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Path.touch, (str(self.path),))


def test_a_pickled_checkpoint_is_refused_and_never_runs(
    client: Client, worker: WorkerProcess, fleet_settings: Settings, tmp_path: Path
) -> None:
    marker = tmp_path / "checkpoint-pickle-ran"
    job_id = f"hostile-ckpt-{uuid.uuid4().hex[:6]}"
    store = ArtifactStore(fleet_settings.artifacts)
    store.put_checkpoint(job_id, {"w": torch.zeros(1)}, {"epoch": 1})
    folder = Path(fleet_settings.artifacts) / "checkpoints" / job_id
    blob = pickle.dumps(Boom(marker))
    (folder / "weights.safetensors").write_bytes(blob)
    meta = json.loads((folder / "meta.json").read_text())
    meta["sha256"] = sha256(blob)  # the digest matches: only the format can stop it
    (folder / "meta.json").write_text(json.dumps(meta))
    spec = {"arch": "mlp", "dataset": {"name": "digits", "limit": 20, "image_size": 8}}
    task, payload = train(**spec)
    send_unchecked(client, task, payload, job_id)
    state = client.wait_state(job_id, timeout=WAIT_S)
    assert (state.status, state.error_code) == ("FAILURE", "unsafe_artifact"), state.error
    assert not marker.exists()


# ----------------------------------------------------------------- undecodable messages
def publish_raw(client: Client, body: bytes, content_type: str, job_id: str) -> None:
    """A Celery protocol-2 message with any body, straight through kombu (the job recorded
    as submitted, unless it already is)."""
    client.redis.set(job_key(job_id), "job", ex=3600, nx=True)
    headers = {
        "lang": "py", "task": TASK_INFER, "id": job_id, "root_id": job_id, "parent_id": None,
        "group": None, "retries": 0, "eta": None, "expires": None,
    }  # fmt: skip
    with client.app.connection_for_write() as conn:
        Producer(conn).publish(
            body,
            exchange="infer",
            routing_key="infer",
            content_type=content_type,
            content_encoding="binary" if content_type.endswith("serialize") else "utf-8",
            headers=headers,
            priority=9,
            retry=True,
        )


def follow_up_succeeds(client: Client, model: str) -> None:
    """A normal job submitted after the bad message still gets its answer."""
    result = client.wait(client.submit(infer(model)[1]), timeout=WAIT_S)
    assert len(result["predictions"]) == 1


def refused(client: Client, job_id: str, pattern: str) -> None:
    """The refused message's job ended FAILURE, saying why, and its refusal was recorded."""
    state = client.wait_state(job_id, timeout=WAIT_S)
    assert (state.status, state.error_code) == ("FAILURE", "refused_message"), state.error
    assert pattern in (state.error or ""), state.error
    [record] = [r for r in recorded(client, [job_id]) if r["job_id"] == job_id]
    assert record["outcome"] == "refused"


@pytest.mark.parametrize(
    ("case", "body", "content_type", "pattern"),
    [
        ("malformed-json", b'[["unterminated', "application/json", "could not be decoded"),
        (
            "json-beyond-parser-depth",
            b"[" * 100_000 + b"]" * 100_000,
            "application/json",
            "could not be decoded",
        ),
        (
            "unknown-content-type",
            b"<job/>",
            "application/xml",
            "refused: content type application/xml is not accepted; torchfleet sends JSON",
        ),
    ],
)
def test_an_undecodable_message_is_refused_with_a_result_and_the_worker_serves_on(
    case: str,
    body: bytes,
    content_type: str,
    pattern: str,
    client: Client,
    worker: WorkerProcess,
    tiny: str,
) -> None:
    job_id = f"hostile-raw-{case}-{uuid.uuid4().hex[:6]}"
    publish_raw(client, body, content_type, job_id)
    refused(client, job_id, pattern)
    follow_up_succeeds(client, tiny)
    assert worker.process is not None and worker.process.poll() is None


def test_a_pickle_message_is_refused_with_a_result_and_never_deserialised(
    client: Client, worker: WorkerProcess, tiny: str, tmp_path: Path
) -> None:
    marker = tmp_path / "message-pickle-ran"
    job_id = f"hostile-pickle-{uuid.uuid4().hex[:6]}"
    body = pickle.dumps(((Boom(marker),), {}, {}))
    publish_raw(client, body, "application/x-python-serialize", job_id)
    refused(
        client,
        job_id,
        "refused: content type application/x-python-serialize is not accepted; "
        "torchfleet sends JSON",
    )
    follow_up_succeeds(client, tiny)
    assert not marker.exists()


def test_a_refused_message_never_overwrites_a_stored_result(
    client: Client, worker: WorkerProcess, tiny: str
) -> None:
    job_id = client.submit(infer(tiny)[1])
    answer = client.wait(job_id, timeout=WAIT_S)
    publish_raw(client, b"<job/>", "application/xml", job_id)  # the same id, refused
    follow_up_succeeds(client, tiny)  # the worker took the bad message before this one
    assert client.wait(job_id, timeout=WAIT_S) == answer
