"""The human views of results: every kind renders, with the figures it was given."""

from __future__ import annotations

from rich.console import Console

from producers.render import render_result
from shared.jobs import (
    ClassScore,
    CompressResult,
    EpochRecord,
    InferResult,
    Latency,
    TrainResult,
    VariantReport,
)


def rendered(result: dict[str, object]) -> str:
    console = Console(record=True, width=200)
    render_result(console, result)
    return console.export_text()


def report(variant: str, accuracy: float, registered: bool) -> VariantReport:
    return VariantReport(
        variant=variant, method="quantize_dynamic", size_bytes=2048, parameters=10,
        accuracy=accuracy, latency_b1_p50_ms=0.5, latency_b1_p95_ms=0.7,
        latency_b32_p50_ms=3.0, latency_b32_p95_ms=3.5, speedup=2.5, registered=registered,
    )  # fmt: skip


def test_compress_table_shows_each_variant_and_its_status() -> None:
    result = CompressResult(
        job_id="j", source="m:1", version=1, baseline=report("base", 97.5, False),
        variants=[report("int8dyn", 97.25, True)], promoted="m:1:int8dyn",
        seconds=1.0, worker="w", device="cpu",
    )  # fmt: skip
    text = rendered(result.model_dump(mode="json"))
    assert "int8dyn" in text and "registered" in text and "97.25" in text
    assert "promoted: m:1:int8dyn" in text


def test_train_table_has_one_row_per_epoch() -> None:
    epochs = [
        EpochRecord(epoch=e, train_loss=1.0 / e, train_accuracy=0.5, val_loss=0.9,
                    val_accuracy=0.8 + e / 100, lr=0.01, seconds=1.0)
        for e in (1, 2)
    ]  # fmt: skip
    result = TrainResult(
        job_id="j", model="m", version=3, model_digest="d" * 64, arch="cifar_cnn",
        history=epochs, best_epoch=2, best_val_accuracy=0.82, parameters=100,
        size_bytes=400, seconds=2.0, worker="w", device="cpu", resumed_from_epoch=1,
    )  # fmt: skip
    text = rendered(result.model_dump(mode="json"))
    assert "m:3" in text and "82.00%" in text and "resumed from epoch 1" in text
    assert "0.5000" in text  # epoch 2's train loss


def test_infer_view_names_the_model_and_latency() -> None:
    result = InferResult(
        job_id="j", model="m", version=1, variant="base", model_digest="d" * 64,
        predictions=[[ClassScore(label=3, name="three", score=0.9)]], accuracy=1.0,
        latency=Latency(compute_ms=1.5), cache_hit=True, batch_size=4, worker="w", device="cpu",
    )  # fmt: skip
    text = rendered(result.model_dump(mode="json"))
    assert "m:1:base" in text and "three: 0.900" in text and "compute_ms 1.50" in text


def test_progress_line_reads_like_a_sentence() -> None:
    from producers.render import render_progress_text

    progress = {"stage": "train", "epoch": 4, "epochs": 10, "step": 12, "steps": 23,
                "loss": 0.24311, "accuracy": 0.9375, "eta_s": 9.1}  # fmt: skip
    text = render_progress_text(progress)
    assert text == "epoch 4/10 step 12/23 loss 0.2431 accuracy 93.8% ETA 9s"
    assert render_progress_text(
        {"stage": "compress", "step": 1, "steps": 3, "method": "prune_l1"}
    ) == ("compress step 1/3 method prune_l1")
