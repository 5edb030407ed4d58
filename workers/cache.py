"""The warm model cache: one per worker device, keyed by artifact digest, LRU under a byte budget.

Loading verifies the artifact's digest, rebuilds the module, moves it to the device, and
runs one warm-up forward pass, so the first real request pays nothing extra. Concurrent
requests for a model being loaded wait for that one load instead of loading it again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from shared.manifest import Manifest
from workers.artifacts import ArtifactStore
from workers.modelio import build_module


@dataclass
class LoadedModel:
    digest: str
    manifest: Manifest
    module: nn.Module
    device: torch.device
    nbytes: int
    channels_last: bool = False

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for a ``(N, C, H, W)`` float batch already on :attr:`device`."""
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return self.module(batch).float()
            out: torch.Tensor = self.module(batch)
            return out


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
    on_evict: Callable[[str], None] | None = None
    stats: CacheStats = field(default_factory=CacheStats)
    _models: OrderedDict[str, LoadedModel] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loading: dict[str, threading.Lock] = field(default_factory=dict)

    def get(self, digest: str) -> tuple[LoadedModel, bool, float]:
        """The model, whether it was already warm, and the milliseconds spent loading it."""
        with self._lock:
            model = self._hit(digest)
            if model is not None:
                return model, True, 0.0
            load_lock = self._loading.setdefault(digest, threading.Lock())
        with load_lock:
            with self._lock:
                model = self._hit(digest)
                if model is not None:
                    return model, True, 0.0
            start = time.perf_counter()
            model = load_model(self.store, digest, self.device)
            load_ms = (time.perf_counter() - start) * 1000
            with self._lock:
                self.stats.misses += 1
                self._models[digest] = model
                self._evict_over_budget(keep=digest)
                self._loading.pop(digest, None)
            return model, False, load_ms

    def _hit(self, digest: str) -> LoadedModel | None:
        model = self._models.get(digest)
        if model is not None:
            self._models.move_to_end(digest)
            self.stats.hits += 1
        return model

    def _evict_over_budget(self, keep: str) -> None:
        while self.used_bytes() > self.budget_bytes and len(self._models) > 1:
            digest, _ = next(iter(self._models.items()))
            if digest == keep:
                break
            del self._models[digest]
            self.stats.evictions += 1
            if self.on_evict:
                self.on_evict(digest)

    def used_bytes(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def digests(self) -> list[str]:
        with self._lock:
            return list(self._models)


def load_model(store: ArtifactStore, digest: str, device: torch.device) -> LoadedModel:
    """Verify, rebuild, place and warm one stored model."""
    tensors, manifest = store.get_model(digest)
    module = build_module(manifest, tensors)
    placed = _place(module, device)
    channels_last = device.type == "cuda" and any(
        isinstance(m, nn.Conv2d) for m in module.modules()
    )
    if channels_last:
        placed = placed.to(memory_format=torch.channels_last)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    model = LoadedModel(digest, manifest, placed, _device_of(placed, device), nbytes, channels_last)
    warm_up(model)
    return model


def warm_up(model: LoadedModel) -> None:
    sample = torch.zeros((1, *model.manifest.input_shape), device=model.device)
    model.forward(sample)


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
