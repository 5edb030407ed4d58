"""Hostile dataset specs sent straight to a real worker (bypassing the producer's checks).

Paths outside the data roots, link loops, an image bomb and a malicious CIFAR-10 pickle each
come back as a clear FAILURE that lists no folder, and the same worker then trains a model
on a train/ + val/ folder.
"""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from producers.client import Client
from shared.names import job_key
from tests.fleet import WorkerProcess
from tests.integration.test_chaos_hostile import WAIT_S, train

pytestmark = pytest.mark.integration


def data_root(fleet_env: dict[str, str]) -> Path:
    """The worker's data root (TORCHFLEET_DATA_ROOTS in the fleet's environment)."""
    root = Path(fleet_env["TORCHFLEET_DATA_ROOTS"])
    root.mkdir(exist_ok=True)
    return root


def write_classes(root: Path, classes: list[str], per_class: int = 6) -> None:
    rng = np.random.default_rng(per_class)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 + 70 * index, 25, (8, 8, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")


class Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def send(client: Client, dataset: dict[str, Any], **fields: Any) -> tuple[str, str, str]:
    task, payload = train(dataset={"image_size": 8, **dataset}, **fields)
    job_id = f"hostile-data-{uuid.uuid4().hex[:8]}"
    client.redis.set(job_key(job_id), "train", ex=3600)  # recorded, as a submit would
    client.app.send_task(task, args=[payload], task_id=job_id)
    state = client.wait_state(job_id, timeout=WAIT_S)
    return state.status, state.error_code or "", state.error or ""


def test_hostile_dataset_specs_fail_clearly_and_the_worker_keeps_training(
    client: Client, worker: WorkerProcess, fleet_env: dict[str, str], tmp_path: Path
) -> None:
    root = data_root(fleet_env)
    case = root / uuid.uuid4().hex[:8]
    outside = tmp_path / "home"
    (outside / ".ssh").mkdir(parents=True)
    write_classes(case / "loop", ["a", "b"])
    (case / "loop" / "a" / "up").symlink_to(case / "loop")
    (case / "escape").symlink_to(outside)
    write_classes(case / "bomb", ["a", "b"])
    Image.new("L", (8000, 6000)).save(case / "bomb" / "b" / "big.png")  # 48 MP, ~50 KiB
    marker = tmp_path / "pickle-ran"
    batches = case / "cifar" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for i in range(1, 6):
        (batches / f"data_batch_{i}").write_bytes(pickle.dumps({"data": Touch(marker)}))

    def folder(path: Path | str) -> dict[str, Any]:
        return {"name": "imagefolder", "path": str(path)}

    status, code, error = send(client, folder(outside))
    assert (status, code) == ("FAILURE", "path_not_allowed"), error
    assert ".ssh" not in error and "TORCHFLEET_DATA_ROOTS" in error
    status, code, error = send(client, folder(case / "escape"))
    assert (status, code) == ("FAILURE", "path_not_allowed"), error
    status, code, error = send(client, folder(f"{case}/loop/../../.."))
    assert (status, code) == ("FAILURE", "path_not_allowed"), error
    status, code, error = send(client, folder(case / "bomb"))
    assert (status, code) == ("FAILURE", "invalid_job") and "8000x6000 pixels" in error, error
    status, code, error = send(client, {"name": "cifar10", "path": str(case / "cifar")})
    assert (status, code) == ("FAILURE", "invalid_job") and "never unpickles" in error, error
    assert not marker.exists()
    status, code, error = send(client, {"name": "synthetic", "samples": 10**7})
    assert (status, code) == ("FAILURE", "invalid_job") and "samples" in error, error

    # The loop is walked without following links; then a real train/ + val/ job trains.
    write_classes(case / "pets" / "train", ["a", "b", "c"])
    write_classes(case / "pets" / "val", ["a", "b", "c"], per_class=2)
    status, code, error = send(client, folder(case / "loop"), model_name="loop-ok")
    assert status == "SUCCESS", error
    job = f"pets-{uuid.uuid4().hex[:8]}"
    status, code, error = send(client, folder(case / "pets"), model_name=job, epochs=2)
    assert status == "SUCCESS", error
    resolved = client.registry.resolve(job)
    assert resolved.version == 1
    assert worker.alive()
