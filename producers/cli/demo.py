"""`torchfleet demo`: Redis, a worker, training, quantization and serving in one command."""

from __future__ import annotations

from typing import Annotated

import typer

from producers.cli.common import JsonOpt, reported_errors
from producers.demo import run_demo


def demo(
    requests: Annotated[
        int, typer.Option(help="Digits per variant, sent as jobs and as lane requests.")
    ] = 300,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 5,
    embedded: Annotated[bool, typer.Option(help="Always use a throw-away redis-server.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start Redis (embedded if needed) and a worker, train, quantize, serve, and print a table."""
    with reported_errors():
        run_demo(requests=requests, epochs=epochs, as_json=as_json, embedded=embedded)
