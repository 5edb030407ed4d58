"""The CLI's JSON contract, end to end: real processes, real Redis, real worker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from producers.client import Client
from shared.names import lane_streams
from tests.fleet import WorkerProcess

pytestmark = pytest.mark.integration


def torchfleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "producers.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(
    fleet_env: dict[str, str], worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """A seed CNN trained 1 epoch on 300 digits via `torchfleet submit SPEC --wait --json`."""
    spec = {
        "kind": "train",
        "model_name": f"cli-{uuid.uuid4().hex[:6]}",
        "arch": "cifar_cnn",
        "dataset": {"name": "digits", "limit": 300},
        "epochs": 1,
        "batch_size": 32,
    }
    path = tmp_path_factory.mktemp("specs") / "train.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = torchfleet(fleet_env, "submit", str(path), "--wait", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["kind"] == "train" and result["model"] == spec["model_name"]
    assert len(result["history"]) == 1 and 0 <= result["best_val_accuracy"] <= 1
    return result


def test_infer_shortcut_prints_one_json_object(
    fleet_env: dict[str, str], trained: dict, tmp_path: Path
) -> None:
    array = tmp_path / "x.npy"
    np.save(array, np.zeros((2, 3, 32, 32), dtype=np.float32))
    ref = f"{trained['model']}:{trained['version']}"
    done = torchfleet(
        fleet_env,
        "submit",
        "infer",
        "--model",
        ref,
        "--input",
        str(array),
        "--top-k",
        "2",
        "--wait",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["kind"] == "infer" and len(result["predictions"]) == 2
    assert result["model_digest"] == trained["model_digest"]


def test_infer_goes_through_the_lane_one_answer_per_input_file(
    fleet_env: dict[str, str], trained: dict, tmp_path: Path
) -> None:
    from PIL import Image

    batch, pixels, image = tmp_path / "batch.npy", tmp_path / "pixels.npy", tmp_path / "d.png"
    np.save(batch, np.zeros((2, 3, 32, 32), dtype=np.float32))
    np.save(pixels, np.full((1, 3, 32, 32), 200, dtype=np.uint8))  # uint8 pixels
    Image.new("RGB", (20, 20), (255, 255, 255)).save(image)
    ref = f"{trained['model']}:{trained['version']}"
    inputs = [arg for path in (batch, pixels, image) for arg in ("--input", str(path))]
    done = torchfleet(fleet_env, "infer", ref, *inputs, "--top-k", "2", "--json")
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)["answers"]
    assert [a["input"] for a in answers] == ["batch.npy", "pixels.npy", "d.png"]
    assert [len(a["result"]["predictions"]) for a in answers] == [2, 1, 1]
    assert all(len(p) == 2 for a in answers for p in a["result"]["predictions"])
    assert {a["result"]["model_digest"] for a in answers} == {trained["model_digest"]}
    # Stored under the request's id (always, from the CLI): `results` reads it like a job's.
    stored = torchfleet(fleet_env, "results", answers[2]["job_id"], "--json")
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout)["predictions"] == answers[2]["result"]["predictions"]
    table = torchfleet(fleet_env, "infer", ref, "--input", str(image))
    assert table.returncode == 0 and "d.png" in table.stdout, table.stderr


def test_infer_exit_codes(
    fleet_env: dict[str, str], trained: dict, client: Client, tmp_path: Path
) -> None:
    ref = f"{trained['model']}:{trained['version']}"
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    refused = torchfleet(fleet_env, "infer", ref, "--input", str(text))
    assert refused.returncode == 2 and "PNG or JPEG" in refused.stderr
    missing = torchfleet(fleet_env, "infer", "no-such-model", "--input", str(_npy(tmp_path)))
    assert missing.returncode == 1 and "model_not_found" in missing.stderr
    full = {**fleet_env, "TORCHFLEET_LANE_MAX_BACKLOG": "1", "TORCHFLEET_LANE_DEVICE": "cuda"}
    stuck = torchfleet(full, "infer", ref, "--input", str(_npy(tmp_path)), "--timeout", "1")
    assert stuck.returncode == 3, stuck.stderr  # no cuda worker: the request waits, unanswered
    over = torchfleet(full, "infer", ref, "--input", str(_npy(tmp_path)))
    client.redis.delete(*lane_streams("cuda"))
    assert over.returncode == 5 and "TORCHFLEET_LANE_MAX_BACKLOG" in over.stderr


def _npy(folder: Path) -> Path:
    path = folder / "one.npy"
    np.save(path, np.zeros((3, 32, 32), dtype=np.float32))
    return path


def test_submit_then_wait_then_results(
    fleet_env: dict[str, str], trained: dict, tmp_path: Path
) -> None:
    array = tmp_path / "x.npy"
    np.save(array, np.ones((1, 3, 32, 32), dtype=np.float32))
    submitted = torchfleet(
        fleet_env, "submit", "infer", "--model", trained["model"], "--input", str(array), "--json"
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    waited = torchfleet(fleet_env, "wait", job_id, "--json", "--timeout", "120")
    assert waited.returncode == 0, waited.stderr
    again = torchfleet(fleet_env, "results", job_id, "--json")
    assert json.loads(again.stdout) == json.loads(waited.stdout)


def test_failed_job_exits_non_zero_with_a_one_line_reason(
    fleet_env: dict[str, str], trained: dict, tmp_path: Path
) -> None:
    array = tmp_path / "x.npy"
    np.save(array, np.ones((1, 3, 8, 8), dtype=np.float32))  # the model takes 32x32
    ref = f"{trained['model']}:{trained['version']}"
    args = ("submit", "infer", "--model", ref, "--input", str(array), "--wait", "--json")
    done = torchfleet(fleet_env, *args)
    assert done.returncode == 1
    job_line, reason = done.stderr.strip().splitlines()  # the job's whole id first, then why
    job_id = job_line.removeprefix("job ")
    assert len(job_id) == 32 and job_id in reason and "bad_tensor" in reason
    assert json.loads(done.stdout)["error_code"] == "bad_tensor"


def test_an_unknown_model_is_refused_at_submit(
    fleet_env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> None:
    array = tmp_path / "x.npy"
    np.save(array, np.ones((1, 3, 32, 32), dtype=np.float32))
    args = ("submit", "infer", "--model", "ghost-model", "--input", str(array), "--wait")
    done = torchfleet(fleet_env, *args)
    assert done.returncode == 2 and "'ghost-model' is not registered" in done.stderr
    assert "job " not in done.stderr  # nothing was queued


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid"),
        (json.dumps({"kind": "train", "model_name": "m", "optimizer": {"lr": 0}}), "lr"),
        (json.dumps({"kind": "nope"}), "invalid job"),
        (json.dumps([1, 2]), "one job object"),
    ],
    ids=["malformed", "lr-zero", "unknown-kind", "not-an-object"],
)
def test_bad_specs_are_refused_before_sending(
    fleet_env: dict[str, str], tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "spec.json"
    path.write_text(content)
    done = torchfleet(fleet_env, "submit", str(path), "--json")
    assert done.returncode == 2 and message in done.stderr
    assert done.stdout == ""


def test_models_list_and_schema(fleet_env: dict[str, str], trained: dict) -> None:
    listed = json.loads(torchfleet(fleet_env, "models", "list", "--json").stdout)
    assert trained["model"] in {m["name"] for m in listed}
    schema = json.loads(torchfleet(fleet_env, "schema").stdout)
    assert "TrainJob" in schema["$defs"]


def test_several_images_are_answered_by_file_name(
    fleet_env: dict[str, str], trained: dict, tmp_path: Path
) -> None:
    from PIL import Image

    paths = []
    for name, shade in (("seven.png", 40), ("three.png", 200)):
        paths.append(str(tmp_path / name))
        Image.new("RGB", (32, 32), (shade, shade, shade)).save(paths[-1])
    ref = f"{trained['model']}:{trained['version']}"
    done = torchfleet(fleet_env, "submit", "infer", "--model", ref, "--input", *paths, "--wait")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if ".png" in line]
    assert [r.split()[1] for r in rows] == ["seven.png", "three.png"]
