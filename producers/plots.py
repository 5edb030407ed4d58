"""Learning curves from a train result, as a PNG (matplotlib, imported only when plotting).

Producers never import torch; matplotlib comes with the ``worker`` extra, so a light client
without it gets a clear error instead of an ImportError from deep inside.
"""

from __future__ import annotations

import math
from typing import Any


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError(
            "plotting needs matplotlib: pip install 'torchfleet[worker]' (or just matplotlib)"
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curve(result: dict[str, Any], path: str) -> None:
    """Write a PNG of loss (train and validation), validation accuracy and learning rate.

    ``result`` is a train result as JSON (``TrainResult.model_dump(mode="json")``).
    """
    history = result.get("history") or []
    if not history:
        raise ValueError("the result holds no per-epoch history to plot (is it a train result?)")
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.8))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in history], marker="o", color="C2")
    best = result.get("best_epoch")
    if best:
        ax_acc.axvline(best, color="grey", linestyle="--", label=f"best (epoch {best})")
        ax_acc.legend(loc="lower right")
    ax_acc.set_title("validation accuracy (%)")
    ax_lr.plot(epochs, [h["lr"] for h in history], marker="o", color="C3")
    ax_lr.set_title("learning rate")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    name = f"{result.get('model', '?')}:{result.get('version', '?')} ({result.get('arch', '?')})"
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latency(
    records: list[dict[str, Any]],
    path: str,
    *,
    field: str = "total_worker_ms",
    bucket_s: float | None = None,
) -> dict[str, Any]:
    """Write a PNG of latency percentiles over time (bucketed), one colour per job kind, and
    per kind and worker.

    ``records`` are decoded stats-stream records (``Client.stats_records``); only completed
    jobs that carry ``field`` count (``wall_ms`` covers every job kind). A bucket without
    data is a gap in the line, never a straight line across it. Returns the plotted figures:
    the bucket width, the per-kind buckets and the per-kind-and-worker percentiles.
    """
    from shared.stats import COMPLETED, bucket_stats, choose_bucket_s, group_stats

    usable = [r for r in records if r.get("outcome") in COMPLETED and field in r]
    if not usable:
        raise ValueError(f"no completed jobs with {field!r} in the selected records to plot")
    stamps = [float(r["ts"]) for r in usable]
    width = bucket_s or choose_bucket_s(max(stamps) - min(stamps))
    kinds = sorted({str(r.get("kind", "-")) for r in usable})
    buckets = {
        kind: bucket_stats(
            [r for r in usable if r.get("kind", "-") == kind], bucket_s=width, field=field
        )
        for kind in kinds
    }
    groups = group_stats(usable, group_by=("kind", "worker"))
    workers = [g for g in groups if field in g["latency_ms"]]
    origin = min(b[0]["start"] for b in buckets.values())
    end = max(b[-1]["start"] for b in buckets.values())
    plt = _pyplot()
    fig, (ax_time, ax_workers) = plt.subplots(1, 2, figsize=(13, 4.2))
    for i, kind in enumerate(kinds):
        xs, series = with_gaps(buckets[kind], origin, end, width)
        for q, style in (("p50", "-o"), ("p95", "--s"), ("p99", ":^")):
            ax_time.plot(xs, series[q], style, color=f"C{i}", markersize=3, label=f"{kind} {q}")
    ax_time.set_title(f"{field} over time ({width:g} s buckets)")
    ax_time.set_xlabel("seconds since first bucket")
    ax_time.set_ylabel("ms")
    ax_time.legend(fontsize="small")
    names = [f"{g['kind']}\n{str(g['worker']).split('@')[0]}" for g in workers]
    positions = range(len(names))
    for offset, q in ((-0.27, "p50"), (0.0, "p95"), (0.27, "p99")):
        values = [g["latency_ms"][field][q] for g in workers]
        ax_workers.bar([p + offset for p in positions], values, width=0.27, label=q)
    ax_workers.set_xticks(list(positions), names, rotation=20)
    ax_workers.set_title(f"{field} per kind and worker")
    ax_workers.set_ylabel("ms")
    ax_workers.legend()
    for ax in (ax_time, ax_workers):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"field": field, "bucket_s": width, "buckets": buckets, "workers": workers}


def with_gaps(
    buckets: list[dict[str, Any]], origin: float, end: float, width: float
) -> tuple[list[float], dict[str, list[float]]]:
    """Every bucket from ``origin`` to ``end`` (x in seconds since ``origin``), with NaN
    percentiles where a bucket holds no data, so that matplotlib breaks the line there."""
    by_index = {round((b["start"] - origin) / width): b for b in buckets}
    count = round((end - origin) / width) + 1
    series: dict[str, list[float]] = {q: [] for q in ("p50", "p95", "p99")}
    for i in range(count):
        bucket = by_index.get(i)
        for q, values in series.items():
            values.append(float(bucket[q]) if bucket else math.nan)
    return [i * width for i in range(count)], series
