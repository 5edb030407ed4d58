"""`torchfleet worker`: a Celery worker pinned to one device, started from the CLI.

The one CLI command that imports ``workers`` (lazily: the client install has no torch).
"""

from __future__ import annotations

import os
import socket
from typing import Annotated

import typer
from redis.exceptions import ConnectionError as RedisConnectionError

from producers.cli.common import EXIT_INPUT, EXIT_UNREACHABLE, fail
from shared.errors import InputError, TorchfleetError
from shared.names import ALL_QUEUES, QUEUE_BENCH


def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues.")] = ",".join(ALL_QUEUES),
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda (claims a free GPU) or cuda:N.")
    ] = "auto",
    concurrency: Annotated[int, typer.Option(help="Jobs run at once (threads).")] = 8,
    name: Annotated[
        str | None, typer.Option(help="Worker name (default from device and pid).")
    ] = None,
    batching: Annotated[bool, typer.Option(help="Micro-batch concurrent inference jobs.")] = True,
    loglevel: str = "INFO",
    bench: Annotated[
        bool,
        typer.Option(
            "--bench",
            help="Also run the bench's tasks (no-op, naive inference): for benchmarks only.",
        ),
    ] = False,
) -> None:
    """Start a Celery worker pinned to one device (one process; threads, never forks)."""
    unknown = set(queues.split(",")) - set(ALL_QUEUES)
    if unknown:
        hint = f" ({QUEUE_BENCH}: pass --bench instead)" if QUEUE_BENCH in unknown else ""
        known = ", ".join(ALL_QUEUES)
        fail(EXIT_INPUT, f"unknown queue(s) {sorted(unknown)}; known: {known}{hint}")
    if bench:
        queues = f"{queues},{QUEUE_BENCH}"
    from workers.main import prepare_worker, run_worker

    hostname = name or f"torchfleet-{device.replace(':', '')}-{os.getpid()}@{socket.gethostname()}"
    try:  # here, not in a Celery signal (which would log and swallow the error)
        prepare_worker(hostname, device=device, batching=batching)
    except (TorchfleetError, RedisConnectionError) as e:
        fail(EXIT_INPUT if isinstance(e, InputError) else EXIT_UNREACHABLE, str(e))
    run_worker(
        [
            # no --pool: the worker's own thread pool (workers/pool.py) is the app's default
            "worker", "--queues", queues, "--concurrency", str(concurrency),
            "--hostname", hostname, "--loglevel", loglevel, "--without-gossip", "--without-mingle",
        ]
    )  # fmt: skip
