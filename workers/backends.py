"""Inference backends a worker can serve without unpickling anything.

* ``eager``: safetensors + the manifest's recipe, rebuilt by :func:`workers.modelio.build_module`.
* ``onnx``: an ONNX graph (data only, no code) run by ONNX Runtime on the CPU.

TorchScript and ``torch.export`` archives are produced by compression jobs as export
artifacts only: loading them means trusting code inside the archive, so no worker does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from shared.errors import IntegrityError, UnsafeArtifact
from shared.manifest import Manifest
from workers.artifacts import ArtifactStore, Tensors
from workers.modelio import build_module
from workers.onnx_runtime import OnnxBackend, onnx_export_record, read_export

Backend = Callable[[Any], torch.Tensor]
SERVED = ("eager", "onnx")


def load_backend(
    manifest: Manifest,
    tensors: Tensors | None = None,
    blob: bytes | None = None,
    *,
    threads: int | None = None,
) -> Backend:
    """A callable ``batch -> logits`` for a stored variant: eager from ``tensors``, ONNX from
    ``blob``. Any other backend is refused as unsafe to load."""
    if manifest.backend == "onnx":
        if blob is None:
            raise IntegrityError("an ONNX variant needs its ONNX bytes to be served")
        return OnnxBackend(blob, threads=threads)
    if manifest.backend == "eager":
        if tensors is None:
            raise IntegrityError("an eager variant needs its safetensors weights")
        module = build_module(manifest, tensors)

        def run(batch: Any) -> torch.Tensor:
            x = torch.as_tensor(batch, dtype=torch.float32)
            with torch.inference_mode():
                out: torch.Tensor = module(x)
            return out

        return run
    raise UnsafeArtifact(
        f"backend {manifest.backend!r} is not served (it would need code from the archive); "
        f"served backends: {', '.join(SERVED)}"
    )


def load_stored_backend(
    store: ArtifactStore, digest: str, *, threads: int | None = None
) -> Backend:
    """Load a registered variant from the store by digest, whatever its served backend."""
    tensors, manifest = store.get_model(digest)
    blob = read_export(store, onnx_export_record(manifest)) if manifest.backend == "onnx" else None
    return load_backend(manifest, tensors, blob, threads=threads)
