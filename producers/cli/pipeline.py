"""`torchfleet pipeline submit|show`: train -> compress -> gate -> promote -> warm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from producers.cli.common import (
    EXIT_FAILED,
    console,
    emit_submitted,
    fail,
    load_spec,
    reported_errors,
    warn_unserved,
)
from producers.client import Client
from producers.render import render_pipeline

app = typer.Typer(help="Run and inspect pipelines (train, compress, gate, promote, warm).")

EXIT_NOT_PROMOTED = 1


@app.command("submit")
def submit(
    spec: Annotated[Path, typer.Argument(help="A pipeline spec file (.json/.yaml).")],
    job_id: Annotated[str | None, typer.Option(help="Choose the job id.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Block until the last stage ends.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Give up waiting after this.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Submit a pipeline; with --wait, exit 1 unless a variant was promoted."""
    document = {"kind": "pipeline", **load_spec(spec)}
    with reported_errors(), Client() as client:
        submitted = client.submit(document, job_id=job_id)
        warn_unserved(client, document)
        emit_submitted(submitted, as_json, waiting=wait)
        if not wait:
            return
        result = client.wait(submitted, timeout=timeout)
    _show(result, as_json)


@app.command("show")
def show(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """A pipeline's stage report (while it runs: its current stage and progress)."""
    with reported_errors(), Client() as client:
        state = client.state(job_id)
    if state.result is None:
        if as_json:
            print(json.dumps(state.to_json()))
        else:
            console.print(f"{job_id}: {state.status} {state.progress or ''}")
        if state.finished:
            fail(EXIT_FAILED, f"pipeline {job_id}: {state.error_code}: {state.error}")
        return
    _show(state.result, as_json)


def _show(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        render_pipeline(console, result)
    if result.get("status") != "promoted":
        raise typer.Exit(EXIT_NOT_PROMOTED)
