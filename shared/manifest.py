"""The manifest stored beside every set of weights (torch-free: producers read it too)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.jobs import SCHEMA_VERSION


class Preprocessing(BaseModel):
    """How raw images become the model's input tensor."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = 32
    channels: int = 3
    scale: float = Field(default=1 / 255, description="Multiplier applied to raw pixel values.")
    mean: list[float] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = Field(default_factory=lambda: [0.229, 0.224, 0.225])


class Manifest(BaseModel):
    """What a worker needs to rebuild a module from safetensors, and what it is known to do.

    ``recipe`` lists the transformations (for example a quantization) to apply to the freshly
    built float architecture before loading the stored tensors; an empty recipe means the
    stored tensors are a plain ``state_dict`` of ``arch``.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    input_shape: list[int]
    num_classes: int
    class_names: list[str] = Field(default_factory=list)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    recipe: list[dict[str, Any]] = Field(default_factory=list)
    backend: str = Field(default="eager", description="eager, onnx, torchscript or compile.")
    format: str = Field(default="safetensors")
    metrics: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    sha256: str = ""
    size_bytes: int = 0
    created_at: float = Field(default_factory=time.time)


# Derived from the weight bytes, so left out of the digest that those bytes carry.
DERIVED_FIELDS = frozenset({"sha256", "size_bytes"})


def manifest_digest(manifest: Manifest) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), minus the fields
    derived from the weights. The weights file carries it in its safetensors metadata, so the
    registry's one digest (of the weight bytes) covers the manifest too."""
    document = manifest.model_dump(mode="json", exclude=set(DERIVED_FIELDS))
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
