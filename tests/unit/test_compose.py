"""docker-compose.yml, the Dockerfile and the deploy helpers, checked without a Docker engine.

The compose file is interpolated with a test environment, validated against the Compose
Specification's JSON schema (../shared/compose-spec.json, or the copy in tests/data), and
then held to the fleet's rules: a persistent, password-protected, unpublished Redis; GPU
and CPU workers that share artifacts, wait for Redis and stop warm; Flower on loopback; a
producer under a profile.
"""

from __future__ import annotations

import copy
import json
import os
import queue
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Any

import pytest
import redis
import yaml
from hypothesis import given
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from deploy.compose_check import (
    ComposeError,
    InterpolationError,
    check,
    command_options,
    find_schema,
    interpolate,
    load_project,
    main,
    merge,
    published_binds,
    read_env_file,
    schema_errors,
    security_errors,
)
from deploy.healthcheck import main as healthcheck_main
from shared.embedded import find_redis_server, free_port
from shared.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
OVERRIDE_EXAMPLE = ROOT / "docker-compose.override.example.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

PASSWORD = "0123456789abcdef-test-only"
ENV = {"REDIS_PASSWORD": PASSWORD}
WORKERS = ("cpu-worker", "gpu-worker")
LONG_RUNNING = ("redis", "cpu-worker", "gpu-worker", "flower")
ARTIFACTS_MOUNT = "artifacts:/data/artifacts"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    path = find_schema()
    assert path is not None, "no compose-spec.json in ../shared or tests/data"
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return load_project([COMPOSE], ENV)


