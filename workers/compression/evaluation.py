"""Measure a model honestly: size, parameters, sparsity, accuracy and latency percentiles.

Latency is measured for every candidate in one interleaved loop (baseline, variant A,
variant B, baseline, ...) so that a noisy neighbour or a frequency change hits them all
alike; p50/p95 are over ``iters`` timed calls after ``warmup`` untimed ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from shared.manifest import Manifest
from shared.stats import percentile
from workers.artifacts import Tensors, to_safetensors
from workers.compression.steps import ModelState, Runner, Sample, is_quantized, loader
from workers.modelio import export_tensors

BATCHES = (1, 32)


@dataclass(frozen=True)
class Candidate:
    """A runnable model and where it runs."""

    runner: Runner
    device: torch.device


@dataclass(frozen=True)
class Percentiles:
    p50_ms: float
    p95_ms: float
    min_ms: float


def count_weights(module: nn.Module) -> int:
    """Parameters of the float layers plus the weight and bias elements of quantized ones."""
    total = sum(p.numel() for p in module.parameters())
    for layer in module.modules():
        if ".quantized" not in type(layer).__module__:
            continue
        for getter in (getattr(layer, "weight", None), getattr(layer, "bias", None)):
            value = getter() if callable(getter) else None
            total += value.numel() if isinstance(value, torch.Tensor) else 0
    return total


def stored_tensors(module: nn.Module, manifest: Manifest) -> tuple[Tensors, int]:
    """The tensors a variant is stored as, and the size of their safetensors blob."""
    tensors = export_tensors(module, manifest)
    return tensors, len(to_safetensors(tensors))


def candidate(state: ModelState, device: torch.device) -> Candidate:
    """How to run the state's model: its export runner, else the eager module (int8 on CPU)."""
    if state.runner is not None:
        return Candidate(state.runner, torch.device("cpu"))
    where = torch.device("cpu") if is_quantized(state.module) else device
    module = state.module.to(where).eval()

    def run(batch: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = module(batch)
        return out

    return Candidate(run, where)


def accuracy(model: Candidate, data: Dataset[Sample], batch_size: int = 256) -> float:
    """Top-1 accuracy in percent."""
    predicted, labels = predictions(model, data, batch_size)
    return 100.0 * int((predicted == labels).sum()) / max(len(labels), 1)


def predictions(
    model: Candidate, data: Dataset[Sample], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-1 class of every sample of ``data`` in order, and the true labels."""
    predicted, labels = [], []
    with torch.inference_mode():
        for images, targets in loader(data, batch_size, shuffle=False):
            predicted.append(model.runner(images.to(model.device)).cpu().argmax(dim=-1))
            labels.append(targets)
    if not labels:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(predicted), torch.cat(labels)


@dataclass(frozen=True)
class Flips:
    """How a compressed model's answers differ from its source's on the same samples."""

    fixed: int  # the source was wrong, the compressed model right
    broken: int  # the source was right, the compressed model wrong
    total: int

    @property
    def net(self) -> int:
        return self.fixed - self.broken


def flips(source: torch.Tensor, other: torch.Tensor, labels: torch.Tensor) -> Flips:
    """Paired comparison of two models' predictions on the same labelled samples."""
    source_right, other_right = source == labels, other == labels
    return Flips(
        fixed=int((~source_right & other_right).sum()),
        broken=int((source_right & ~other_right).sum()),
        total=len(labels),
    )


def batch_of(data: Dataset[Sample], size: int) -> torch.Tensor:
    """``size`` validation inputs (cycled when the split is smaller)."""
    count = len(data)  # type: ignore[arg-type]
    return torch.stack([data[i % count][0] for i in range(size)])


def latencies(
    models: dict[str, Candidate], inputs: torch.Tensor, *, iters: int, warmup: int
) -> dict[str, Percentiles]:
    """p50/p95 milliseconds per model on ``inputs``, timed round-robin."""
    placed = {name: inputs.to(m.device) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for i in range(warmup + iters):
            for name, model in models.items():
                started = time.perf_counter()
                model.runner(placed[name])
                if model.device.type == "cuda":
                    torch.cuda.synchronize(model.device)
                if i >= warmup:
                    times[name].append((time.perf_counter() - started) * 1000)
    return {
        name: Percentiles(percentile(t, 50), percentile(t, 95), min(t)) for name, t in times.items()
    }


def latency_grid(
    models: dict[str, Candidate], data: Dataset[Sample], *, iters: int, warmup: int
) -> dict[int, dict[str, Percentiles]]:
    """Latency percentiles at each of :data:`BATCHES`."""
    return {
        batch: latencies(models, batch_of(data, batch), iters=iters, warmup=warmup)
        for batch in BATCHES
    }
