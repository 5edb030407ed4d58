"""What a compress job measures on and how it gates speed (issue 13, items 1 and 4).

A job without ``eval_dataset`` measures the source on the data it was trained on (its
lineage), says so in its result, and is refused when that is unknown; speed-up gates name
the batch size that matters, the table shows both, and a variant slower at batch 1 is flagged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from rich.console import Console

from producers.render import render_compress
from shared.errors import InvalidJob
from shared.jobs import CompressJob, DatasetSpec, GateSpec, PipelineJob, SpeedupGate
from shared.manifest import Manifest
from shared.registry import ModelRegistry, VariantRecord
from shared.settings import Settings
from tests.unit.compression_helpers import context, variant_report
from workers.compression.variants import flags, gate
from workers.jobs.compression import compare, execute
from workers.modelio import build_module
from workers.zoo.confine import DataLimits
from workers.zoo.datasets import load_dataset
from workers.zoo.models import create_model

FAST = {"latency_iters": 3, "warmup_iters": 0}
TWO_CLASS_KWARGS: dict[str, Any] = {"num_classes": 2, "in_channels": 3, "image_size": 8}


def allowing(settings: Settings, root: Path) -> Settings:
    """The settings with ``root`` among the worker's data roots."""
    return settings.model_copy(update={"data_roots": [str(root)]})


