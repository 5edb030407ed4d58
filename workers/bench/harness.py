"""Real worker processes, started through the CLI and awaited by ping; seeded models registered
exactly as training would. Shared by `torchfleet bench`, the tests and the chaos harness."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from shared.connection import redis_client
from shared.manifest import Manifest
from shared.registry import ModelRegistry, VariantRecord
from shared.settings import Settings
from workers.artifacts import ArtifactStore
from workers.zoo.models import MODELS, create_model

READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60
INPUT_SHAPE = (3, 32, 32)


class HasApp(Protocol):
    """Anything holding the fleet's Celery app (a producers Client, say)."""

    @property
    def app(self) -> Any: ...


@dataclass
class WorkerProcess:
    """`torchfleet worker` in a child process with its own name and log file."""

    env: dict[str, str]
    log_dir: Path
    queues: str = "train,compress,infer"
    concurrency: int = 8
    extra: list[str] = field(default_factory=list)
    name: str = field(default_factory=lambda: f"tf-test-{uuid.uuid4().hex[:8]}@localhost")
    device: str = "cpu"
    loglevel: str = "INFO"
    process: subprocess.Popen[bytes] | None = None
    launched: float = 0.0  # perf_counter() when start() was called

    @property
    def log_path(self) -> Path:
        return Path(self.log_dir) / f"{self.name.split('@')[0]}.log"

    def start(self) -> WorkerProcess:
        """Launch the process (``launched`` times it from here)."""
        command = [
            sys.executable, "-m", "producers.cli", "worker", "--name", self.name,
            "--queues", self.queues, "--concurrency", str(self.concurrency),
            "--device", self.device, "--loglevel", self.loglevel, *self.extra,
        ]  # fmt: skip
        self.launched = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        return self

    def wait_ready(self, client: HasApp, timeout: float = READY_TIMEOUT_S) -> None:
        """Return once this worker answers a broadcast ping (the broker round trip is the wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"worker {self.name} exited with {self.process.returncode}: {self.tail()}"
                )
            if client.app.control.ping(destination=[self.name], timeout=0.5):
                return
        raise TimeoutError(f"worker {self.name} did not answer within {timeout} s")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Warm shutdown (SIGTERM): finish running jobs, then exit; SIGKILL if it hangs."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

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
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 2000) -> str:
        """The end of the worker's log (for error messages)."""
        return self.log()[-chars:]


def bench_worker(
    env: dict[str, str], *, batching: bool, concurrency: int, device: str, log_dir: str
) -> WorkerProcess:
    """A fresh worker on the infer queue and the bench's own for `torchfleet bench`, started
    (timed from here)."""
    return WorkerProcess(
        env=env,
        log_dir=Path(log_dir),
        queues="infer",
        concurrency=concurrency,
        extra=["--bench", "--batching" if batching else "--no-batching"],
        name=f"bench-{uuid.uuid4().hex[:8]}@localhost",
        device=device,
        loglevel="WARNING",
    ).start()


@dataclass
class Registered:
    """A model stored and registered: its name, version, weights' digest and the module."""

    name: str
    version: int
    module: torch.nn.Module
    digest: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def register_module(
    settings: Settings, module: torch.nn.Module, manifest: Manifest, name: str
) -> Registered:
    """Store ``module``'s weights with ``manifest`` and register them as the base variant of
    a new version of ``name``, exactly as training would."""
    stored = ArtifactStore(settings.artifacts).put_model(module.state_dict(), manifest)
    registry = ModelRegistry(redis_client(settings))
    version = registry.new_version(name)
    registry.register(
        name, version, "base", VariantRecord(digest=stored.sha256, arch=manifest.arch)
    )
    return Registered(name, version, module, stored.sha256)


def register_seeded(
    settings: Settings,
    arch: str,
    name: str,
    *,
    seed: int = 0,
    input_shape: tuple[int, ...] = INPUT_SHAPE,
    class_names: list[str] | None = None,
    lineage: dict[str, Any] | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
) -> Registered:
    """A seeded, untrained ``arch`` from the zoo, stored and registered as ``name``."""
    arch_kwargs = dict(arch_kwargs or {})
    torch.manual_seed(seed)
    module = create_model(arch, **arch_kwargs).eval()
    classes = int(arch_kwargs.get("num_classes", _default_classes(arch)))
    manifest = Manifest(
        arch=arch,
        arch_kwargs=arch_kwargs,
        input_shape=list(input_shape),
        num_classes=classes,
        class_names=class_names or [f"c{i}" for i in range(classes)],
        lineage=lineage or {},
    )
    return register_module(settings, module, manifest, name)


def register_bench_model(settings: Settings, arch: str) -> Registered:
    """A seeded, untrained ``arch`` under a fresh ``bench-*`` name, as `torchfleet bench` uses."""
    name = f"bench-{arch.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    classes = [str(i) for i in range(10)]
    lineage = {"source": "torchfleet bench"}
    return register_seeded(settings, arch, name, class_names=classes, lineage=lineage)


def _default_classes(arch: str) -> int:
    """The class count an architecture's builder uses when it is not given one."""
    return int(inspect.signature(MODELS.get(arch)).parameters["num_classes"].default)
