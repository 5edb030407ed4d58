"""`torchfleet bench`: the fleet's inference path beside the physical limit and the naive task.

The arms are described in :mod:`producers.bench`. The floor imports torch, so run bench where
the ``worker`` extra is installed: :func:`torch_lab` is the one place it imports ``workers``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from producers.bench.plan import Plan
from producers.bench.report import print_report
from producers.bench.run import Lab, run_bench


def torch_lab() -> tuple[Lab, tuple[str, ...]]:
    """The torch side of a run (imported here, lazily) and the zoo's architectures."""
    from workers.bench.floor import Floor, machine
    from workers.bench.harness import bench_worker, register_bench_model
    from workers.zoo.models import list_models

    lab = Lab(
        register=register_bench_model,
        floor=lambda settings, digest, plan: Floor(
            settings, digest, device=plan.device, threads=plan.threads
        ),
        spawn=lambda env, plan, batching, logs: bench_worker(
            env, batching=batching, concurrency=plan.concurrency, device=plan.device, log_dir=logs
        ),
        machine=machine,
    )
    return lab, tuple(list_models())


def _csv(text: str, cast: Callable[[str], Any]) -> tuple[Any, ...]:
    try:
        values = tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list: {e}") from None
    if not values:
        raise typer.BadParameter(f"{text!r} names nothing")
    return values


def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="The seed CNN at 1 and 16 producers (~1-2 min).")
    ] = False,
    spawn: Annotated[
        bool,
        typer.Option(
            "--spawn",
            help="Start an embedded Redis and worker processes of its own (needed for "
            "fleet_unbatched and fleet_cold); otherwise drive the running fleet.",
        ),
    ] = False,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated architectures (mlp,cifar_cnn,resnet18).")
    ] = None,
    producers: Annotated[
        str | None, typer.Option(help="Comma-separated producer counts (1,4,16).")
    ] = None,
    jobs: Annotated[int | None, typer.Option(help="Jobs per measurement.")] = None,
    drain: Annotated[
        int | None,
        typer.Option(help="Requests the lane's drain empties (--spawn; default 3000, quick 1500)."),
    ] = None,
    threads: Annotated[int, typer.Option(help="torch threads: floor and workers alike.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N (spawned workers).")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Benchmark the fleet's inference paths (Celery jobs and the online lane) against the
    in-process floor, a no-op task and a naive task. Imports torch for the floor: run it
    where the worker extra is installed."""
    options: dict[str, Any] = {"threads": threads, "device": device}
    plan = Plan.quick(**options) if quick else Plan(**options)
    lab, known = torch_lab()
    if models:
        unknown = set(_csv(models, str)) - set(known)
        if unknown:
            raise typer.BadParameter(f"unknown model(s) {sorted(unknown)}; known: {known}")
        plan.models = _csv(models, str)
    if producers:
        plan.producers = _csv(producers, int)
        if min(plan.producers) < 1:
            raise typer.BadParameter("producer counts must be at least 1")
    if jobs:
        plan.jobs = jobs
    if drain is not None:
        if drain < 1:
            raise typer.BadParameter("--drain must be at least 1")
        plan.drain = drain
    console = Console(stderr=True)
    report = run_bench(plan, lab, spawn=spawn, log=lambda text: console.print(f"[dim]{text}[/]"))
    if as_json:
        print(json.dumps(report))
    else:
        print_report(Console(width=max(120, shutil.get_terminal_size().columns)), report)
