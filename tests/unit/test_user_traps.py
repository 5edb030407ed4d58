"""Traps a new user hit (issue 13): step order, registry messages, images, 80 columns, banner."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from rich.progress import Progress

from producers.cli.jobs import show_progress
from producers.encoding import encode_images
from producers.render import render_model, render_result
from producers.specs import validate_job
from producers.state import JobState
from shared.errors import InvalidJob, ModelNotFound
from shared.jobs import CompressResult, VariantReport
from shared.registry import ModelRegistry, VariantRecord
from shared.settings import Settings

PNG_1PX = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x00\x00\x00:~\x9bU"
    b"\x00\x00\x00\nIDATx\x9cc\xf8\x0f\x00\x01\x01\x01\x00\x18\xdd\x8d\xb4\x00\x00\x00\x00IEND\xaeB`\x82"
)


# ------------------------------------------------------------------ item 10: step order
def pipeline(*methods: str) -> dict[str, Any]:
    return {
        "kind": "pipeline",
        "train": {"model_name": "digits", "arch": "mlp"},
        "steps": [{"method": m, "variant": f"v{i}"} for i, m in enumerate(methods)],
    }


def test_a_step_that_needs_a_float_model_after_quantization_is_refused_at_submit() -> None:
    with pytest.raises(InvalidJob, match=r"steps\[1\] prune_structured cannot follow steps\[0\]"):
        validate_job(pipeline("quantize_dynamic", "prune_structured"))
    with pytest.raises(InvalidJob, match="put finetune before quantize_static"):
        steps = [{"method": "quantize_static"}, {"method": "finetune"}]
        validate_job({"kind": "compress", "source": "m:1", "steps": steps})
    with pytest.raises(InvalidJob, match="exported to ONNX once"):
        validate_job(pipeline("export_onnx", "export_onnx"))
    with pytest.raises(InvalidJob, match="put exports last"):
        validate_job(pipeline("export_onnx", "finetune"))


@pytest.mark.parametrize(
    "methods",
    [
        ("prune_structured", "finetune", "quantize_dynamic"),
        ("prune_l1", "quantize_static", "export_onnx"),
        ("quantize_dynamic", "export_torchscript", "export_pt2"),
        ("export_onnx", "export_torchscript"),
        ("cast",),
    ],
)
def test_orders_the_workers_run_pass(methods: tuple[str, ...]) -> None:
    assert validate_job(pipeline(*methods)).kind == "pipeline"


# ------------------------------------------------------------------ item 14: registry
def test_a_missing_version_is_named_as_such(registry: ModelRegistry) -> None:
    record = VariantRecord(digest="a" * 64, arch="mlp")
    registry.register("digits", registry.new_version("digits"), "base", record)
    registry.register("digits", registry.new_version("digits"), "base", record)
    with pytest.raises(ModelNotFound, match="has no version 7; its versions: 1, 2"):
        registry.resolve("digits:7")
    with pytest.raises(ModelNotFound, match="no variant 'int8' at version 2"):
        registry.resolve("digits:2:int8")


# ------------------------------------------------------------------ items 12, 13: images
def test_images_are_taken_as_paths_or_bytes_and_anything_else_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "one.png"
    path.write_bytes(PNG_1PX)
    by_path, by_bytes = encode_images([path, PNG_1PX])
    assert by_path == by_bytes and by_path.format == "png"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidJob, match=r"notes\.txt is not a PNG or JPEG image"):
        encode_images([tmp_path / "notes.txt"])
    with pytest.raises(InvalidJob, match="cannot read image"):
        encode_images([tmp_path / "missing.png"])


@pytest.mark.parametrize("shape", [(2, 12, 10, 3), (1, 12, 10, 3), (12, 10, 3)])
def test_channels_last_uint8_pixels_read_as_channels_first_ones(shape: tuple[int, ...]) -> None:
    import torch

    from producers.encoding import encode_array
    from shared.manifest import Manifest, Preprocessing
    from workers.inference import decode_inputs

    manifest = Manifest(
        arch="cifar_cnn", input_shape=[3, 32, 32], num_classes=3,
        preprocessing=Preprocessing(image_size=32, channels=3, mean=[0.5] * 3, std=[0.25] * 3),
    )  # fmt: skip
    pixels = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    first = np.moveaxis(pixels if pixels.ndim == 4 else pixels[None], -1, 1)  # what PIL gives
    expected = decode_inputs(encode_array(np.ascontiguousarray(first)), manifest, max_items=8)
    batch = decode_inputs(encode_array(pixels), manifest, max_items=8)
    torch.testing.assert_close(batch, expected)


# ------------------------------------------------------------------ item 15: looks
def variant(name: str, registered: bool) -> VariantReport:
    return VariantReport(
        variant=name, method="prune_structured+finetune+quantize_static", size_bytes=123456,
        parameters=21386, sparsity=0.5, accuracy=95.0, accuracy_delta=-0.5,
        latency_b1_p50_ms=0.512, latency_b1_p95_ms=0.734, latency_b32_p50_ms=3.125,
        latency_b32_p95_ms=3.5, speedup=2.53, registered=registered,
    )  # fmt: skip


def narrow() -> Console:
    return Console(record=True, width=80, file=io.StringIO())


def test_the_compress_table_fits_80_columns_without_ellipses() -> None:
    result = CompressResult(
        job_id="j", source="user-digits:1", version=1, baseline=variant("base", False),
        variants=[variant("int8static", True), variant("pruned", False)], seconds=1.0,
        worker="w", device="cpu",
    )  # fmt: skip
    console = narrow()
    render_result(console, result.model_dump(mode="json"))
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    header, rows = result.table()
    for cell in [*header, *rows[1]]:  # every header and every figure is there, whole
        assert cell in text, cell


def test_an_epoch_end_is_printed_whole_at_80_columns() -> None:
    console = narrow()
    progress = {
        "stage": "train", "epoch": 3, "epochs": 10, "step": 23, "steps": 23, "loss": 0.2431,
        "accuracy": 0.9375, "eta_s": 9.1, "val_loss": 0.3012, "val_accuracy": 0.9444, "lr": 0.01,
    }  # fmt: skip
    with Progress(console=console) as bar:
        task = bar.add_task("queued", total=1.0)
        show_progress(bar, task, JobState("j", "PROGRESS", progress=progress))
    text = console.export_text()
    assert "…" not in text
    whole = " ".join(text.split())
    for part in ("epoch 3/10", "val_loss 0.3012", "val_accuracy 94.4%", "lr 0.01", "ETA 9s"):
        assert part in whole, part


def test_models_show_is_a_table() -> None:
    record = VariantRecord(digest="f" * 64, arch="mlp", metrics={"best_val_accuracy": 0.95})
    info = {
        "name": "digits",
        "versions": {"1": {"base": record.model_dump(mode="json")}},
        "aliases": {"production": {"version": 1, "variant": "base", "history": []}},
    }
    console = narrow()
    render_model(console, info)
    text = console.export_text()
    assert "production" in text and "best_val_accuracy 95.00%" in text and "ffffffffffff" in text
    assert "{" not in text  # a table, not JSON


@pytest.mark.parametrize(
    ("settings", "shown"),
    [
        (Settings(redis_url="redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0"),
        (Settings(redis_url="redis://:s3cret@10.0.0.2:6379/0"), "redis://:**@10.0.0.2:6379/0"),
        (Settings(redis_url="redis://10.0.0.2:6379/0", redis_password="x"), ":**@"),
    ],
)
def test_the_banner_masks_only_a_password_that_exists(settings: Settings, shown: str) -> None:
    from kombu import Connection

    from shared.connection import redis_url
    from workers.main import banner_urls

    banner = f".> transport:   {Connection(redis_url(settings)).as_uri()}"
    assert shown in banner_urls(banner, settings)
    assert "s3cret" not in banner_urls(banner, settings)
