"""Shared helpers for the compression tests: a tiny digits model, registered and trained."""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shared.jobs import CompressJob, DatasetSpec, VariantReport
from shared.manifest import Manifest
from shared.registry import ModelRegistry, VariantRecord
from shared.settings import Settings
from workers.artifacts import ArtifactStore
from workers.context import JobContext
from workers.modelio import build_module
from workers.zoo.datasets import load_dataset
from workers.zoo.models import create_model

DATA = DatasetSpec(name="digits", channels=1, image_size=8, limit=400, val_fraction=0.25)
ARCH_KWARGS: dict[str, Any] = {"num_classes": 10, "in_channels": 1, "image_size": 8}
FAST = {"latency_iters": 3, "warmup_iters": 0, "eval_dataset": DATA.model_dump()}


def linear_only(num_classes: int = 10, in_channels: int = 1, image_size: int = 8) -> nn.Module:
    """A classifier and nothing else: no layer for channel pruning to remove.

    Tests add it to the zoo with ``monkeypatch.setitem(MODELS._items, ...)`` so it never
    leaks into other tests that walk every registered architecture.
    """
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))


def quick_train(module: nn.Module, epochs: int = 15, seed: int = 0) -> nn.Module:
    """A few epochs of Adam on the digits train split (well under a second)."""
    torch.manual_seed(seed)
    bundle = load_dataset(DATA)
    images = torch.stack([x for x, _ in bundle.train])  # type: ignore[attr-defined]
    labels = torch.stack([y for _, y in bundle.train])  # type: ignore[attr-defined]
    optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
    module.train()
    for _ in range(epochs):
        for i in range(0, len(images), 64):
            loss = F.cross_entropy(module(images[i : i + 64]), labels[i : i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return module.eval()


@functools.cache
def trained_tensors(arch: str, train: bool) -> dict[str, torch.Tensor]:
    """The source weights, trained once per test session and per architecture."""
    torch.manual_seed(0)
    module = create_model(arch, **ARCH_KWARGS)
    if train:
        quick_train(module)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def register_source(
    store: ArtifactStore,
    registry: ModelRegistry,
    *,
    name: str = "digits",
    arch: str = "cifar_cnn",
    train: bool = True,
) -> str:
    """Register ``name:1:base`` (a digits-trained ``arch``); returns its digest."""
    manifest = Manifest(arch=arch, arch_kwargs=ARCH_KWARGS, input_shape=[1, 8, 8], num_classes=10)
    stored = store.put_model(trained_tensors(arch, train), manifest)
    version = registry.new_version(name)
    registry.register(name, version, "base", VariantRecord(digest=stored.sha256, arch=arch))
    return stored.sha256


def context(
    settings: Settings, registry: ModelRegistry, events: list[dict[str, Any]]
) -> JobContext:
    return JobContext(
        job_id="job-1",
        device=torch.device("cpu"),
        worker="test-worker",
        store=ArtifactStore(settings.artifacts),
        registry=registry,
        settings=settings,
        progress=events.append,
    )


def job(steps: list[dict[str, Any]], **extra: Any) -> CompressJob:
    return CompressJob.model_validate({"source": "digits:1", "steps": steps, **FAST, **extra})


def load_variant(ctx: JobContext, ref: str) -> tuple[nn.Module, Manifest]:
    """Rebuild a registered variant the way a worker does: store -> safetensors -> recipe."""
    resolved = ctx.registry.resolve(ref)
    tensors, manifest = ctx.store.get_model(resolved.record.digest)
    return build_module(manifest, tensors), manifest


def val_accuracy(module: nn.Module) -> float:
    bundle = load_dataset(DATA)
    images = torch.stack([x for x, _ in bundle.val])  # type: ignore[attr-defined]
    labels = torch.stack([y for _, y in bundle.val])  # type: ignore[attr-defined]
    with torch.inference_mode():
        correct = int((module(images).argmax(-1) == labels).sum())
    return 100.0 * correct / len(labels)


def variant_report(
    variant: str, speedup: float, accuracy_delta: float = 0.0, **fields: Any
) -> VariantReport:
    """A variant's report with placeholder sizes and latencies; ``fields`` override the rest."""
    values: dict[str, Any] = {
        "variant": variant,
        "method": "x",
        "size_bytes": 1,
        "parameters": 1,
        "accuracy": 90 + accuracy_delta,
        "latency_b1_p50_ms": 1,
        "latency_b1_p95_ms": 1,
        "latency_b32_p50_ms": 1,
        "latency_b32_p95_ms": 1,
        "speedup": speedup,
        "accuracy_delta": accuracy_delta,
    }
    return VariantReport(**{**values, **fields})
