"""`torchfleet pipeline submit|show`: train -> compress -> gate -> promote -> warm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

pipeline_app = typer.Typer(help="Run and inspect pipelines (train, compress, gate, promote, warm).")

EXIT_NOT_PROMOTED = 1


def render(result: dict[str, Any]) -> None:
    from rich.table import Table

    from producers.cli import console

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


@pipeline_app.command("submit")
def submit(
    spec: Annotated[Path, typer.Argument(help="A pipeline spec file (.json/.yaml).")],
    job_id: Annotated[str | None, typer.Option(help="Choose the job id.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Block until the last stage ends.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Give up waiting after this.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Submit a pipeline; with --wait, exit 1 unless a variant was promoted."""
    from producers import cli
    from producers.client import Client

    document = {"kind": "pipeline", **cli._load_spec(spec)}
    with cli.reported_errors(), Client() as client:
        submitted = client.submit(document, job_id=job_id)
        if not wait:
            cli._emit_submitted(submitted, as_json)
            return
        result = client.wait(submitted, timeout=timeout)
    _show(result, as_json)


@pipeline_app.command("show")
def show(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """A pipeline's stage report (while it runs: its current stage and progress)."""
    from producers import cli
    from producers.client import Client

    with cli.reported_errors(), Client() as client:
        state = client.state(job_id)
    if state.result is None:
        if as_json:
            print(json.dumps(state.to_json()))
        else:
            cli.console.print(f"{job_id}: {state.status} {state.progress or ''}")
        if state.finished:
            cli.fail(cli.EXIT_FAILED, f"pipeline {job_id}: {state.error_code}: {state.error}")
        return
    _show(state.result, as_json)


def _show(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        render(result)
    if result.get("status") != "promoted":
        raise typer.Exit(EXIT_NOT_PROMOTED)


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
