"""Real worker processes for integration tests: started through the CLI, awaited by ping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from producers.client import Client
from shared.connection import redis_client
from shared.manifest import Manifest
from shared.registry import ModelRegistry, VariantRecord
from shared.settings import Settings
from workers.artifacts import ArtifactStore
from workers.zoo import create_model

READY_TIMEOUT_S = 120


@dataclass
class WorkerProcess:
    """`torchfleet worker` in a child process with its own name and log file."""

    env: dict[str, str]
    log_dir: Path
    queues: str = "train,compress,infer"
    concurrency: int = 8
    extra: list[str] = field(default_factory=list)
    name: str = field(default_factory=lambda: f"tf-test-{uuid.uuid4().hex[:8]}@localhost")
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_dir / f"{self.name.split('@')[0]}.log", "wb")  # noqa: SIM115
        command = [
            sys.executable, "-m", "producers.cli", "worker", "--name", self.name,
            "--queues", self.queues, "--concurrency", str(self.concurrency),
            "--device", "cpu", "--loglevel", "INFO", *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        return self

    def wait_ready(self, client: Client, timeout: float = READY_TIMEOUT_S) -> None:
        """Return once this worker answers a broadcast ping (the broker round trip is the wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}")
            replies = client.app.control.ping(destination=[self.name], timeout=0.5)
            if replies:
                return
        raise TimeoutError(f"worker {self.name} did not answer within {timeout} s")

    def stop(self, timeout: float = 60) -> int | None:
        """Warm shutdown (SIGTERM): finish running jobs, then exit."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        return code

    def kill(self) -> None:
        """SIGKILL: the worker vanishes mid-job, as on a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    @property
    def pid(self) -> int | None:
        """The worker's process id (the Celery worker itself: one process, a thread pool)."""
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout: float = 60) -> int:
        """Wait for the worker to exit on its own; its exit code."""
        if self.process is None:
            raise RuntimeError(f"worker {self.name} was never started")
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return (self.log_dir / f"{self.name.split('@')[0]}.log").read_text(errors="replace")


@dataclass
class Registered:
    name: str
    version: int
    module: torch.nn.Module


def register_cnn(settings: Settings, seed: int = 0, name: str | None = None) -> Registered:
    """A seeded, untrained cifar_cnn stored and registered exactly as training would."""
    torch.manual_seed(seed)
    module = create_model("cifar_cnn").eval()
    manifest = Manifest(
        arch="cifar_cnn",
        input_shape=[3, 32, 32],
        num_classes=10,
        class_names=[f"c{i}" for i in range(10)],
    )
    name = name or f"cnn-{uuid.uuid4().hex[:8]}"
    return Registered(name, register_module(settings, module, manifest, name), module)


def register_module(
    settings: Settings, module: torch.nn.Module, manifest: Manifest, name: str
) -> int:
    """Store ``module``'s weights with ``manifest`` and register them as the base variant of
    a new version of ``name``, exactly as training would; the version."""
    stored = ArtifactStore(settings.artifacts).put_model(module.state_dict(), manifest)
    registry = ModelRegistry(redis_client(settings))
    version = registry.new_version(name)
    registry.register(
        name, version, "base", VariantRecord(digest=stored.sha256, arch=manifest.arch)
    )
    return version


def until(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll Redis-backed state until ``check`` returns something truthy (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    interval = 0.01
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)  # polling interval of a reader of Redis state, as Client.wait does
        interval = min(0.2, interval * 1.5)
    raise TimeoutError(f"timed out waiting for {what}")


def recorded(client: Client, job_ids: Iterable[str], timeout: float = 30) -> list[dict[str, Any]]:
    """The stats stream once every job in ``job_ids`` has its record there (workers write
    records from a background thread, a moment after the answer)."""
    wanted = set(job_ids)

    def records() -> list[dict[str, Any]] | None:
        found = client.stats_records()
        return found if wanted <= {r.get("job_id") for r in found} else None

    return until(records, f"stats records of {sorted(wanted)}", timeout)
