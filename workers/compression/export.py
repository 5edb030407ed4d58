"""Exports: TorchScript, ``torch.export`` (.pt2) and ONNX, each checked against eager outputs.

Every export is written to the artifact store under ``exports/{sha256}.{ext}`` and checked
on a sample of validation inputs; a mismatch beyond ``atol + rtol * |eager|`` fails the step.
Only ONNX becomes a served backend (ONNX Runtime); TorchScript and .pt2 archives contain
code, so they are artifacts for other runtimes and are never loaded by a worker.
"""

from __future__ import annotations

import copy
import hashlib
import io
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from shared.errors import CompressionError
from shared.jobs import ExportArtifact, ExportOnnxStep, ExportPt2Step, ExportSpec
from shared.jobs import ExportTorchScriptStep as ExportTsStep
from workers.artifacts import ArtifactStore
from workers.compression.methods import METHODS
from workers.compression.steps import ModelState, Runner, StepEnv, first_inputs
from workers.onnx_runtime import OnnxBackend

EXTENSIONS = {"torchscript": "ts.pt", "pt2": "pt2", "onnx": "onnx"}


# ------------------------------------------------------------------ pure helpers
def max_mismatch(
    reference: torch.Tensor, candidate: torch.Tensor, *, atol: float, rtol: float
) -> tuple[float, bool]:
    """The largest absolute difference, and whether every element is within tolerance."""
    if reference.shape != candidate.shape:
        return float("inf"), False
    diff = (reference - candidate).abs()
    ok = bool((diff <= atol + rtol * reference.abs()).all())
    return float(diff.max()) if diff.numel() else 0.0, ok


def put_export(store: ArtifactStore, data: bytes, fmt: str) -> tuple[str, str]:
    """Write export bytes under ``exports/`` by their sha256 (atomically); (path, digest)."""
    digest = hashlib.sha256(data).hexdigest()
    folder = f"{store.root}/exports"
    path = f"{folder}/{digest}.{EXTENSIONS[fmt]}"
    store.fs.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with store.fs.open(tmp, "wb") as f:
        f.write(data)
    store.fs.mv(tmp, path)
    return path, digest


def check_sample(env: StepEnv, count: int) -> torch.Tensor:
    """At least two inputs, so exporters do not specialise the batch dimension to 1."""
    sample = first_inputs(env.val, max(count, 2))
    return sample if len(sample) >= 2 else sample.repeat(2, 1, 1, 1)[:2]


# ------------------------------------------------------------------ exporters
def to_torchscript(module: nn.Module, sample: torch.Tensor) -> tuple[bytes, Runner]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, sample, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue(), traced


def to_pt2(module: nn.Module, sample: torch.Tensor) -> tuple[bytes, Runner]:
    batch = torch.export.Dim("batch", min=1, max=65_536)
    program = torch.export.export(module, (sample,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    runner: Runner = program.module()
    return buffer.getvalue(), runner


def to_onnx(
    module: nn.Module, sample: torch.Tensor, *, opset: int | None, exporter: str
) -> tuple[bytes, Runner]:
    kwargs: dict[str, Any] = {"input_names": ["input"], "output_names": ["logits"]}
    if opset is not None:
        kwargs["opset_version"] = opset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=65_536)
            program = torch.onnx.export(
                module,
                (sample,),
                dynamo=True,
                dynamic_shapes=({0: batch},),
                verbose=False,
                **kwargs,
            )
            if program is None:
                raise CompressionError("export_onnx: the exporter returned no program")
            blob = program.model_proto.SerializeToString()
        else:
            buffer = io.BytesIO()
            torch.onnx.export(
                module,
                (sample,),
                buffer,  # type: ignore[arg-type]
                dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                **kwargs,
            )
            blob = buffer.getvalue()
    return blob, OnnxBackend(blob)


# ------------------------------------------------------------------ the shared step
def export_step(
    step: ExportSpec,
    state: ModelState,
    env: StepEnv,
    fmt: str,
    exporter: Callable[[nn.Module, torch.Tensor], tuple[bytes, Runner]],
) -> ModelState:
    method = f"export_{fmt}"
    if state.runner is not None and fmt == "onnx":
        raise CompressionError(f"{method}: the model was already exported to ONNX")
    module = copy.deepcopy(state.module).cpu().eval()
    sample = check_sample(env, step.check_samples)
    try:
        blob, runner = exporter(module, sample)
        with torch.inference_mode():
            expected, actual = module(sample), runner(sample)
    except CompressionError:
        raise
    except Exception as e:  # exporters raise a zoo of error types on unsupported models
        raise CompressionError(f"{method}: export failed: {type(e).__name__}: {e}") from e
    error, ok = max_mismatch(expected, actual, atol=step.atol, rtol=step.rtol)
    if not ok:
        raise CompressionError(
            f"{method}: exported outputs differ from eager by up to {error:.3g} "
            f"(atol={step.atol}, rtol={step.rtol}); the export is not faithful"
        )
    path, digest = put_export(env.store, blob, fmt)
    artifact = ExportArtifact(
        format=fmt,  # type: ignore[arg-type]
        path=path,
        sha256=digest,
        size_bytes=len(blob),
        max_abs_error=error,
    )
    changes: dict[str, Any] = {"exports": (*state.exports, artifact)}
    if fmt == "onnx":
        changes.update(runner=runner, backend="onnx")
        note = "served through ONNX Runtime (CPU); latency measured there"
    else:
        note = f"{fmt} archive written as an artifact only (holds code: never loaded by workers)"
    return state.advance(method, add_notes=(note,), **changes)


@METHODS.step(ExportTsStep, tag="ts")
def export_torchscript_step(step: ExportTsStep, state: ModelState, env: StepEnv) -> ModelState:
    return export_step(step, state, env, "torchscript", to_torchscript)


@METHODS.step(ExportPt2Step, tag="pt2")
def export_pt2_step(step: ExportPt2Step, state: ModelState, env: StepEnv) -> ModelState:
    return export_step(step, state, env, "pt2", to_pt2)


@METHODS.step(ExportOnnxStep, tag="onnx")
def export_onnx_step(step: ExportOnnxStep, state: ModelState, env: StepEnv) -> ModelState:
    def exporter(module: nn.Module, sample: torch.Tensor) -> tuple[bytes, Runner]:
        return to_onnx(module, sample, opset=step.opset, exporter=step.exporter)

    return export_step(step, state, env, "onnx", exporter)