def stripes_folder(root: Path, per_class: int = 12) -> DatasetSpec:
    """An ImageFolder of 8x8 PNGs: ``top`` is bright above, ``bottom`` below (plus noise)."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("bottom", "top")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size=(8, 8, 3), dtype=np.uint8)
            rows = slice(0, 4) if label else slice(4, 8)
            pixels[rows] += 180
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return DatasetSpec(name="imagefolder", path=str(root), image_size=8, val_fraction=0.25)


def register(ctx: Any, registry: ModelRegistry, lineage: dict[str, Any]) -> None:
    torch.manual_seed(0)
    tensors = dict(create_model("cifar_cnn", **TWO_CLASS_KWARGS).state_dict())
    manifest = Manifest(
        arch="cifar_cnn",
        arch_kwargs=TWO_CLASS_KWARGS,
        input_shape=[3, 8, 8],
        num_classes=2,
        lineage=lineage,
    )
    stored = ctx.store.put_model(tensors, manifest)
    version = registry.new_version("stripes")
    registry.register("stripes", version, "base", VariantRecord(digest=stored.sha256, arch="x"))


def compress(**extra: Any) -> CompressJob:
    steps = [{"method": "prune_l1", "amount": 0.3}]
    return CompressJob.model_validate({"source": "stripes:1", "steps": steps, **FAST, **extra})


# ------------------------------------------------------------------ item 1: which data
def test_without_eval_dataset_the_source_is_measured_on_its_own_training_data(
    settings: Settings, registry: ModelRegistry, tmp_path: Path
) -> None:
    spec = stripes_folder(tmp_path / "stripes")
    ctx = context(allowing(settings, tmp_path), registry, [])
    register(ctx, registry, {"dataset": spec.model_dump(mode="json"), "job_id": "train-1"})

    result = execute(compress(), ctx)

    assert result.eval_dataset == spec and result.eval_origin == "lineage"
    # The baseline accuracy is the source's on the folder's own validation split.
    tensors, manifest = ctx.store.get_model(ctx.registry.resolve("stripes:1").record.digest)
    module = build_module(manifest, tensors).eval()
    val = load_dataset(spec, DataLimits.from_settings(ctx.settings)).val
    images = torch.stack([x for x, _ in val])  # type: ignore[attr-defined]
    labels = torch.tensor([int(y) for _, y in val])  # type: ignore[attr-defined]
    with torch.inference_mode():
        expected = 100.0 * int((module(images).argmax(-1) == labels).sum()) / len(labels)
    assert result.baseline.accuracy == pytest.approx(expected, abs=1e-3)
    assert "the source's training data" in result.eval_description()
    assert str(tmp_path / "stripes") in result.eval_description()


def test_an_explicit_eval_dataset_wins_and_is_reported_as_the_jobs(
    settings: Settings, registry: ModelRegistry, tmp_path: Path
) -> None:
    spec = stripes_folder(tmp_path / "stripes")
    ctx = context(allowing(settings, tmp_path), registry, [])
    register(ctx, registry, {"dataset": {"name": "digits"}})

    result = execute(compress(eval_dataset=spec.model_dump()), ctx)

    assert result.eval_dataset == spec and result.eval_origin == "job"
    assert "the job's eval_dataset" in result.eval_description()


@pytest.mark.parametrize("lineage", [{}, {"dataset": {"name": "digits", "colour": "red"}}])
def test_no_known_data_is_an_input_error_that_names_eval_dataset(
    settings: Settings, registry: ModelRegistry, lineage: dict[str, Any]
) -> None:
    ctx = context(settings, registry, [])
    register(ctx, registry, lineage)

    with pytest.raises(InvalidJob, match=r"lineage.*eval_dataset"):
        execute(compress(), ctx)
    assert set(registry.describe("stripes")["versions"]["1"]) == {"base"}


def test_a_pipeline_from_a_registered_source_leaves_the_data_to_its_lineage() -> None:
    steps = [{"method": "prune_l1"}]
    assert PipelineJob(source="m:1", steps=steps).compress_dataset() is None
    trained = PipelineJob(train={"model_name": "m", "dataset": {"name": "synthetic"}}, steps=steps)
    assert trained.compress_dataset() == DatasetSpec(name="synthetic")


def test_the_printed_report_says_which_data_was_used(
    settings: Settings, registry: ModelRegistry, tmp_path: Path
) -> None:
    spec = stripes_folder(tmp_path / "stripes")
    ctx = context(allowing(settings, tmp_path), registry, [])
    register(ctx, registry, {"dataset": spec.model_dump(mode="json")})
    result = execute(compress(), ctx)

    console = Console(record=True, width=200)
    render_compress(console, result.model_dump(mode="json"))

    text = console.export_text()
    assert "measured on imagefolder" in text and "from its lineage" in text


# ------------------------------------------------------------------ item 4: batch sizes
def test_speedup_gates_take_a_batch_size_and_a_bare_ratio_means_batch_32() -> None:
    assert GateSpec(min_speedup=2).speedup_gates() == [SpeedupGate(batch=32, ratio=2)]
    one = GateSpec.model_validate({"min_speedup": {"batch": 1, "ratio": 1.2}})
    assert one.speedup_gates() == [SpeedupGate(batch=1, ratio=1.2)]
    both = GateSpec.model_validate(
        {"min_speedup": [{"batch": 1, "ratio": 1.2}, {"batch": 32, "ratio": 2}]}
    )
    assert [g.batch for g in both.speedup_gates()] == [1, 32]
    for bad in ({"batch": 8, "ratio": 2}, [{"ratio": 2}, {"ratio": 3}], True, 0):
        with pytest.raises(ValidationError):
            GateSpec.model_validate({"min_speedup": bad})


def test_a_variant_fast_at_batch_32_but_slow_at_batch_1_fails_a_batch_1_gate() -> None:
    report = variant_report("int8", speedup=2.53, speedup_b1=0.78)
    job = CompressJob.model_validate(
        {"source": "m", "steps": [{"method": "quantize_static"}], "gates": {"min_speedup": 2.0}}
    )
    assert gate(report, job) == []
    batch1 = job.model_copy(
        update={"gates": GateSpec.model_validate({"min_speedup": {"batch": 1, "ratio": 1.2}})}
    )
    assert gate(report, batch1) == ["speed-up at batch 1 0.78x < 1.2x"]


def test_a_variant_slower_at_batch_1_is_flagged_even_when_it_passes() -> None:
    base = variant_report("base", speedup=1.0, latency_b1_p50_ms=1.0, latency_b32_p50_ms=10.0)
    variant = variant_report("int8", speedup=1.0, latency_b1_p50_ms=1.28, latency_b32_p50_ms=4.0)
    job = CompressJob.model_validate({"source": "m", "steps": [{"method": "quantize_static"}]})

    checked = compare(variant, base, job)

    assert checked.passed and (checked.speedup, checked.speedup_b1) == (2.5, 0.7812)
    assert any("slower than the source at batch 1 (0.78x)" in n for n in checked.notes)
    assert flags(variant_report("fast", speedup=2.0, speedup_b1=1.1)) == []


def test_the_table_shows_the_speedup_at_both_batch_sizes() -> None:
    from shared.jobs import CompressResult

    base = variant_report("base", speedup=1.0)
    result = CompressResult(
        job_id="j", source="m:1:base", version=1, baseline=base,
        variants=[variant_report("int8", speedup=2.53, speedup_b1=0.78)],
        seconds=1.0, worker="w", device="cpu",
    )  # fmt: skip
    header, rows = result.table()
    column = header.index("speed-up b1/b32")
    assert rows[0][column] == "1.00x/1.00x" and rows[1][column] == "0.78x/2.53x"
