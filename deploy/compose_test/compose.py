"""Compose (v2 ``docker compose`` or v1 ``docker-compose``) as the test runs it.

The test runs the README's commands word for word (:mod:`deploy.compose_test.commands`),
with the global options that point them at the test's own project: the compose file plus
the test's override (builds on the host network, to reach the loopback wheel index), the
test's env file, and an environment from which every variable the compose file reads has
been removed and replaced by the test's values, so a developer's ``.env``, override file or
shell cannot change what is tested. Containers are found by Compose's labels, which v1 and v2
both set (their container names differ: ``p_service_1`` against ``p-service-1``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.compose_test.host import docker
from deploy.compose_test.proc import output, run, say

OVERRIDE = Path(__file__).resolve().parent / "compose.override.yml"
# Compose v1 builds through the docker CLI when asked to, and the first `docker` on PATH may
# lack buildx: the legacy builder, through the engine's API, works with both.
BUILD_ENV = {"DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}


class ComposeFailed(RuntimeError):
    """The stack did not reach the state the test waits for."""


def compose_binary() -> list[str]:
    """``docker compose`` when the CLI has the v2 plugin, else v1's ``docker-compose``."""
    if run([docker(), "compose", "version"], check=False, quiet=True).returncode == 0:
        return [docker(), "compose"]
    return ["docker-compose"]


def compose_variables(compose_file: Path) -> set[str]:
    """Every ``${NAME...}`` the compose file reads."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", compose_file.read_text()))


@dataclass
class Compose:
    """One compose project: ``compose("docker compose up -d")`` runs that command on it."""

    root: Path
    work: Path
    values: dict[str, str]
    binary: list[str] = field(default_factory=compose_binary)

    @property
    def project(self) -> str:
        return self.values["COMPOSE_PROJECT_NAME"]

    def environment(self) -> dict[str, str]:
        drop = compose_variables(self.root / "docker-compose.yml")
        env = {
            k: v for k, v in os.environ.items() if k not in drop and not k.startswith("COMPOSE_")
        }
        env["PATH"] = "/usr/bin:" + env.get("PATH", "/usr/local/bin:/bin")
        return {**env, **self.values, **BUILD_ENV}

    def argv(self, command: str, *extra: str) -> list[str]:
        """The README ``command`` (``docker compose ...``; ``$PWD`` is the test's work
        folder) with the test's global options, then ``extra`` arguments."""
        words = shlex.split(command)
        if words[:2] != ["docker", "compose"]:
            raise ValueError(f"not a compose command: {command}")
        words = [word.replace("$PWD", str(self.work)) for word in words[2:]]
        files = ["-f", str(self.root / "docker-compose.yml"), "-f", str(OVERRIDE)]
        env_file = ["--env-file", str(self.work / ".env")]
        return [*self.binary, *files, *env_file, *words, *extra]

    def __call__(
        self,
        command: str,
        *extra: str,
        timeout: float = 900,
        check: bool = True,
        stream: bool = False,
        quiet: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        return run(
            self.argv(command, *extra), env=self.environment(), inherit=False,
            cwd=self.root, timeout=timeout, check=check, stream=stream, quiet=quiet,
        )  # fmt: skip

    # ------------------------------------------------------------------ containers
    def containers(self, service: str) -> list[dict[str, Any]]:
        """``docker inspect`` of the service's containers (running or not, one-off runs aside)."""
        ids = output(
            [docker(), "ps", "-a", "-q",
             "--filter", f"label=com.docker.compose.project={self.project}",
             "--filter", f"label=com.docker.compose.service={service}",
             "--filter", "label=com.docker.compose.oneoff=False"]
        ).split()  # fmt: skip
        if not ids:
            return []
        found: list[dict[str, Any]] = json.loads(output([docker(), "inspect", *ids]))
        return found

    def running(self, service: str) -> list[dict[str, Any]]:
        return [c for c in self.containers(service) if c["State"]["Running"]]

    def wait_healthy(self, replicas: dict[str, int], timeout_s: float = 300) -> float:
        """Wait until each service has exactly its number of running, healthy containers;
        returns the seconds it took. An exited or unhealthy container fails at once."""
        started = time.monotonic()
        while True:
            waiting = []
            for service, count in replicas.items():
                states = [c["State"] for c in self.running(service)]
                bad = [s for s in states if s.get("Health", {}).get("Status") == "unhealthy"]
                if bad:
                    raise ComposeFailed(f"{service}: a container is unhealthy\n{self.logs()}")
                healthy = sum(s.get("Health", {}).get("Status") == "healthy" for s in states)
                if healthy != count or len(states) != count:
                    waiting.append(f"{service} {healthy}/{count}")
            if not waiting:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise ComposeFailed(f"not healthy after {timeout_s:.0f}s: {waiting}\n{self.logs()}")
            time.sleep(1)  # Docker runs the healthchecks on its own schedule

    def logs(self, tail: int = 60) -> str:
        done = self("docker compose logs --no-color", "--tail", str(tail), check=False, quiet=True)
        return done.stdout[-12000:]

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of this project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
            names = output([docker(), *kind, "-q", "--filter", label]).split()
            found += [f"{kind[0]} {name}" for name in names]
        return found


def say_ps(compose: Compose) -> None:
    """``docker compose ps`` as the README shows it, into the log."""
    listing = compose("docker compose ps").stdout
    say("docker compose ps:\n" + listing.rstrip())
