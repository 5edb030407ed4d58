"""`torchfleet`: submit jobs, follow them, read results, manage models, run workers and the demo.

Every command is listed here, in the order ``--help`` shows them; each lives in its own
module beside this one and imports :mod:`producers.cli.common`, never this package.
Exit codes: see :mod:`producers.cli.common`.
"""

from __future__ import annotations

import typer

from producers.cli import (
    bench,
    cancel,
    deadletter,
    demo,
    groups,
    infer,
    jobs,
    models,
    pipeline,
    stats,
    status,
    worker,
)
from producers.cli.common import EXIT_FAILED, fail
from shared.errors import JobFailed, TorchfleetError

COMMANDS = (
    ("schema", jobs.schema),
    ("submit", jobs.submit),
    ("infer", infer.infer),
    ("wait", jobs.wait_cmd),
    ("results", jobs.results),
    ("worker", worker.worker),
    ("demo", demo.demo),
    ("bench", bench.bench),
    ("cancel", cancel.cancel),
    ("stats", stats.stats),
    ("status", status.status),
)
GROUPS = (
    ("models", models.app),
    ("deadletter", deadletter.app),
    ("group", groups.app),
    ("pipeline", pipeline.app),
)

app = typer.Typer(
    help="torchfleet: a queue-fed PyTorch fleet. Train, compress and serve models over Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
for name, command in COMMANDS:
    app.command(name)(command)
for name, group in GROUPS:
    app.add_typer(group, name=name)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except (JobFailed, TorchfleetError) as e:
        fail(EXIT_FAILED, str(e))
