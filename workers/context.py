"""What a job's pure code gets from the worker that runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from shared.registry import ModelRegistry
from shared.settings import Settings
from workers.artifacts import ArtifactStore

ProgressFn = Callable[[dict[str, Any]], None]


def _no_progress(_: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class JobContext:
    """The job id (also the Celery task id), where to run, and where to keep what comes out."""

    job_id: str
    device: torch.device
    worker: str
    store: ArtifactStore
    registry: ModelRegistry
    settings: Settings
    progress: ProgressFn = field(default=_no_progress)
