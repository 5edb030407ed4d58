"""`torchfleet cancel JOB_ID`: revoke a queued job, or stop a running one at its next epoch."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from producers.cli.common import console, reported_errors
from producers.client import Client


def cancel(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Cancel a job: queued ones are dropped, running ones stopped (even stuck in I/O)."""
    with reported_errors(), Client() as client:
        before = client.cancel(job_id)
    outcome = "already finished" if before.finished else "cancel requested"
    if as_json:
        print(json.dumps({"job_id": job_id, "status": before.status, "outcome": outcome}))
    else:
        console.print(f"{job_id}: {outcome} (was {before.status})")
