"""Helpers shared by the training test modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from shared.jobs import TrainResult
from shared.registry import ModelRegistry
from shared.settings import Settings
from workers.artifacts import ArtifactStore
from workers.context import JobContext

MakeContext = Callable[..., JobContext]


def context_maker(settings: Settings, registry: ModelRegistry, store: ArtifactStore) -> MakeContext:
    """A builder of CPU job contexts over one store and registry: ``make(job_id, progress)``."""

    def make(
        job_id: str = "job-1", progress: Callable[[dict[str, Any]], None] | None = None
    ) -> JobContext:
        return JobContext(
            job_id=job_id,
            device=torch.device("cpu"),
            worker="test-worker",
            store=store,
            registry=registry,
            settings=settings,
            progress=progress or (lambda _: None),
        )

    return make


def same_weights(store: ArtifactStore, a: TrainResult, b: TrainResult) -> bool:
    """Whether two registered results hold bit-identical weights (their digests differ: a
    digest covers the manifest, which records the job id and the creation time)."""
    wa, wb = store.get_model(a.model_digest)[0], store.get_model(b.model_digest)[0]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
