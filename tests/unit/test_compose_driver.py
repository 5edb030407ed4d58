"""The compose test's driver (deploy/compose_test) and deploy/requirements.py, without Docker.

`make compose-test` runs the real thing (images, stack, faults); these check the pieces it
relies on: the commands it runs are the README's, the wheel index pip reads, the environment
it gives Compose, the requirement lines the Dockerfile installs, and the answer checks that
run in the producer container.
"""

from __future__ import annotations

import stat
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from deploy.compose_check import check, read_env_file
from deploy.compose_test import commands, jobs
from deploy.compose_test.__main__ import stack_values, write_env_file
from deploy.compose_test.compose import OVERRIDE, Compose, compose_variables
from deploy.compose_test.images import fill_wheelhouse, normalized, serve_index
from deploy.compose_test.scenario import last_json
from deploy.requirements import main as requirements_main
from deploy.requirements import requirement_name, requirements
from shared.embedded import free_port
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
DOCS = (ROOT / "README.md").read_text() + (ROOT / "docs" / "operations.md").read_text()


# ------------------------------------------------------------------ the README's commands
@pytest.mark.parametrize("command", commands.README_COMMANDS)
def test_the_test_runs_the_readmes_compose_commands(command: str) -> None:
    assert command in DOCS


def test_compose_runs_readme_commands_on_the_tests_project(tmp_path: Path) -> None:
    compose = Compose(ROOT, tmp_path, {"COMPOSE_PROJECT_NAME": "p"}, binary=["docker-compose"])
    argv = compose.argv(commands.INFER_NPY, "--json")
    assert argv[:7] == [
        "docker-compose", "-f", str(ROOT / "docker-compose.yml"), "-f", str(OVERRIDE),
        "--env-file", str(tmp_path / ".env"),
    ]  # fmt: skip
    assert argv[7:] == [
        "run", "--rm", "-v", f"{tmp_path}/jobs:/jobs:ro", "producer", "torchfleet", "submit",
        "infer", "--model", "digits", "--input", "/jobs/batch.npy", "--wait", "--json",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="not a compose command"):
        compose.argv("docker ps")


def test_compose_environment_is_the_tests_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for leak in ("REDIS_PASSWORD", "CPU_WORKER_QUEUES", "COMPOSE_FILE", "COMPOSE_PROFILES"):
        monkeypatch.setenv(leak, "from-the-developer")
    values = stack_values("http://127.0.0.1:1/simple")
    env = Compose(ROOT, tmp_path, values, binary=["docker-compose"]).environment()
    assert env["REDIS_PASSWORD"] == values["REDIS_PASSWORD"] != "from-the-developer"
    assert "CPU_WORKER_QUEUES" not in env and "COMPOSE_FILE" not in env
    assert "COMPOSE_PROFILES" not in env
    assert env["COMPOSE_DOCKER_CLI_BUILD"] == "0" and env["DOCKER_BUILDKIT"] == "0"
    assert env["PATH"].startswith("/usr/bin:")  # Debian's docker CLI first
    assert set(values) <= compose_variables(ROOT / "docker-compose.yml") | {"COMPOSE_PROJECT_NAME"}


def test_env_file_is_the_example_with_a_password_and_the_tests_values(tmp_path: Path) -> None:
    values = stack_values("http://127.0.0.1:1/simple")
    write_env_file(tmp_path, values)
    written = read_env_file(tmp_path / ".env")
    assert written == values
    assert len(values["REDIS_PASSWORD"]) == 64  # URL-safe hex, as the README generates
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


def test_tests_override_only_builds_on_the_host_network() -> None:
    values = stack_values("http://127.0.0.1:1/simple")
    project = check([ROOT / "docker-compose.yml", OVERRIDE], values)  # schema and rules
    services = project["services"]
    for name in ("cpu-worker", "producer"):
        assert services[name]["build"]["network"] == "host"
        assert services[name]["build"]["args"]["PIP_INDEX_URL"] == "http://127.0.0.1:1/simple"
    assert services["redis"]["image"] == values["REDIS_IMAGE"]
    assert "network" not in services["gpu-worker"]["build"]


