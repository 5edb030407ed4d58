"""Human-readable views of results (rich tables); `--json` output bypasses all of this."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

LATENCY_ORDER = (
    "queued_ms",
    "batch_wait_ms",
    "load_ms",
    "preprocess_ms",
    "compute_ms",
    "postprocess_ms",
    "total_worker_ms",
)


def render_result(console: Console, result: dict[str, Any]) -> None:
    kind = result.get("kind")
    if kind == "infer":
        render_infer(console, result)
    elif kind == "train":
        render_train(console, result)
    elif kind == "compress":
        render_compress(console, result)
    elif kind == "pipeline":
        render_pipeline(console, result)
    else:
        console.print_json(data=result)


def render_infer(console: Console, result: dict[str, Any]) -> None:
    ref = f"{result['model']}:{result['version']}:{result['variant']}"
    console.print(
        f"[bold]{ref}[/] on {result['device']} ({result['worker']}), batch {result['batch_size']}, "
        f"cache {'hit' if result['cache_hit'] else 'miss'}"
    )
    table = Table("input", "top-k (label: score)")
    for i, scores in enumerate(result["predictions"]):
        table.add_row(
            str(i), ", ".join(f"{s['name'] or s['label']}: {s['score']:.3f}" for s in scores)
        )
    console.print(table)
    if result.get("accuracy") is not None:
        console.print(f"accuracy: {result['accuracy']:.2%}")
    latency = result["latency"]
    console.print("latency: " + ", ".join(f"{k} {latency[k]:.2f}" for k in LATENCY_ORDER))


def render_train(console: Console, result: dict[str, Any]) -> None:
    table = Table("epoch", "train loss", "train acc", "val loss", "val acc", "lr", "s")
    for row in result["history"]:
        table.add_row(
            str(row["epoch"]),
            f"{row['train_loss']:.4f}",
            f"{row['train_accuracy']:.2%}",
            f"{row['val_loss']:.4f}",
            f"{row['val_accuracy']:.2%}",
            f"{row['lr']:.2e}",
            f"{row['seconds']:.1f}",
        )
    console.print(table)
    resumed = result.get("resumed_from_epoch")
    console.print(
        f"registered [bold]{result['model']}:{result['version']}[/] "
        f"(best epoch {result['best_epoch']}, val accuracy {result['best_val_accuracy']:.2%}, "
        f"{result['parameters']:,} parameters, {result['size_bytes']:,} bytes)"
        + (f"; resumed from epoch {resumed}" if resumed is not None else "")
    )


def render_compress(console: Console, result: dict[str, Any]) -> None:
    from shared.jobs import CompressResult

    parsed = CompressResult.model_validate(result)
    header, rows = parsed.table()
    table = Table(*header, title=f"compression of {parsed.source}")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(parsed.eval_description())
    for variant in parsed.variants:
        for note in variant.notes:
            console.print(f"[dim]{variant.variant}: {note}[/]")
    if parsed.promoted:
        console.print(f"promoted: [bold]{parsed.promoted}[/]")


def render_pipeline(console: Console, result: dict[str, Any]) -> None:
    """A pipeline's stages as a table, then what it promoted (or why nothing)."""
    table = Table("stage", "status", "seconds", "detail", title=f"pipeline {result['job_id']}")
    for stage in result.get("stages", []):
        detail = stage.get("error") or json.dumps(stage.get("detail", {}))[:90]
        table.add_row(stage["stage"], stage["status"], f"{stage['seconds']:.2f}", detail)
    console.print(table)
    if result.get("promoted"):
        console.print(
            f"{result['model']}@{result['alias']} -> {result['promoted']} "
            f"(was {result.get('previous') or 'unset'}); "
            f"warmed on {len(result['warmed'])} worker(s)"
        )
    else:
        console.print(
            f"{result['status']}: {result.get('error') or 'nothing promoted'}; "
            f"{result['model']}@{result['alias']} unchanged"
        )


def render_progress_text(progress: dict[str, Any]) -> str:
    """One line for a progress dict: epochs and steps first, then loss, accuracy and ETA."""
    parts = []
    if {"epoch", "epochs"} <= progress.keys():
        parts.append(f"epoch {progress['epoch']}/{progress['epochs']}")
    elif "stage" in progress:
        parts.append(str(progress["stage"]))
    if {"step", "steps"} <= progress.keys():
        parts.append(f"step {progress['step']}/{progress['steps']}")
    shown = {"stage", "epoch", "epochs", "step", "steps"}
    for key, value in progress.items():
        if key in shown:
            continue
        if key == "eta_s" and isinstance(value, int | float):
            parts.append(f"ETA {value:.0f}s")
        elif key.endswith("accuracy") and isinstance(value, float):
            parts.append(f"{key} {value:.1%}")
        else:
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return " ".join(parts)
