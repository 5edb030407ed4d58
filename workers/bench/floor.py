"""The in-process floor of `torchfleet bench`: a stored model called through the worker's own
loader and fast paths, with no queue in between; and the machine the figures come from."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import celery
import numpy as np
import torch

from shared.jobs import InferJob, TensorPayload
from shared.settings import Settings
from workers.artifacts import ArtifactStore
from workers.batching import timed_forward
from workers.cache import load_model
from workers.inference import decode_inputs

WARMUP_CALLS = 3
WIRE_ROUNDS = 20
MIN_CALLS = 5


class Floor:
    """One stored model loaded in this process, on the bench's device and thread count."""

    def __init__(self, settings: Settings, digest: str, *, device: str, threads: int) -> None:
        torch.set_num_threads(threads)
        target = torch.device(device if device.startswith("cuda") else "cpu")
        self.model = load_model(ArtifactStore(settings.artifacts), digest, target)

    def forward_ms(self, array: np.ndarray, *, iters: int, budget_s: float) -> list[float]:
        """Milliseconds per forward of ``array`` (after a warm-up); past ``budget_s`` seconds
        it stops once it has a few."""
        batch = torch.from_numpy(array)
        for _ in range(WARMUP_CALLS):
            timed_forward(self.model, batch)
        latencies: list[float] = []
        deadline = time.perf_counter() + budget_s
        for _ in range(iters):
            t0 = time.perf_counter()
            timed_forward(self.model, batch)
            latencies.append((time.perf_counter() - t0) * 1000)
            if t0 > deadline and len(latencies) >= MIN_CALLS:
                break
        return latencies

    def wire_ms(
        self, array: np.ndarray, encode: Callable[[Any], TensorPayload], *, iters: int
    ) -> tuple[list[float], list[float]]:
        """Milliseconds to encode ``array`` into a job's JSON (the producer's side) and to
        decode it back into a batch (the worker's side)."""
        encode_ms, decode_ms = [], []
        for _ in range(min(iters, WIRE_ROUNDS)):
            t0 = time.perf_counter()
            wire = InferJob(model="m", inputs=encode(array)).model_dump_json()
            t1 = time.perf_counter()
            job = InferJob.model_validate_json(wire)
            decode_inputs(job.inputs, self.model.manifest, 1024)
            t2 = time.perf_counter()
            encode_ms.append((t1 - t0) * 1000)
            decode_ms.append((t2 - t1) * 1000)
        return encode_ms, decode_ms


def machine(device: str, threads: int) -> dict[str, Any]:
    """Where the figures come from: CPU, cores, library versions, device, threads."""
    gpu = torch.cuda.get_device_name(torch.device(device).index or 0) if "cuda" in device else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "celery": celery.__version__,
        "device": f"{device} ({gpu})" if gpu else device,
        "torch_threads": threads,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
