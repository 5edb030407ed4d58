"""The registry's records and how its Redis hash reads as text (see :mod:`shared.registry`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from shared.errors import ModelNotFound

BASE_VARIANT = "base"
Target = tuple[int, str]  # (version, variant)


class VariantRecord(BaseModel):
    digest: str
    arch: str
    method: str = "train"
    metrics: dict[str, Any] = Field(default_factory=dict)
    parent: str | None = None
    job_id: str | None = None
    created_at: float = Field(default_factory=time.time)


class AliasRecord(BaseModel):
    version: int
    variant: str = BASE_VARIANT
    history: list[tuple[int, str]] = Field(default_factory=list)

    @property
    def target(self) -> Target:
        return self.version, self.variant


class Resolved(BaseModel):
    """A reference resolved to one stored artifact."""

    name: str
    version: int
    variant: str
    record: VariantRecord

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}:{self.variant}"


def variant_field(version: int, variant: str) -> str:
    return f"variant:{version}:{variant}"


def reservation_field(job_id: str) -> str:
    return f"job:{job_id}"


def decoded(name: str, raw: Mapping[Any, Any]) -> dict[str, str]:
    """A model's registry hash as text, or :class:`ModelNotFound` if there is none."""
    if not raw:
        raise ModelNotFound(
            f"model {name!r} is not registered; `torchfleet models list` shows what is"
        )
    return {text(k): text(v) for k, v in raw.items()}


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
