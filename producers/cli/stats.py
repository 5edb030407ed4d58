"""`torchfleet stats`: jobs, error rate, throughput and latency percentiles from the stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from producers.cli.common import EXIT_INPUT, console, err_console, fail, reported_errors
from producers.client import Client
from shared.stats import DEFAULT_GROUP_BY, group_stats, parse_since


def stats(
    model: Annotated[str | None, typer.Option(help="Only this model's jobs.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only the last 10m, 2h, 30s... (default: all kept).")
    ] = None,
    by: Annotated[str, typer.Option(help="Comma-separated grouping fields.")] = ",".join(
        DEFAULT_GROUP_BY
    ),
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind (infer...).")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of latency percentiles over time.")
    ] = None,
    field: Annotated[str, typer.Option(help="Latency field to plot.")] = "total_worker_ms",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Per model, variant, device and worker: jobs, error rate, throughput, p50/p95/p99."""
    with reported_errors():
        since_s = parse_since(since) if since else None
        with Client() as client:
            records = client.stats_records(since_s=since_s, model=model)
    if kind is not None:
        records = [r for r in records if r.get("kind") == kind]
    groups = group_stats(records, group_by=[f for f in by.split(",") if f], window_s=since_s)
    report: dict[str, Any] = {"records": len(records), "since_s": since_s, "groups": groups}
    if plot is not None:
        try:
            figures = _plot(records, plot, field)
        except (RuntimeError, ValueError) as e:
            fail(EXIT_INPUT, str(e))
        report["plot"] = {"path": str(plot), "bucket_s": figures["bucket_s"]}
        err_console.print(f"wrote {plot}")
    if as_json:
        print(json.dumps(report))
    else:
        render(report)


def _plot(records: list[dict[str, Any]], path: Path, field: str) -> dict[str, Any]:
    from producers.plots import plot_latency

    return plot_latency(records, str(path), field=field)


def render(report: dict[str, Any]) -> None:
    if not report["groups"]:
        console.print("no job records in the selected window")
        return
    keys = [k for k in report["groups"][0] if k in DEFAULT_GROUP_BY or k not in _FIGURES]
    table = Table(*keys, "jobs", "errors", "jobs/s", "wall p50/p95/p99 ms", "total p50/p95/p99 ms")
    for g in report["groups"]:
        table.add_row(
            *(str(g[k]) for k in keys),
            str(g["count"]),
            f"{100 * g['error_rate']:.1f}%",
            f"{g['throughput_per_s']:.2f}" if g["throughput_per_s"] else "-",
            _triple(g["latency_ms"].get("wall_ms")),
            _triple(g["latency_ms"].get("total_worker_ms")),
        )
    console.print(table)


_FIGURES = frozenset(
    {
        "count",
        "errors",
        "retries",
        "error_rate",
        "throughput_per_s",
        "inputs_per_s",
        "outcomes",
        "latency_ms",
    }
)


def _triple(p: dict[str, float] | None) -> str:
    return f"{p['p50']:.2f} / {p['p95']:.2f} / {p['p99']:.2f}" if p else "-"
