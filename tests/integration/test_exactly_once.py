"""Exactly-once effects on the registry, end to end: a real redis-server and a real worker.

* a training job delivered again after it registered (its answer lost) keeps its one version
  and does not move its alias again;
* a job id submitted again with another payload is refused at submit;
* a manifest edited in the store (labels) is refused by the worker that would serve it;
* promotion compares against what the alias points to now and refuses a worse candidate
  unless forced, saying why.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from producers.client import Client
from producers.encoding import encode_array
from shared.errors import JobIdReused
from shared.names import TASK_TRAIN
from shared.settings import Settings
from tests.fleet import WorkerProcess, register_cnn, until

WAIT_S = 180
DIGITS = {"name": "digits", "image_size": 8, "channels": 1}


def train_spec(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": "train", "model_name": name, "arch": "mlp", "epochs": 3, "batch_size": 32,
        "arch_kwargs": {"hidden": 32}, "dataset": DIGITS, **fields,
    }  # fmt: skip


def test_a_training_job_delivered_again_after_registering_keeps_one_version(
    client: Client, worker: WorkerProcess
) -> None:
    name = f"once-{uuid.uuid4().hex[:6]}"
    job_id = client.submit(train_spec(name, epochs=1, aliases=["staging"]))
    first = client.wait(job_id, timeout=WAIT_S)
    # The worker is killed after registering, before its answer is stored: the answer is
    # gone and the message comes back under the same id.
    client.app.backend.forget(job_id)
    payload = {**train_spec(name, epochs=1, aliases=["staging"])}
    client.app.send_task(TASK_TRAIN, args=[payload], task_id=job_id)
    again = client.wait(job_id, timeout=WAIT_S)
    described = client.registry.describe(name)
    assert list(described["versions"]) == ["1"]
    assert first["version"] == again["version"] == 1
    assert described["aliases"]["staging"] == {"version": 1, "variant": "base", "history": []}
    assert client.registry.resolve(f"{name}@staging").record.digest == again["model_digest"]
    checkpoint = Path(client.settings.artifacts) / "checkpoints" / job_id
    until(lambda: not checkpoint.exists(), "the checkpoint dropped once the answer is stored")


def test_a_reused_job_id_with_another_payload_is_refused(
    client: Client, worker: WorkerProcess, fleet_settings: Settings
) -> None:
    first, second = register_cnn(fleet_settings, seed=1), register_cnn(fleet_settings, seed=2)
    inputs = encode_array(np.zeros((1, 3, 32, 32), dtype=np.float32)).model_dump(exclude_none=True)
    job_id = f"reuse-{uuid.uuid4().hex[:6]}"
    client.submit({"kind": "infer", "model": first.name, "inputs": inputs}, job_id=job_id)
    answer = client.wait(job_id, timeout=WAIT_S)
    with pytest.raises(JobIdReused, match="already used for a different job"):
        client.submit({"kind": "infer", "model": second.name, "inputs": inputs}, job_id=job_id)
    # the same job again under its id (a retry after a lost reply) is accepted, answered once
    client.submit({"kind": "infer", "model": first.name, "inputs": inputs}, job_id=job_id)
    assert client.wait(job_id, timeout=WAIT_S)["model_digest"] == answer["model_digest"]


def test_a_manifest_edited_in_the_store_is_refused_by_the_worker(
    client: Client, worker: WorkerProcess, fleet_settings: Settings
) -> None:
    model = register_cnn(fleet_settings, seed=uuid.uuid4().int % 2**31)
    digest = client.registry.resolve(model.name).record.digest
    path = Path(fleet_settings.artifacts) / "models" / digest / "manifest.json"
    document = json.loads(path.read_text())
    document["class_names"] = [f"forged-{i}" for i in range(10)]
    path.write_text(json.dumps(document))
    inputs = encode_array(np.zeros((1, 3, 32, 32), dtype=np.float32)).model_dump(exclude_none=True)
    state = client.wait_state(
        client.submit({"kind": "infer", "model": model.name, "inputs": inputs}), timeout=WAIT_S
    )
    assert (state.status, state.error_code) == ("FAILURE", "integrity_error"), state.error
    assert "edited after it was stored" in (state.error or "")


def test_promotion_refuses_a_worse_candidate_unless_forced(
    client: Client, worker: WorkerProcess
) -> None:
    name = f"promo-{uuid.uuid4().hex[:6]}"
    client.wait(client.submit(train_spec(name, epochs=8)), timeout=WAIT_S)

    def compress(step: dict[str, Any], **fields: Any) -> dict[str, Any]:
        spec = {
            "kind": "compress", "source": f"{name}:1", "steps": [step], "eval_dataset": DIGITS,
            "promote": "production", "latency_iters": 5, "warmup_iters": 1, **fields,
        }  # fmt: skip
        return client.wait(client.submit(spec), timeout=WAIT_S)

    good = compress({"method": "quantize_dynamic", "variant": "int8"})
    assert good["promoted"] == f"{name}:1:int8", good["promotion"]
    assert "pointed nowhere" in good["promotion"]

    worse = compress({"method": "prune_l1", "amount": 0.95, "variant": "gutted"})
    gutted = next(v for v in worse["variants"] if v["variant"] == "gutted")
    assert gutted["registered"] and worse["incumbent"]["variant"] == f"{name}:1:int8"
    assert gutted["accuracy"] < worse["incumbent"]["accuracy"]
    assert worse["promoted"] is None
    assert "not promoted" in worse["promotion"] and "accuracy" in worse["promotion"]
    assert client.registry.resolve(f"{name}@production").variant == "int8"

    forced = compress(
        {"method": "prune_l1", "amount": 0.95, "variant": "gutted2"}, force_promote=True
    )
    assert forced["promoted"] == f"{name}:1:gutted2"
    assert forced["promotion"].startswith("forced")
    alias = client.registry.describe(name)["aliases"]["production"]
    assert (alias["variant"], alias["history"]) == ("gutted2", [[1, "int8"]])
