"""Exports checked against eager outputs; ONNX served by ONNX Runtime; nothing unsafe loaded."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import torch

from shared.errors import CompressionError, IntegrityError, UnsafeArtifact
from shared.registry import ModelRegistry
from shared.settings import Settings
from tests.unit.compression_helpers import DATA, context, job, load_variant, register_source
from workers.backends import load_backend, load_stored_backend
from workers.compression import export as export_module
from workers.compression.export import max_mismatch
from workers.context import JobContext
from workers.jobs.compression import execute
from workers.zoo.datasets import load_dataset


@pytest.fixture
def ctx(settings: Settings, registry: ModelRegistry) -> JobContext:
    ctx = context(settings, registry, [])
    register_source(ctx.store, registry)
    return ctx


def read(ctx: JobContext, path: str) -> bytes:
    with ctx.store.fs.open(path, "rb") as f:
        data: bytes = f.read()
    return data


def val_images(count: int) -> torch.Tensor:
    val = load_dataset(DATA).val
    return torch.stack([val[i][0] for i in range(count)])


def test_all_three_exports_are_written_and_checked(ctx: JobContext) -> None:
    steps: list[dict[str, Any]] = [
        {"method": "export_torchscript"},
        {"method": "export_pt2"},
        {"method": "export_onnx"},  # the dynamo exporter, the default
    ]
    result = execute(job(steps), ctx)

    (report,) = result.variants
    assert [a.format for a in report.exports] == ["torchscript", "pt2", "onnx"]
    for artifact in report.exports:
        data = read(ctx, artifact.path)
        assert hashlib.sha256(data).hexdigest() == artifact.sha256
        assert len(data) == artifact.size_bytes and artifact.max_abs_error < 1e-3
    assert report.backend == "onnx" and report.registered
    assert report.accuracy == result.baseline.accuracy


def test_onnx_variant_is_served_by_onnx_runtime(ctx: JobContext) -> None:
    steps = [
        {"method": "prune_structured", "amount": 0.5},
        {"method": "export_onnx", "exporter": "torchscript"},
    ]
    (report,) = execute(job(steps), ctx).variants

    assert report.model_digest is not None
    served = load_stored_backend(ctx.store, report.model_digest)
    eager, manifest = load_variant(ctx, f"digits:1:{report.variant}")
    assert manifest.backend == "onnx"
    images = val_images(16)
    with torch.inference_mode():
        expected = eager(images)
    torch.testing.assert_close(served(images), expected, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(served(images.numpy()), expected, atol=1e-4, rtol=1e-3)


def test_a_tampered_onnx_file_is_refused(ctx: JobContext) -> None:
    steps = [{"method": "export_onnx", "exporter": "torchscript"}]
    (report,) = execute(job(steps), ctx).variants
    path = report.exports[0].path
    with ctx.store.fs.open(path, "wb") as f:
        f.write(b"not the graph that was checked")
    assert report.model_digest is not None
    with pytest.raises(IntegrityError, match="sha256"):
        load_stored_backend(ctx.store, report.model_digest)


def test_code_holding_backends_are_never_loaded(ctx: JobContext) -> None:
    _, manifest = load_variant(ctx, "digits:1")
    for backend in ("torchscript", "pt2", "pickle"):
        with pytest.raises(UnsafeArtifact, match="not served"):
            load_backend(manifest.model_copy(update={"backend": backend}), {}, b"")


def test_export_mismatch_fails_the_step_and_registers_nothing(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = export_module.to_torchscript

    def off_by_one(module: torch.nn.Module, sample: torch.Tensor) -> Any:
        blob, runner = real(module, sample)
        return blob, lambda x: runner(x) + 1.0

    monkeypatch.setattr(export_module, "to_torchscript", off_by_one)
    steps = [{"method": "prune_l1", "variant": "sparse"}, {"method": "export_torchscript"}]
    with pytest.raises(CompressionError, match=r"step 2 \(export_torchscript\).*differ"):
        execute(job(steps), ctx)
    assert set(ctx.registry.describe("digits")["versions"]["1"]) == {"base"}


def test_export_of_a_model_the_exporter_cannot_handle_is_a_compression_error(
    ctx: JobContext,
) -> None:
    steps = [{"method": "quantize_static", "calibration_samples": 32}, {"method": "export_onnx"}]
    with pytest.raises(CompressionError, match=r"step 2 \(export_onnx\)"):
        execute(job(steps), ctx)


def test_max_mismatch() -> None:
    ref = torch.tensor([1.0, -2.0, 100.0])
    assert max_mismatch(ref, ref, atol=0, rtol=0) == (0.0, True)
    error, ok = max_mismatch(ref, ref + torch.tensor([0.0, 0.0, 0.05]), atol=1e-6, rtol=1e-3)
    assert ok and error == pytest.approx(0.05, rel=1e-3)
    assert not max_mismatch(ref, ref + 0.01, atol=1e-3, rtol=0)[1]
    assert max_mismatch(ref, ref[:2], atol=1, rtol=1) == (float("inf"), False)
