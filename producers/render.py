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


def print_table(
    console: Console,
    header: list[str],
    rows: list[list[str]],
    *,
    title: str | None = None,
    keys: int = 1,
) -> None:
    """A table that fits the console: when all columns do not, several tables, each
    repeating the first ``keys`` columns, instead of cells cut down to ellipses."""
    chunks: list[list[int]] = [list(range(keys))]
    for column in range(keys, len(header)):
        trial = _table(header, rows, [*chunks[-1], column], title)
        unwrapped = console.measure(trial, options=console.options.update_width(10_000))
        if len(chunks[-1]) > keys and unwrapped.maximum > console.width:
            chunks.append(list(range(keys)))
        chunks[-1].append(column)
    for i, columns in enumerate(chunks):
        console.print(_table(header, rows, columns, title if i == 0 else None))


def _table(
    header: list[str], rows: list[list[str]], columns: list[int], title: str | None
) -> Table:
    table = Table(*(header[c] for c in columns), title=title)
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    return table


def render_result(
    console: Console, result: dict[str, Any], *, names: list[str] | None = None
) -> None:
    """A result as tables and lines; ``names``: what each inference input was (file names)."""
    kind = result.get("kind")
    if kind == "infer":
        render_infer(console, result, names)
    elif kind == "train":
        render_train(console, result)
    elif kind == "compress":
        render_compress(console, result)
    elif kind == "pipeline":
        render_pipeline(console, result)
    else:
        console.print_json(data=result)


def render_infer(console: Console, result: dict[str, Any], names: list[str] | None = None) -> None:
    ref = f"{result['model']}:{result['version']}:{result['variant']}"
    console.print(
        f"[bold]{ref}[/] on {result['device']} ({result['worker']}), batch {result['batch_size']}, "
        f"cache {'hit' if result['cache_hit'] else 'miss'}"
    )
    table = Table("input", "top-k (label: score)")
    for i, scores in enumerate(result["predictions"]):
        label = names[i] if names is not None and i < len(names) else str(i)
        table.add_row(
            label, ", ".join(f"{s['name'] or s['label']}: {s['score']:.3f}" for s in scores)
        )
    console.print(table)
    if result.get("accuracy") is not None:
        console.print(f"accuracy: {result['accuracy']:.2%}")
    latency = result["latency"]
    console.print("latency: " + ", ".join(f"{k} {latency[k]:.2f}" for k in LATENCY_ORDER))


def render_train(console: Console, result: dict[str, Any]) -> None:
    header = ["epoch", "train loss", "train acc", "val loss", "val acc", "lr", "s"]
    rows = [
        [
            str(row["epoch"]),
            f"{row['train_loss']:.4f}",
            f"{row['train_accuracy']:.2%}",
            f"{row['val_loss']:.4f}",
            f"{row['val_accuracy']:.2%}",
            f"{row['lr']:.2e}",
            f"{row['seconds']:.1f}",
        ]
        for row in result["history"]
    ]
    print_table(console, header, rows)
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
    print_table(console, header, rows, title=f"compression of {parsed.source}")
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


PROGRESS_BAR_KEYS = ("stage", "epoch", "epochs", "step", "steps", "loss", "eta_s")


def render_progress_short(progress: dict[str, Any]) -> str:
    """The few fields that fit beside a progress bar: stage or epoch, step, loss, ETA."""
    return render_progress_text({k: v for k, v in progress.items() if k in PROGRESS_BAR_KEYS})


def is_epoch_end(progress: dict[str, Any]) -> bool:
    """A training progress report sent at the end of an epoch (it carries validation)."""
    return "val_loss" in progress


def render_model(console: Console, info: dict[str, Any]) -> None:
    """One model from the registry: a row per version and variant, its aliases beside it."""
    aliases: dict[tuple[str, str], list[str]] = {}
    for alias, target in info["aliases"].items():
        aliases.setdefault((str(target["version"]), target["variant"]), []).append(alias)
    header = ["version", "variant", "method", "arch", "metrics", "aliases", "parent", "digest"]
    rows = [
        [
            version,
            variant,
            record["method"],
            record["arch"],
            _metrics_text(record.get("metrics", {})),
            ", ".join(aliases.get((version, variant), [])) or "-",
            record.get("parent") or "-",
            record["digest"][:12],
        ]
        for version, variants in sorted(info["versions"].items(), key=lambda kv: int(kv[0]))
        for variant, record in variants.items()
    ]
    print_table(console, header, rows, title=f"model {info['name']}", keys=2)


def _metrics_text(metrics: dict[str, Any]) -> str:
    """Scalar metrics as ``name value`` pairs (accuracies as percentages)."""
    parts = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            continue
        if "accuracy" in key and isinstance(value, float) and value <= 1:
            parts.append(f"{key} {value:.2%}")
        else:
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "\n".join(parts) or "-"