@pytest.fixture(scope="module")
def services(project: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = project["services"]
    return found


def seconds(duration: str) -> float:
    """A Compose duration ('90s', '2m', '1m30s', '1h') in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


# ------------------------------------------------------------------ the Compose Specification
def test_compose_file_matches_the_compose_specification(
    project: dict[str, Any], schema: dict[str, Any]
) -> None:
    assert schema_errors(project, schema) == []


def test_schema_check_catches_what_compose_would_reject(
    project: dict[str, Any], schema: dict[str, Any]
) -> None:
    broken = copy.deepcopy(project)
    broken["services"]["redis"]["restart_policy"] = "always"
    broken["services"]["cpu-worker"]["healthcheck"]["test"] = 42
    errors = schema_errors(broken, schema)
    assert any(e.startswith("services/redis") and "restart_policy" in e for e in errors)
    assert any(e.startswith("services/cpu-worker/healthcheck") for e in errors)


def test_yaml_anchors_are_extensions_not_services() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    anchors = [key for key in raw if key.startswith("x-")]
    assert anchors, "shared settings should live in x- anchors"
    assert set(raw["services"]) == {"redis", "cpu-worker", "gpu-worker", "flower", "producer"}


# ------------------------------------------------------------------ redis
def test_redis_persists_with_aof_and_never_evicts(services: dict[str, Any]) -> None:
    redis = services["redis"]
    options = command_options(redis["command"])
    assert redis["image"].startswith("redis:7")
    assert redis["command"][0] == "redis-server"
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"


def test_redis_password_comes_from_a_required_variable(services: dict[str, Any]) -> None:
    raw_command = yaml.safe_load(COMPOSE.read_text())["services"]["redis"]["command"]
    raw_password = command_options(raw_command)["--requirepass"]
    assert raw_password.startswith("${REDIS_PASSWORD:?")
    assert command_options(services["redis"]["command"])["--requirepass"] == PASSWORD


def test_redis_healthcheck_pings_with_the_password(services: dict[str, Any]) -> None:
    redis = services["redis"]
    probe = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli" in probe and "ping" in probe
    assert redis["environment"]["REDISCLI_AUTH"] == PASSWORD  # redis-cli's password variable
    assert PASSWORD not in probe


def test_redis_keeps_its_data_in_a_named_volume(project: dict[str, Any]) -> None:
    assert "redis-data:/data" in project["services"]["redis"]["volumes"]
    assert "redis-data" in project["volumes"]


def test_redis_is_not_published_and_nothing_binds_beyond_loopback(
    services: dict[str, Any], project: dict[str, Any]
) -> None:
    assert "ports" not in services["redis"]
    for name, service in services.items():
        assert all(bind == "127.0.0.1" for bind in published_binds(service)), name
    assert security_errors(project) == []


# ------------------------------------------------------------------ workers
def test_gpu_worker_reserves_nvidia_gpus_and_runs_on_cuda(services: dict[str, Any]) -> None:
    gpu = services["gpu-worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    # Every replica must see every GPU for the Redis lease to spread replicas over them.
    assert device["count"] == "all"
    assert command_options(gpu["command"])["--device"] == "cuda"
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"


def test_cpu_worker_starts_by_default_on_cpu_torch(services: dict[str, Any]) -> None:
    cpu = services["cpu-worker"]
    assert "profiles" not in cpu
    assert command_options(cpu["command"])["--device"] == "cpu"
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert cpu["environment"]["TORCHFLEET_TORCH_THREADS"] == "2"


@pytest.mark.parametrize("name", WORKERS)
def test_workers_scale_without_fixed_names_or_ports(services: dict[str, Any], name: str) -> None:
    worker = services[name]
    assert "container_name" not in worker and "hostname" not in worker and "ports" not in worker
    assert command_options(worker["command"])["--queues"] == "train,compress,infer"


@pytest.mark.parametrize("name", WORKERS)
def test_workers_stop_warm(services: dict[str, Any], name: str) -> None:
    worker = services[name]
    assert worker["stop_signal"] == "SIGTERM"
    assert seconds(worker["stop_grace_period"]) >= 60
    assert worker["init"] is True  # tini forwards SIGTERM and reaps children


@pytest.mark.parametrize("name", WORKERS)
def test_worker_healthcheck_runs_the_script_the_image_ships(
    services: dict[str, Any], name: str
) -> None:
    probe = services[name]["healthcheck"]
    assert probe["test"] == ["CMD", "python", "/app/deploy/healthcheck.py"]
    assert seconds(probe["timeout"]) > 10  # the probe's own ping timeout
    assert seconds(probe["start_period"]) >= 60  # torch import and model preload
    copies = [i for i in dockerfile_instructions() if i[0] == "COPY"]
    assert any(
        "deploy/healthcheck.py" in args and args.endswith(" /app/deploy/") for _, args in copies
    )


def test_workers_share_one_environment(services: dict[str, Any]) -> None:
    cpu, gpu = (services[name]["environment"] for name in WORKERS)
    shared_keys = {key for key in cpu if key.startswith("TORCHFLEET_")} - {
        "TORCHFLEET_TORCH_THREADS"
    }
    assert {key: cpu[key] for key in shared_keys} == {key: gpu[key] for key in shared_keys}
    assert cpu["TORCHFLEET_REDIS_URL"] == "redis://redis:6379/0"
    assert cpu["TORCHFLEET_REDIS_PASSWORD"] == PASSWORD


@pytest.mark.parametrize("name", [*WORKERS, "producer"])
def test_fleet_environment_parses_into_settings(
    services: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = services[name]["environment"]
    fields = {f"TORCHFLEET_{field.upper()}" for field in Settings.model_fields}
    assert {key for key in environment if key.startswith("TORCHFLEET_")} <= fields
    for key in list(os.environ):
        if key.startswith("TORCHFLEET_"):
            monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.redis_url == "redis://redis:6379/0" and settings.has_password()
    assert settings.artifacts == "/data/artifacts"
    assert settings.visibility_timeout_s == 30  # a killed worker's jobs wait seconds, not an hour
    if name in WORKERS:
        assert settings.preload == []


# ------------------------------------------------------------------ flower, producer, volumes
def test_flower_monitors_the_broker_on_loopback_only(services: dict[str, Any]) -> None:
    flower = services["flower"]
    assert flower["image"].startswith("mher/flower:")
    assert "flower" in flower["command"]
    assert flower["environment"]["CELERY_BROKER_URL"] == f"redis://:{PASSWORD}@redis:6379/0"
    assert flower["ports"] and published_binds(flower) == ["127.0.0.1"]
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])


def test_producer_is_a_tool_under_a_profile(services: dict[str, Any]) -> None:
    producer = services["producer"]
    assert producer["profiles"] == ["tools"]
    assert producer["build"]["target"] == "producer"
    assert producer["command"][0] == "torchfleet"
    assert "restart" not in producer  # one-off `docker compose run --rm producer ...`
    assert producer["environment"]["TORCHFLEET_REDIS_PASSWORD"] == PASSWORD


@pytest.mark.parametrize("name", [*WORKERS, "producer"])
def test_artifacts_volume_is_mounted_where_settings_point(
    project: dict[str, Any], name: str
) -> None:
    service = project["services"][name]
    assert ARTIFACTS_MOUNT in service["volumes"]
    assert service["environment"]["TORCHFLEET_ARTIFACTS"] == ARTIFACTS_MOUNT.split(":")[1]
    assert "artifacts" in project["volumes"]


def test_artifacts_can_point_at_s3_instead() -> None:
    project = load_project([COMPOSE], {**ENV, "TORCHFLEET_ARTIFACTS": "s3://bucket/fleet"})
    for name in (*WORKERS, "producer"):
        assert (
            project["services"][name]["environment"]["TORCHFLEET_ARTIFACTS"] == "s3://bucket/fleet"
        )


@pytest.mark.parametrize("name", ["cpu-worker", "gpu-worker", "flower", "producer"])
def test_services_wait_for_a_healthy_redis(services: dict[str, Any], name: str) -> None:
    assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_restart_unless_stopped(services: dict[str, Any], name: str) -> None:
    assert services[name]["restart"] == "unless-stopped"
    assert services[name]["healthcheck"]["test"]


# ------------------------------------------------------------------ missing password, overrides
@pytest.mark.parametrize("env", [{}, {"REDIS_PASSWORD": ""}], ids=["unset", "empty"])
def test_missing_redis_password_is_a_clear_error(env: dict[str, str]) -> None:
    with pytest.raises(InterpolationError, match=r"REDIS_PASSWORD.*set REDIS_PASSWORD in \.env"):
        load_project([COMPOSE], env)


def test_override_example_publishes_redis_on_loopback_only() -> None:
    project = check([COMPOSE, OVERRIDE_EXAMPLE], ENV)
    assert project["services"]["redis"]["ports"] == ["127.0.0.1:6379:6379"]
    assert command_options(project["services"]["redis"]["command"])["--requirepass"] == PASSWORD
    with pytest.raises(InterpolationError, match="REDIS_PASSWORD"):
        check([COMPOSE, OVERRIDE_EXAMPLE], {"REDIS_HOST_PORT": "6380"})


def write_override(tmp_path: Path, redis: dict[str, Any]) -> Path:
    path = tmp_path / "docker-compose.override.yml"
    path.write_text(yaml.safe_dump({"services": {"redis": redis}}))
    return path


def test_override_that_drops_the_redis_password_is_refused(tmp_path: Path) -> None:
    override = write_override(tmp_path, {"command": ["redis-server", "--appendonly", "yes"]})
    with pytest.raises(ComposeError, match=r"services\.redis: no --requirepass"):
        check([COMPOSE, override], ENV)


def test_override_that_publishes_redis_everywhere_is_refused(tmp_path: Path) -> None:
    override = write_override(tmp_path, {"ports": ["6379:6379"]})
    with pytest.raises(ComposeError, match=r"services\.redis: port published on every interface"):
        check([COMPOSE, override], ENV)


def test_preflight_command_line_reports_and_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("# no password yet\nREDIS_PASSWORD=\n")
    assert main(["-f", str(COMPOSE), "--env-file", str(env_file)]) == 1
    assert "set REDIS_PASSWORD in .env" in capsys.readouterr().err
    env_file.write_text(f"REDIS_PASSWORD={PASSWORD}\n")
    assert main(["-f", str(COMPOSE), "--env-file", str(env_file)]) == 0
    assert "compose check passed" in capsys.readouterr().out


def test_env_example_documents_every_variable_and_holds_no_password() -> None:
    used = set()
    for path in (COMPOSE, OVERRIDE_EXAMPLE):
        used |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert used - documented == set()
    # Only the password (empty: copying the example is not enough to start) and the project
    # name are live.
    assert read_env_file(ENV_EXAMPLE) == {
        "REDIS_PASSWORD": "",
        "COMPOSE_PROJECT_NAME": "torchfleet",
    }


# ------------------------------------------------------------------ interpolation and merging
@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("plain", {}, "plain"),
        ("${A}", {"A": "x"}, "x"),
        ("$A/$B", {"A": "x"}, "x/"),
        ("${A}", {}, ""),
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A-d}", {}, "d"),
        ("${A:+alt}", {"A": "x"}, "alt"),
        ("${A:+alt}", {"A": ""}, ""),
        ("${A+alt}", {"A": ""}, "alt"),
        ("${A:?need A}", {"A": "x"}, "x"),
        ("${A?need A}", {"A": ""}, ""),
        ("${A:-${B:-inner}}", {}, "inner"),
        ("$$HOSTNAME and $${A}", {"A": "x", "HOSTNAME": "h"}, "$HOSTNAME and ${A}"),
        ("127.0.0.1:${P:-5555}:5555", {"P": "8080"}, "127.0.0.1:8080:5555"),
        ("cost $5", {}, "cost $5"),
    ],
)
def test_interpolate_follows_compose(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected


@given(st.text())
def test_escaped_dollars_survive_interpolation(text: str) -> None:
    assert interpolate(text.replace("$", "$$"), {"A": "x"}) == text


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("${A:?set A please}", {}, "required variable A is missing a value: set A please"),
        ("${A:?set A please}", {"A": ""}, "set A please"),
        ("${A?}", {}, "required variable A is missing a value: required"),
        ("${A", {}, "unclosed"),
        ("${1A}", {}, "invalid interpolation format"),
        ("${A!x}", {"A": "x"}, "invalid interpolation format"),
    ],
)
def test_interpolate_errors_say_what_is_missing(
    text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(InterpolationError, match=re.escape(message)):
        interpolate(text, env)


def test_merge_replaces_commands_and_adds_list_items() -> None:
    base = {"services": {"r": {"command": ["a", "b"], "ports": ["1:1"], "environment": {"X": "1"}}}}
    override = {
        "services": {"r": {"command": ["c"], "ports": ["2:2", "1:1"], "environment": {"Y": "2"}}}
    }
    merged = merge(base, override)["services"]["r"]
    assert merged == {
        "command": ["c"],
        "ports": ["1:1", "2:2"],
        "environment": {"X": "1", "Y": "2"},
    }
    assert base["services"]["r"]["command"] == ["a", "b"]  # inputs are not modified


def test_read_env_file_handles_comments_quotes_and_export(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("# comment\n\nexport A=1\nB='two words'\nC=\"x#y\"\nD=plain # trailing\nE=\n")
    assert read_env_file(path) == {"A": "1", "B": "two words", "C": "x#y", "D": "plain", "E": ""}
    path.write_text("NOT AN ASSIGNMENT\n")
    with pytest.raises(ComposeError, match="not a KEY=VALUE line"):
        read_env_file(path)


def test_published_binds_reads_short_and_long_port_syntax() -> None:
    service = {
        "ports": ["127.0.0.1:6379:6379", "5555:5555", "9000", {"target": 80, "host_ip": "0.0.0.0"}]
    }
    assert published_binds(service) == ["127.0.0.1", "", "", "0.0.0.0"]


# ------------------------------------------------------------------ Dockerfile and build context
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            pairs.append((instruction.upper(), args.strip()))
    return pairs


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions of each named build stage."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for instruction, args in dockerfile_instructions():
        if instruction == "FROM":
            current = found.setdefault(args.split()[-1], [])
        current.append((instruction, args))
    return found


def excluded_from_context(path: str) -> bool:
    """.dockerignore's rules, last match wins; a rule on a folder covers what it holds."""
    rules = [
        r for r in DOCKERIGNORE.read_text().splitlines() if r.strip() and not r.startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for rule in rules:
        negated = rule.startswith("!")
        pattern = rule.removeprefix("!").strip()
        if any(fnmatchcase(candidate, pattern) for candidate in candidates):
            excluded = not negated
    return excluded


def test_images_build_from_python_slim_and_run_as_a_user() -> None:
    assert "python:3.11-slim" in DOCKERFILE.read_text().split("FROM")[0]  # ARG PYTHON_IMAGE
    built = stages()
    assert {"base", "wheel", "producer", "worker"} <= set(built)
    for target in ("producer", "worker"):
        users = [args for instruction, args in built[target] if instruction == "USER"]
        assert users and users[-1] not in {"root", "0"}, target


def test_worker_image_runs_torchfleet_with_a_healthcheck() -> None:
    worker = dict(stages()["worker"])
    assert json.loads(worker["ENTRYPOINT"]) == ["torchfleet"]
    assert json.loads(worker["CMD"])[0] == "worker"
    assert "/app/deploy/healthcheck.py" in worker["HEALTHCHECK"]
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in DOCKERFILE.read_text()
    installs = [args for instruction, args in stages()["worker"] if instruction == "RUN"]
    # torch on its own first, then the worker extra holding torch where it is, then the code.
    assert '--index-url "${TORCH_INDEX_URL}" torch torchvision' in installs[0]
    assert "-c /tmp/torch.txt -r /tmp/requirements.txt" in installs[1]
    assert "pip install --no-deps /wheels/torchfleet-" in installs[2]
    requirements = " ".join(args for ins, args in stages()["requirements"] if ins == "RUN")
    assert "--extra worker > worker.txt" in requirements


def test_dependency_layers_depend_on_pyproject_alone() -> None:
    copies = [args for ins, args in stages()["requirements"] if ins == "COPY"]
    assert copies == ["pyproject.toml deploy/requirements.py ./"]
    for target in ("producer", "worker"):
        steps = stages()[target]
        requirements_copy = next(
            i for i, (ins, args) in enumerate(steps) if "--from=requirements" in args
        )
        wheel_copy = next(i for i, (ins, args) in enumerate(steps) if "--from=wheel" in args)
        assert requirements_copy < wheel_copy, target  # a code change keeps the deps layer


def test_no_syntax_directive_and_every_pip_stage_sees_the_index() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)  # BuildKit would fetch it
    assert "ARG PIP_INDEX_URL=https://pypi.org/simple" in text.split("FROM")[0]
    for name, steps in stages().items():
        runs_pip = any(ins == "RUN" and "pip " in args for ins, args in steps)
        declared = ("ARG", "PIP_INDEX_URL") in steps
        assert declared or not runs_pip, f"stage {name} runs pip without ARG PIP_INDEX_URL"


def test_compose_passes_only_build_args_the_dockerfile_declares(
    services: dict[str, Any],
) -> None:
    declared = {args.split("=")[0] for ins, args in dockerfile_instructions() if ins == "ARG"}
    for name, service in services.items():
        if "build" in service:
            args = service["build"]["args"]
            assert set(args) <= declared, name
            assert args["PYTHON_IMAGE"] == "python:3.11-slim"
            assert args["PIP_INDEX_URL"] == "https://pypi.org/simple"


def test_images_are_chosen_by_variables_with_public_defaults() -> None:
    local = {
        **ENV, "REDIS_IMAGE": "local/redis", "FLOWER_IMAGE": "local/flower",
        "PYTHON_IMAGE": "local/python", "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "CPU_TORCH_INDEX_URL": "http://127.0.0.1:9/simple",
    }  # fmt: skip
    services = load_project([COMPOSE], local)["services"]
    assert services["redis"]["image"] == "local/redis"
    assert services["flower"]["image"] == "local/flower"
    for name in ("cpu-worker", "gpu-worker", "producer"):
        assert services[name]["build"]["args"]["PYTHON_IMAGE"] == "local/python"
        assert services[name]["build"]["args"]["PIP_INDEX_URL"] == "http://127.0.0.1:9/simple"
    assert services["cpu-worker"]["build"]["args"]["TORCH_INDEX_URL"].startswith("http://127.")
    defaults = load_project([COMPOSE], ENV)["services"]
    assert defaults["flower"]["image"].startswith("mher/flower")


def test_compose_file_works_with_compose_v1() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    assert "name" not in raw  # v1: "'name' does not match any of the regexes"
    assert read_env_file(ENV_EXAMPLE)["COMPOSE_PROJECT_NAME"] == "torchfleet"


def test_producer_image_has_no_torch_but_reads_npy() -> None:
    runs = " ".join(args for instruction, args in stages()["producer"] if instruction == "RUN")
    assert "torch" not in runs.replace("torchfleet", "") and "[worker]" not in runs
    requirements = " ".join(args for ins, args in stages()["requirements"] if ins == "RUN")
    assert "--pick numpy --pick pybase64 > producer.txt" in requirements


def test_compose_build_targets_exist(services: dict[str, Any]) -> None:
    built = stages()
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["target"] in built, name
            assert service["build"]["context"] == "."


def test_every_copied_file_is_in_the_build_context() -> None:
    for instruction, args in dockerfile_instructions():
        if instruction != "COPY" or args.startswith("--from"):
            continue
        *sources, _ = shlex.split(args)
        for source in sources:
            if "*" in source:
                continue  # a wildcard may match nothing (README*)
            assert (ROOT / source).exists(), source
            assert not excluded_from_context(source), source


@pytest.mark.parametrize(
    "path", [".env", ".venv/bin/python", ".git/HEAD", "artifacts/m.safetensors", "tests/x.py",
             "shared/__pycache__/jobs.cpython-311.pyc"],
)  # fmt: skip
def test_secrets_and_local_state_stay_out_of_the_build_context(path: str) -> None:
    assert excluded_from_context(path)


@pytest.mark.parametrize("path", ["pyproject.toml", "shared/jobs.py", "workers/tasks.py"])
def test_sources_are_in_the_build_context(path: str) -> None:
    assert not excluded_from_context(path)


# ------------------------------------------------------------------ the real thing, without Docker
APP_MODULE = "from shared.celery_app import create_app\n\napp = create_app()\n"


@pytest.fixture(scope="module")
def compose_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """redis-server started with the compose file's own command, on a free loopback port."""
    command = load_project([COMPOSE], ENV)["services"]["redis"]["command"]
    server = Path(find_redis_server())
    port = free_port()
    directory = tmp_path_factory.mktemp("compose-redis")
    args = [
        str(server),
        *command[1:],
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, password=PASSWORD, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None, f"redis-server refused {command}"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)  # the server is binding its port
        yield port, str(server.parent)
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.integration
def test_redis_runs_the_compose_command_with_aof_noeviction_and_a_password(
    compose_redis: tuple[int, str], services: dict[str, Any]
) -> None:
    port, bin_dir = compose_redis
    with redis.Redis(port=port, password=PASSWORD) as client:
        config = client.config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"
    assert int(config["maxmemory"]) == 2 * 1024**3
    no_retry = Retry(NoBackoff(), 0)
    with (
        redis.Redis(port=port, retry=no_retry) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.ping()
    # The compose healthcheck's own shell line, pointed at this port.
    probe = services["redis"]["healthcheck"]["test"][1]
    cli = f"{bin_dir}/redis-cli -p {port}"
    shell_line = probe.replace("redis-cli", cli)
    env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": PASSWORD}
    assert subprocess.run(["sh", "-c", shell_line], env=env, timeout=10).returncode == 0
    env["REDISCLI_AUTH"] = "wrong"
    assert subprocess.run(["sh", "-c", shell_line], env=env, timeout=10).returncode != 0


def pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


@pytest.fixture(scope="module")
def celery_worker(
    tmp_path_factory: pytest.TempPathFactory, compose_redis: tuple[int, str]
) -> Iterator[tuple[str, dict[str, str]]]:
    """A real worker of the fleet's Celery app, named as `torchfleet worker` names them,
    configured as compose configures workers (Redis URL and password apart)."""
    app_dir = tmp_path_factory.mktemp("fleetapp")
    (app_dir / "fleetapp.py").write_text(APP_MODULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHFLEET_")}
    env.update(
        TORCHFLEET_REDIS_URL=f"redis://127.0.0.1:{compose_redis[0]}/0",
        TORCHFLEET_REDIS_PASSWORD=PASSWORD,
        PYTHONPATH=f"{app_dir}{os.pathsep}{ROOT}",
    )
    node = f"torchfleet-cpu-{os.getpid()}@{socket.gethostname()}"
    command = [
        sys.executable, "-m", "celery", "-A", "fleetapp:app", "worker", "--pool", "solo",
        "--queues", "infer", "--hostname", node, "--without-gossip", "--without-mingle",
        "--loglevel", "INFO",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, cwd=app_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout
    assert stdout is not None
    threading.Thread(target=pump, args=(stdout, lines), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while not any(f"{node} ready" in line for line in seen):
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        yield node, env
    except queue.Empty:
        pytest.fail("worker never became ready:\n" + "".join(seen))
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_healthcheck_does_not_import_torch() -> None:
    probe = "import sys, deploy.healthcheck; print(sorted(m for m in sys.modules if m == 'torch'))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture
def worker_settings(
    celery_worker: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """This process's settings pointed at the worker's Redis, as a container's would be."""
    env = celery_worker[1]
    for key in ("TORCHFLEET_REDIS_URL", "TORCHFLEET_REDIS_PASSWORD"):
        monkeypatch.setenv(key, env[key])
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


@pytest.mark.integration
def test_healthcheck_finds_this_hosts_worker_through_redis(
    celery_worker: tuple[str, dict[str, str]],
) -> None:
    node, env = celery_worker
    script = ROOT / "deploy" / "healthcheck.py"
    healthy = subprocess.run(  # as Docker runs it, with the default: any worker on this host
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert healthy.returncode == 0, healthy.stderr
    assert f"{node}: ok" in healthy.stdout


@pytest.mark.integration
@pytest.mark.usefixtures("worker_settings")
def test_healthcheck_fails_when_no_matching_worker_answers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert healthcheck_main(["--node", "no-such-worker@*", "--timeout", "0.5"]) == 1
    assert "no-such-worker@*: no worker answered within 0.5s" in capsys.readouterr().err


@pytest.mark.integration
def test_healthcheck_fails_fast_on_a_wrong_password(
    worker_settings: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TORCHFLEET_REDIS_PASSWORD", "wrong")
    get_settings.cache_clear()
    started = time.monotonic()
    assert healthcheck_main([]) == 1
    assert time.monotonic() - started < 5  # one try, no retries with backoff
    assert "redis unusable: AuthenticationError" in capsys.readouterr().err
