"""Compress jobs end to end on a tiny digits CNN: every method, round trips, gates, bad input."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError

from shared.errors import CompressionError, InvalidJob
from shared.jobs import CompressJob
from shared.registry import ModelRegistry, VariantRecord
from shared.settings import Settings
from tests.unit.compression_helpers import (
    context,
    job,
    linear_only,
    load_variant,
    register_source,
    val_accuracy,
)
from workers.context import JobContext
from workers.jobs.compression import execute
from workers.zoo.models import MODELS


@pytest.fixture
def ctx(settings: Settings, registry: ModelRegistry) -> JobContext:
    events: list[dict[str, Any]] = []
    ctx = context(settings, registry, events)
    register_source(ctx.store, registry)
    return ctx


def variants_of(ctx: JobContext) -> dict[str, Any]:
    return ctx.registry.describe("digits")["versions"]["1"]


@pytest.mark.parametrize(
    ("steps", "name"),
    [
        ([{"method": "prune_l1", "amount": 0.5}], "l1"),
        ([{"method": "prune_global", "amount": 0.6}], "gl1"),
        ([{"method": "prune_structured", "amount": 0.5}, {"method": "finetune"}], "pruned-ft"),
        ([{"method": "quantize_dynamic"}], "int8dyn"),
        ([{"method": "quantize_dynamic", "per_channel": True}], "int8dyn"),
        ([{"method": "quantize_static", "calibration_samples": 64}], "int8"),
        (
            [{"method": "distill", "student_kwargs": {"hidden": 16, "depth": 1}, "epochs": 3}],
            "student",
        ),
    ],
)
def test_each_method_registers_a_variant_that_rebuilds_from_storage(
    ctx: JobContext, steps: list[dict[str, Any]], name: str
) -> None:
    result = execute(job(steps), ctx)

    (report,) = result.variants
    assert report.variant == name
    assert report.registered and report.passed
    assert report.steps == [s["method"] for s in steps]
    module, manifest = load_variant(ctx, f"digits:1:{name}")
    # The module a worker rebuilds from safetensors + recipe scores exactly what was reported.
    assert val_accuracy(module) == pytest.approx(report.accuracy, abs=1e-6)
    assert ctx.registry.get("digits", 1, name).parent == "digits:1:base"
    assert manifest.lineage["parent"] == "digits:1:base"
    assert report.latency_b32_p50_ms > 0 and report.latency_b1_p95_ms >= report.latency_b1_p50_ms
    if name.startswith("int8"):
        assert report.size_bytes < result.baseline.size_bytes
        assert any("int8" in note for note in report.notes)
    if name == "student":
        assert manifest.arch == "mlp" and manifest.arch_kwargs["hidden"] == 16
        assert manifest.recipe == [] and report.parameters < result.baseline.parameters / 4


def test_unstructured_pruning_reports_sparsity_and_says_it_is_not_faster(ctx: JobContext) -> None:
    result = execute(job([{"method": "prune_l1", "amount": 0.5}]), ctx)

    (report,) = result.variants
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    assert result.baseline.sparsity < 0.01
    assert report.parameters == result.baseline.parameters
    assert any("no speed-up" in note for note in report.notes)


def test_global_pruning_hits_the_global_amount(ctx: JobContext) -> None:
    (report,) = execute(job([{"method": "prune_global", "amount": 0.7}]), ctx).variants
    assert report.sparsity == pytest.approx(0.7, abs=0.01)


def test_structured_pruning_makes_the_model_physically_smaller(ctx: JobContext) -> None:
    result = execute(job([{"method": "prune_structured", "amount": 0.5}]), ctx)

    (report,) = result.variants
    assert report.parameters < result.baseline.parameters / 2
    assert report.size_bytes < result.baseline.size_bytes / 2
    module, manifest = load_variant(ctx, "digits:1:pruned")
    assert manifest.recipe[0]["method"] == "prune_structured"
    assert module.conv1.out_channels == 16 and module.conv2.out_channels == 32


def test_finetune_keeps_unstructured_zeros(ctx: JobContext) -> None:
    steps = [{"method": "prune_l1", "amount": 0.5}, {"method": "finetune", "epochs": 1}]
    (report,) = execute(job(steps), ctx).variants
    assert report.sparsity == pytest.approx(0.5, abs=0.01)


def test_half_precision_halves_the_file(ctx: JobContext) -> None:
    result = execute(job([{"method": "cast", "dtype": "float16"}]), ctx)

    (report,) = result.variants
    assert report.size_bytes < result.baseline.size_bytes * 0.55
    assert abs(report.accuracy_delta) <= 1.0
    module, _ = load_variant(ctx, "digits:1:half")
    assert next(module.parameters()).dtype == torch.float16


def test_prune_then_quantize_composes_recipes(ctx: JobContext) -> None:
    steps = [
        {"method": "prune_structured", "amount": 0.5, "variant": "slim50"},
        {"method": "finetune", "epochs": 1},
        {"method": "quantize_static", "calibration_samples": 64},
    ]
    result = execute(job(steps), ctx)

    assert [v.variant for v in result.variants] == ["slim50", "pruned-ft-int8"]
    assert result.variants[1].size_bytes < result.baseline.size_bytes / 6
    module, manifest = load_variant(ctx, "digits:1:pruned-ft-int8")
    assert [s["method"] for s in manifest.recipe] == ["prune_structured", "quantize_static"]
    assert val_accuracy(module) == pytest.approx(result.variants[1].accuracy, abs=1e-6)


def test_a_variant_can_be_the_source_and_recipes_stack(ctx: JobContext) -> None:
    execute(job([{"method": "prune_structured", "amount": 0.5, "variant": "slim"}]), ctx)
    steps = [{"method": "quantize_dynamic"}]
    result = execute(job(steps).model_copy(update={"source": "digits:1:slim"}), ctx)

    (report,) = result.variants
    assert report.variant == "slim-int8dyn" and report.registered
    assert result.baseline.variant == "slim"
    module, manifest = load_variant(ctx, "digits:1:slim-int8dyn")
    assert [s["method"] for s in manifest.recipe] == ["prune_structured", "quantize_dynamic"]
    assert val_accuracy(module) == pytest.approx(report.accuracy, abs=1e-6)
    assert ctx.registry.get("digits", 1, "slim-int8dyn").parent == "digits:1:slim"


def test_progress_names_every_step(settings: Settings, registry: ModelRegistry) -> None:
    events: list[dict[str, Any]] = []
    ctx = context(settings, registry, events)
    register_source(ctx.store, registry, train=False)
    execute(job([{"method": "prune_l1"}, {"method": "quantize_dynamic"}]), ctx)

    steps = [e for e in events if e.get("stage") == "compress"]
    assert steps == [
        {"stage": "compress", "step": 1, "steps": 2, "method": "prune_l1"},
        {"stage": "compress", "step": 2, "steps": 2, "method": "quantize_dynamic"},
    ]


# ------------------------------------------------------------------ gates and promote
def test_failing_gates_register_nothing(ctx: JobContext) -> None:
    result = execute(job([{"method": "prune_l1"}], gates={"min_speedup": 1000}), ctx)

    (report,) = result.variants
    assert not report.passed and not report.registered
    assert any("speed-up" in note for note in report.notes)
    assert set(variants_of(ctx)) == {"base"}


def test_accuracy_gate(ctx: JobContext) -> None:
    steps = [{"method": "prune_global", "amount": 0.95, "variant": "wrecked"}]
    result = execute(job(steps, gates={"max_accuracy_drop": 1.0}), ctx)

    (report,) = result.variants
    assert report.accuracy_delta < -1.0
    assert not report.passed and "wrecked" not in variants_of(ctx)


def test_promote_moves_the_alias_to_the_best_passing_variant(ctx: JobContext) -> None:
    steps = [
        {"method": "prune_structured", "amount": 0.5, "variant": "slim"},
        {"method": "prune_global", "amount": 0.99, "variant": "broken"},
    ]
    result = execute(job(steps, gates={"max_accuracy_drop": 30}, promote="production"), ctx)

    by_name = {v.variant: v for v in result.variants}
    assert by_name["slim"].passed and not by_name["broken"].passed
    assert result.promoted == "digits:1:slim"
    resolved = ctx.registry.resolve("digits@production")
    assert (resolved.version, resolved.variant) == (1, "slim")


def test_promote_with_nothing_passing_leaves_the_alias_alone(ctx: JobContext) -> None:
    result = execute(
        job([{"method": "prune_l1"}], gates={"min_speedup": 1000}, promote="prod"), ctx
    )
    assert result.promoted is None
    assert "prod" not in ctx.registry.describe("digits")["aliases"]


# ------------------------------------------------------------------ bad input
def test_unknown_method_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="method"):
        CompressJob.model_validate({"source": "m", "steps": [{"method": "magic"}]})


@pytest.mark.parametrize("amount", [0, 1, -0.1, 1.5])
@pytest.mark.parametrize("method", ["prune_l1", "prune_global", "prune_structured"])
def test_sparsity_outside_zero_one_is_refused(method: str, amount: float) -> None:
    with pytest.raises(ValidationError, match="amount"):
        CompressJob.model_validate({"source": "m", "steps": [{"method": method, "amount": amount}]})


def test_reserved_and_duplicate_variant_names_are_refused() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        CompressJob.model_validate(
            {"source": "m", "steps": [{"method": "prune_l1", "variant": "base"}]}
        )
    with pytest.raises(ValidationError, match="more than once"):
        steps = [{"method": "prune_l1", "variant": "a"}, {"method": "finetune", "variant": "a"}]
        CompressJob.model_validate({"source": "m", "steps": steps})


def assert_nothing_registered(ctx: JobContext, source_digest: str) -> None:
    assert set(variants_of(ctx)) == {"base"}
    assert ctx.registry.resolve("digits:1").record.digest == source_digest


def test_a_method_on_a_model_it_cannot_handle_names_the_step(
    settings: Settings, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(MODELS._items, "linear_only", linear_only)
    ctx = context(settings, registry, [])
    digest = register_source(ctx.store, registry, arch="linear_only", train=False)
    with pytest.raises(CompressionError, match=r"step 1 \(prune_structured\).*no channel"):
        execute(job([{"method": "prune_structured"}]), ctx)
    steps = [{"method": "prune_l1", "include_classifier": False}]
    with pytest.raises(CompressionError, match=r"step 1 \(prune_l1\).*no Conv or Linear"):
        execute(job(steps), ctx)
    assert_nothing_registered(ctx, digest)


def test_a_failure_in_a_later_step_registers_no_earlier_variant(ctx: JobContext) -> None:
    digest = ctx.registry.resolve("digits:1").record.digest
    steps = [
        {"method": "prune_l1", "variant": "q"},
        {"method": "distill", "student_kwargs": {"num_classes": 5}, "epochs": 1},
    ]
    with pytest.raises(CompressionError, match=r"step 2 \(distill\).*5 classes"):
        execute(job(steps), ctx)
    assert_nothing_registered(ctx, digest)


def test_teacher_student_class_mismatch(ctx: JobContext) -> None:
    digest = ctx.registry.resolve("digits:1").record.digest
    steps = [{"method": "distill", "student_kwargs": {"num_classes": 5}, "epochs": 1}]
    with pytest.raises(CompressionError, match=r"step 1 \(distill\).*5 classes.*10"):
        execute(job(steps), ctx)
    assert_nothing_registered(ctx, digest)


def test_existing_variant_of_another_job_is_not_overwritten(ctx: JobContext) -> None:
    record = VariantRecord(digest="0" * 64, arch="cifar_cnn", job_id="other-job")
    ctx.registry.register("digits", 1, "l1", record)
    with pytest.raises(InvalidJob, match="already exists"):
        execute(job([{"method": "prune_l1"}]), ctx)
    assert ctx.registry.get("digits", 1, "l1").job_id == "other-job"


def test_eval_data_must_fit_the_model(ctx: JobContext) -> None:
    bad = job([{"method": "prune_l1"}]).model_copy(
        update={
            "eval_dataset": job([{"method": "prune_l1"}]).eval_dataset.model_copy(
                update={"image_size": 16}
            )
        }
    )
    with pytest.raises(InvalidJob, match="image_size"):
        execute(bad, ctx)


def test_the_source_model_is_untouched(ctx: JobContext) -> None:
    before_module, _ = load_variant(ctx, "digits:1")
    execute(job([{"method": "prune_global", "amount": 0.9}, {"method": "finetune"}]), ctx)
    after_module, _ = load_variant(ctx, "digits:1:base")
    for (k, a), (_, b) in zip(
        before_module.state_dict().items(), after_module.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
