"""The warm model cache: one per worker device, keyed by artifact digest and backend, LRU under a
byte budget.

Loading verifies the artifact's digest, builds a runner for the chosen backend (eager, eager
under ``torch.compile``, or ONNX Runtime through :mod:`workers.backends`), moves it to the
device, and runs one warm-up forward pass, so the first real request pays nothing extra.
Concurrent requests for a model being loaded wait for that one load instead of loading it
again. Listeners hear every hit, miss and eviction (the metrics module counts them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from shared.errors import IntegrityError, InvalidJob, UnsafeArtifact
from shared.manifest import Manifest
from workers.artifacts import ArtifactStore, Tensors
from workers.modelio import build_module
from workers.onnx_runtime import OnnxBackend, onnx_export_record, read_export

Runner = Callable[[torch.Tensor], torch.Tensor]
CacheKey = tuple[str, str | None]
Listener = Callable[[str, "LoadedModel"], None]
BACKENDS = ("eager", "compile", "onnx")
log = logging.getLogger("torchfleet.cache")


@dataclass
class LoadedModel:
    """A model ready to serve: ``forward`` takes a float batch already on :attr:`device`."""

    digest: str
    manifest: Manifest
    runner: Runner
    device: torch.device
    nbytes: int
    backend: str = "eager"

    @property
    def key(self) -> tuple[str, str]:
        """What the micro-batcher groups by: the same weights run by the same backend."""
        return self.digest, self.backend

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.runner(batch)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


@dataclass
class ModelCache:
    store: ArtifactStore
    device: torch.device
    budget_bytes: int
    channels_last: bool = True
    threads: int | None = None
    listeners: list[Listener] = field(default_factory=list)
    stats: CacheStats = field(default_factory=CacheStats)
    _models: OrderedDict[CacheKey, LoadedModel] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loading: dict[CacheKey, threading.Lock] = field(default_factory=dict)

    def get(self, digest: str, backend: str | None = None) -> tuple[LoadedModel, bool, float]:
        """The model, whether it was already warm, and the milliseconds spent loading it.

        ``backend`` None serves the backend the manifest names.
        """
        key: CacheKey = (digest, backend)
        with self._lock:
            model = self._hit(key)
            if model is not None:
                return model, True, 0.0
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                model = self._hit(key)
                if model is not None:
                    return model, True, 0.0
            start = time.perf_counter()
            try:
                model = load_model(
                    self.store,
                    digest,
                    self.device,
                    backend=backend,
                    channels_last=self.channels_last,
                    threads=self.threads,
                )
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            load_ms = (time.perf_counter() - start) * 1000
            with self._lock:
                self.stats.misses += 1
                self._models[key] = model
                evicted = self._evict_over_budget(keep=key)
            self._notify("miss", model)
            for old in evicted:
                self._notify("evict", old)
            return model, False, load_ms

    def _hit(self, key: CacheKey) -> LoadedModel | None:
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
            self.stats.hits += 1
            self._notify("hit", model)
        return model

    def _evict_over_budget(self, keep: CacheKey) -> list[LoadedModel]:
        evicted: list[LoadedModel] = []
        while self._used() > self.budget_bytes and len(self._models) > 1:
            key = next(iter(self._models))
            if key == keep:
                break
            evicted.append(self._models.pop(key))
            self.stats.evictions += 1
        return evicted

    def _notify(self, event: str, model: LoadedModel) -> None:
        for listener in self.listeners:
            try:
                listener(event, model)
            except Exception:  # a broken metrics hook must never fail a request
                log.exception("cache listener failed on %s", event)

    def _used(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def used_bytes(self) -> int:
        with self._lock:
            return self._used()

    def digests(self) -> list[str]:
        """Digests held, least recently used first (once each, whatever their backends)."""
        with self._lock:
            return list(dict.fromkeys(digest for digest, _ in self._models))


def load_model(
    store: ArtifactStore,
    digest: str,
    device: torch.device,
    *,
    backend: str | None = None,
    channels_last: bool = True,
    threads: int | None = None,
) -> LoadedModel:
    """Verify, rebuild, place and warm one stored model under the chosen (or its own) backend."""
    tensors, manifest = store.get_model(digest)
    chosen = backend or manifest.backend
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    if chosen == "onnx":
        runner, placed_on = onnx_runner(store, manifest, threads), torch.device("cpu")
    elif chosen in ("eager", "compile"):
        runner, placed_on = eager_runner(
            manifest, tensors, device, channels_last=channels_last, compile=chosen == "compile"
        )
    else:
        raise UnsafeArtifact(
            f"backend {chosen!r} cannot be served (it would run code from the archive); "
            f"ask for one of {', '.join(BACKENDS)}"
        )
    model = LoadedModel(digest, manifest, runner, placed_on, nbytes, chosen)
    if chosen != "compile":
        warm_up(model)
        return model
    try:  # batch 1 and 2: the dynamic-batch graph is built here, not on a live request
        warm_up(model, sizes=(1, 2))
    except Exception:  # inductor needs a C++ toolchain; serving eager beats failing
        log.warning("torch.compile failed for %s; serving it eager", digest[:12], exc_info=True)
        return load_model(store, digest, device, backend="eager", channels_last=channels_last)
    return model


def eager_runner(
    manifest: Manifest,
    tensors: Tensors,
    device: torch.device,
    *,
    channels_last: bool,
    compile: bool = False,
) -> tuple[Runner, torch.device]:
    """The module rebuilt from safetensors, on the device, behind the fast paths."""
    module = _place(build_module(manifest, tensors), device)
    placed_on = _device_of(module, device)
    is_cnn = any(isinstance(m, nn.Conv2d) for m in module.modules())
    use_channels_last = channels_last and is_cnn
    if use_channels_last:
        module = module.to(memory_format=torch.channels_last)
    call: Callable[[torch.Tensor], torch.Tensor] = module
    if compile:
        call = torch.compile(module, dynamic=True)  # minutes to build on a small CPU
    autocast = placed_on.type == "cuda"

    def run(batch: torch.Tensor) -> torch.Tensor:
        if use_channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if autocast:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return call(batch).float()
            out: torch.Tensor = call(batch)
            return out

    return run, placed_on


def onnx_runner(store: ArtifactStore, manifest: Manifest, threads: int | None) -> Runner:
    """The variant's ONNX export (sha256-checked) in an ONNX Runtime session on the CPU."""
    try:
        record = onnx_export_record(manifest)
    except IntegrityError as e:
        raise InvalidJob(
            "this variant has no ONNX export; serve it with backend 'eager', or compress it "
            "with an export_onnx step"
        ) from e
    backend = OnnxBackend(read_export(store, record), threads=threads)

    def run(batch: torch.Tensor) -> torch.Tensor:
        return backend(batch)

    return run


def warm_up(model: LoadedModel, sizes: tuple[int, ...] = (1,)) -> None:
    """Forward passes on zeros: allocations, kernel choice and compilation happen here."""
    for size in sizes:
        model.forward(torch.zeros((size, *model.manifest.input_shape), device=model.device))


def _place(module: nn.Module, device: torch.device) -> nn.Module:
    """Move to the device; quantized CPU-only modules stay on the CPU."""
    if device.type == "cpu":
        return module
    try:
        return module.to(device)
    except (RuntimeError, NotImplementedError):
        return module


def _device_of(module: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for buffer in module.buffers():
        return buffer.device
    return torch.device("cpu") if fallback.type == "cuda" else fallback