# ------------------------------------------------------------------ the wheel index
def test_wheelhouse_is_served_as_a_pep503_index(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "Typing_Extensions-4.0-py3-none-any.whl").write_bytes(b"wheel bytes")
    (tmp_path / "requirements.txt").write_text("typing-extensions\n")  # downloaded already
    assert fill_wheelhouse(tmp_path, ["typing-extensions"]) == 1
    port = free_port()
    with serve_index(tmp_path, port) as url:
        listing = urllib.request.urlopen(f"{url}/typing-extensions/", timeout=5).read().decode()
        assert 'href="Typing_Extensions-4.0-py3-none-any.whl"' in listing
        wheel = urllib.request.urlopen(
            f"{url}/typing-extensions/Typing_Extensions-4.0-py3-none-any.whl", timeout=5
        )
        assert wheel.read() == b"wheel bytes"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("torch", "torch"), ("Typing_Extensions", "typing-extensions"), ("a.b__c", "a-b-c")],
)
def test_index_names_are_normalised(name: str, expected: str) -> None:
    assert normalized(name) == expected


# ------------------------------------------------------------------ deploy/requirements.py
def test_worker_requirements_are_the_dependencies_and_the_worker_extra() -> None:
    lines = requirements(PYPROJECT, extras=["worker"])
    names = [requirement_name(line) for line in lines]
    assert {"celery", "redis", "torch", "torchvision", "safetensors"} <= set(names)
    assert len(names) == len(set(names))


def test_producer_requirements_pick_numpy_without_torch() -> None:
    lines = requirements(PYPROJECT, pick=["numpy", "pybase64"])
    names = {requirement_name(line) for line in lines}
    assert {"numpy", "pybase64", "celery"} <= names
    assert not names & {"torch", "torchvision", "scikit-learn"}
    assert any(line.startswith("numpy>=") for line in lines)  # pyproject's range, kept


def test_requirements_refuse_unknown_extras_and_picks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="no such extra"):
        requirements(PYPROJECT, extras=["nope"])
    with pytest.raises(ValueError, match="names nosuchproject"):
        requirements(PYPROJECT, pick=["NoSuchProject"])
    assert requirements_main([str(PYPROJECT), "--pick", "numpy"]) == 0
    assert "numpy" in capsys.readouterr().out
    assert requirements_main([str(PYPROJECT), "--extra", "nope"]) == 1


@pytest.mark.parametrize(
    ("line", "name"), [("celery[redis]>=5.4,<6", "celery"), ("torch-pruning>=1.5", "torch-pruning")]
)
def test_requirement_names(line: str, name: str) -> None:
    assert requirement_name(line) == name


# ------------------------------------------------------------------ jobs.py (in the producer)
def test_jobs_carry_inline_and_stored_inputs() -> None:
    import numpy as np

    images = np.zeros((1797, 8, 8), dtype=np.uint8)
    labels = np.arange(1797) % 10
    inline = Settings().inline_input_bytes
    for i in range(40):
        pixels, truth = jobs.job_inputs(i, images, labels)
        assert len(pixels) == len(truth) == (jobs.LARGE if i % 10 == 9 else jobs.SMALL)
        assert (pixels.nbytes > inline) == (i % 10 == 9)  # every tenth waits beside the message


def answer(top: list[int], accuracy: float, model: str = "digits") -> jobs.JobState:
    predictions = [[{"label": t, "score": 0.9}, {"label": 0, "score": 0.05},
                    {"label": 1, "score": 0.01}] for t in top]  # fmt: skip
    result: dict[str, Any] = {
        "kind": "infer", "model": model, "predictions": predictions, "accuracy": accuracy,
    }  # fmt: skip
    return jobs.JobState("j", "SUCCESS", result=result)


def test_answer_checks_find_what_is_wrong() -> None:
    assert jobs.problems(answer([3, 4], 0.5), "digits", [3, 5]) == []
    assert "accuracy" in jobs.problems(answer([3, 4], 1.0), "digits", [3, 5])[0]
    assert "1 predictions for 2 inputs" in jobs.problems(answer([3], 1.0), "digits", [3, 5])[0]
    assert "not infer digits" in jobs.problems(answer([3], 1.0, "other"), "digits", [3])[0]
    failed = jobs.JobState("j", "FAILURE", error_code="bad_tensor", error="shape")
    assert jobs.problems(failed, "digits", [3]) == ["FAILURE: bad_tensor: shape"]


def test_last_json_reads_one_line_or_a_whole_document() -> None:
    assert last_json('noise\n{"a": 1}\n') == {"a": 1}
    assert last_json('{\n  "a": 2\n}\n') == {"a": 2}
