"""ONNX graphs on the CPU: the session a worker serves, and the checked read of an export.

An ONNX file is data only (no code inside), so a worker may load it; its bytes are checked
against the sha256 its manifest recorded when the export_onnx step wrote it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from shared.errors import IntegrityError
from shared.manifest import Manifest
from workers.artifacts import ArtifactStore


class OnnxBackend:
    """An ONNX Runtime session that takes a float batch (numpy or torch) and returns logits."""

    def __init__(self, blob: bytes, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                blob, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own untyped errors on bad graphs
            raise IntegrityError(f"the ONNX graph cannot be loaded: {e}") from e
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().cpu().numpy()
        array = np.ascontiguousarray(batch, dtype=np.float32)
        (logits,) = self.session.run(None, {self.input_name: array})[:1]
        return torch.from_numpy(np.asarray(logits))


def onnx_export_record(manifest: Manifest) -> dict[str, Any]:
    """The manifest's record of its ONNX file (written by the export_onnx step)."""
    for record in manifest.lineage.get("exports", []):
        if record.get("format") == "onnx":
            return dict(record)
    raise IntegrityError("the manifest says backend 'onnx' but records no ONNX export")


def read_export(store: ArtifactStore, record: dict[str, Any]) -> bytes:
    """Read an export artifact's bytes (from inside the store only), checked against its
    recorded sha256."""
    return store.read_export(str(record.get("path")), str(record.get("sha256")))
