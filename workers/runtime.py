"""The worker's long-lived state: settings, Redis, registry, store, device, cache and batcher.

Built once per worker process by :func:`start_runtime`, which the worker start path calls
(:func:`workers.main.prepare_worker`); a task run outside a worker builds it lazily.
"""

from __future__ import annotations

import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
import torch

from shared.connection import redis_client
from shared.registry import ModelRegistry
from shared.settings import Settings, get_settings
from workers.artifacts import ArtifactStore
from workers.batching import MicroBatcher
from workers.cache import ModelCache
from workers.devices import GpuLease, select_device
from workers.gate import Gate
from workers.writebehind import WriteBehind


@dataclass
class Runtime:
    settings: Settings
    client: redis.Redis
    registry: ModelRegistry
    store: ArtifactStore
    device: torch.device
    cache: ModelCache
    batcher: MicroBatcher
    worker: str
    behind: WriteBehind  # stats records and clean-up, off the jobs' path
    lease: GpuLease | None = None
    counters: dict[str, int] = field(default_factory=dict)
    gate: Gate = field(default_factory=Gate)  # suspects run alone (workers/delivery.py)

    def count(self, outcome: str) -> None:
        self.counters[outcome] = self.counters.get(outcome, 0) + 1


_runtime: Runtime | None = None
_lock = threading.Lock()
_overrides: dict[str, Any] = {}


def configure(**overrides: Any) -> None:
    """Settings chosen on the command line (device, batching...) that beat the environment."""
    _overrides.update({k: v for k, v in overrides.items() if v is not None})


def effective_settings() -> Settings:
    base = get_settings()
    return Settings(**{**base.model_dump(), **_overrides}) if _overrides else base


def start_runtime(worker: str | None = None) -> Runtime:
    """Build the runtime (idempotent): pin the device, open the store, create cache and batcher."""
    global _runtime
    with _lock:
        if _runtime is not None:
            return _runtime
        settings = effective_settings()
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        client = redis_client(settings)
        name = worker or f"torchfleet@{socket.gethostname()}"
        device, lease = select_device(
            settings.device, client, f"{name}#{uuid.uuid4().hex[:8]}", settings.gpu_lease_ttl_s
        )
        store = ArtifactStore(settings.artifacts)
        _runtime = Runtime(
            settings=settings,
            client=client,
            registry=ModelRegistry(client),
            store=store,
            device=device,
            cache=ModelCache(store=store, device=device, budget_bytes=settings.cache_bytes),
            batcher=MicroBatcher(
                max_batch=settings.max_batch,
                max_wait_ms=settings.max_wait_ms,
                enabled=settings.batching,
            ),
            worker=name,
            behind=WriteBehind(client),
            lease=lease,
        )
        return _runtime


def get_runtime() -> Runtime:
    return _runtime if _runtime is not None else start_runtime()


def stop_runtime() -> None:
    """Worker shutdown: do the pending writes (stats records...), release the GPU lease."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.behind.close()
            if _runtime.lease is not None:
                _runtime.lease.release()
        _runtime = None
