"""Helpers shared by the training test modules."""

from __future__ import annotations

import torch

from shared.jobs import TrainResult
from workers.artifacts import ArtifactStore


def same_weights(store: ArtifactStore, a: TrainResult, b: TrainResult) -> bool:
    """Whether two registered results hold bit-identical weights (their digests differ: a
    digest covers the manifest, which records the job id and the creation time)."""
    wa, wb = store.get_model(a.model_digest)[0], store.get_model(b.model_digest)[0]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
