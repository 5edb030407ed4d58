"""`torchfleet deadletter list|requeue`: jobs that were delivered too often without finishing."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.table import Table

from producers.cli.common import EXIT_INPUT, console, fail, reported_errors
from producers.client import Client
from shared.deadletter import DeadLetter, list_dead_letters
from shared.requeue import requeue

app = typer.Typer(
    help="Jobs and lane requests parked after max_deliveries: list them, requeue them."
)


def as_rows(entries: list[DeadLetter], now: float) -> list[tuple[str, str, str, str, str]]:
    """Table rows: id, task, deliveries, age, reason."""
    return [
        (e.job_id, e.task, str(e.deliveries), f"{now - e.time:.0f}s ago", e.reason) for e in entries
    ]


@app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array on stdout.")] = False,
) -> None:
    """Every dead-lettered job, oldest first, with the reason it was parked."""
    with reported_errors(), Client() as client:
        entries = list_dead_letters(client.redis)
    if as_json:
        print(json.dumps([e.model_dump(mode="json") for e in entries]))
        return
    if not entries:
        console.print("no dead letters")
        return
    table = Table("job", "task", "deliveries", "parked", "reason", title="dead letters")
    for row in as_rows(entries, time.time()):
        table.add_row(*row)
    console.print(table)


@app.command("requeue")
def requeue_command(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Job ids to send again.")] = None,
    all_jobs: Annotated[bool, typer.Option("--all", help="Requeue every dead letter.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Send dead-lettered jobs again under their own ids (their delivery count restarts): a
    job to the queue and priority it came from, a lane request to its lane's stream.
    Cancelled jobs stay (the reason is printed): submit them again under a new id."""
    if not job_ids and not all_jobs:
        fail(EXIT_INPUT, "name the job ids to requeue, or pass --all")
    with reported_errors(), Client() as client:
        done = requeue(
            client.redis, client.app, None if all_jobs else job_ids, settings=client.settings
        )
    missing = sorted(set(job_ids or []) - set(done.requeued) - set(done.refused))
    if as_json:
        print(
            json.dumps({"requeued": done.requeued, "refused": done.refused, "not_found": missing})
        )
    else:
        for job_id in done.requeued:
            console.print(f"requeued {job_id}")
        for job_id, why in done.refused.items():
            console.print(f"[yellow]left in the dead letters: {job_id}: {why}[/yellow]")
        for job_id in missing:
            console.print(f"[yellow]not in the dead letters: {job_id}[/yellow]")
    if missing or (done.refused and not all_jobs):
        raise typer.Exit(EXIT_INPUT)
