"""`torchfleet group submit|results`: many inference jobs as one group, aggregated.

`torchfleet results GROUP_ID` can print the same summary with :func:`print_group`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from producers.cli.common import (
    EXIT_FAILED,
    EXIT_INPUT,
    console,
    fail,
    read_document,
    reported_errors,
)
from producers.client import Client
from shared.jobs import GroupSummary

app = typer.Typer(help="Submit inference jobs as one group and aggregate their results.")


def load_group_spec(path: Path) -> list[dict[str, Any]]:
    """The jobs of a group file: ``{"kind": "group", "jobs": [...]}`` or a bare list (JSON/YAML)."""
    spec = read_document(path, missing=f"{path} does not exist")
    if isinstance(spec, dict) and spec.get("kind") == "group":
        spec = spec.get("jobs")
    if not isinstance(spec, list) or not all(isinstance(j, dict) for j in spec):
        fail(EXIT_INPUT, f'{path} must hold {{"kind": "group", "jobs": [...]}} or a list')
    return [{"kind": "infer", **job} for job in spec]


def print_group(summary: GroupSummary, as_json: bool) -> None:
    """A group summary as JSON or as a table."""
    if as_json:
        print(summary.model_dump_json())
        return
    accuracy = f"{100 * summary.accuracy:.2f}%" if summary.accuracy is not None else "-"
    console.print(
        f"group {summary.group_id}: {summary.done}/{summary.count} done, "
        f"{summary.succeeded} ok, {summary.failed} failed, {summary.pending} pending; "
        f"accuracy {accuracy} over {summary.labelled_inputs} labelled inputs"
    )
    if summary.outcomes:
        console.print("outcomes: " + ", ".join(f"{k}={v}" for k, v in summary.outcomes.items()))
    if summary.latency:
        table = Table("latency (ms)", "p50", "p95", "p99")
        for name, p in summary.latency.items():
            table.add_row(name, f"{p.p50:.3f}", f"{p.p95:.3f}", f"{p.p99:.3f}")
        console.print(table)
    console.print(
        f"models: {', '.join(summary.models) or '-'}; aggregated by {summary.aggregated_by}"
    )


@app.command("submit")
def submit(
    spec: Annotated[
        Path, typer.Argument(help='A JSON/YAML file: {"kind": "group", "jobs": [...]}')
    ],
    group_id: Annotated[str | None, typer.Option(help="Choose the group id.")] = None,
    chord: Annotated[
        bool, typer.Option(help="Aggregate inside the fleet too (a chord callback).")
    ] = True,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for every job, then aggregate.")
    ] = False,
    timeout: Annotated[float | None, typer.Option(help="Give up waiting after this.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Submit the jobs of a group file; prints the group id (or, with --wait, the summary)."""
    jobs = load_group_spec(spec)
    with reported_errors(), Client() as client:
        submitted = client.submit_group(jobs, group_id=group_id, aggregate=chord)
        if not wait:
            if as_json:
                print(json.dumps({"group_id": submitted, "jobs": len(jobs)}))
            else:
                console.print(submitted)
            return
        for job_id in client.group_members(submitted):
            client.wait_state(job_id, timeout=timeout)
        summary = client.group_results(submitted)
    print_group(summary, as_json)


@app.command("results")
def results(
    group_id: str,
    fleet: Annotated[
        bool, typer.Option("--fleet", help="The summary the fleet's chord stored, if ready.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Aggregate a group now: done/failed/pending, outcomes, accuracy, latency percentiles."""
    with reported_errors(), Client() as client:
        if fleet:
            client.group_members(group_id)  # unknown groups are an error, not "not ready"
            summary = client.fleet_summary(group_id)
            if summary is None:
                fail(EXIT_FAILED, f"group {group_id}: the fleet has not aggregated it yet")
        else:
            summary = client.group_results(group_id)
    print_group(summary, as_json)
