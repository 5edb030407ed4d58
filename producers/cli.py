"""`torchfleet`: submit jobs, follow them, read results, manage models, run workers and the demo.

Exit codes: 0 success, 1 the job failed, 2 bad input (spec or arguments), 3 timeout,
4 Redis unreachable.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from producers.client import Client, JobState
from producers.render import render_progress_text, render_result
from shared.errors import InputError, JobFailed, JobTimeout, TorchfleetError
from shared.jobs import job_schema
from shared.names import ALL_QUEUES

EXIT_FAILED, EXIT_INPUT, EXIT_TIMEOUT, EXIT_UNREACHABLE = 1, 2, 3, 4

app = typer.Typer(
    help="torchfleet: a queue-fed PyTorch fleet. Train, compress and serve models over Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List, show, promote and roll back registered models.")
app.add_typer(models_app, name="models")
console = Console()
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
TimeoutOpt = Annotated[float | None, typer.Option(help="Give up waiting after this many seconds.")]


def fail(code: int, message: str) -> NoReturn:
    err_console.print(f"error: {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn library errors into one-line messages and exit codes."""
    try:
        yield
    except (RedisConnectionError, OperationalError) as e:
        fail(EXIT_UNREACHABLE, f"cannot reach Redis ({e}); is it running? set TORCHFLEET_REDIS_URL")
    except InputError as e:
        fail(EXIT_INPUT, str(e))
    except JobTimeout as e:
        fail(EXIT_TIMEOUT, str(e))


@app.command()
def schema(
    kind: Annotated[
        str | None, typer.Argument(help="train, compress or infer; all if omitted")
    ] = None,
) -> None:
    """Print the JSON Schema of the job specs."""
    document = job_schema()
    if kind is not None:
        names = {
            "train": "TrainJob",
            "compress": "CompressJob",
            "infer": "InferJob",
            "pipeline": "PipelineJob",
        }
        if kind not in names:
            fail(EXIT_INPUT, f"unknown job kind {kind!r}; use train, compress, infer or pipeline")
        document = {**document["$defs"][names[kind]], "$defs": document["$defs"]}
    print(json.dumps(document, indent=2))


@app.command()
def submit(
    what: Annotated[
        str, typer.Argument(help="A spec file (.json/.yaml), or train|compress|infer.")
    ],
    model_name: Annotated[str | None, typer.Option(help="train: name to register.")] = None,
    arch: Annotated[str, typer.Option(help="train: architecture.")] = "cifar_cnn",
    dataset: Annotated[str, typer.Option(help="train/compress: dataset name.")] = "digits",
    epochs: Annotated[int, typer.Option(help="train: epochs.")] = 5,
    batch_size: Annotated[int, typer.Option(help="train: batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="train: learning rate.")] = 0.01,
    source: Annotated[str | None, typer.Option(help="compress: model reference.")] = None,
    method: Annotated[str, typer.Option(help="compress: method.")] = "quantize_dynamic",
    model: Annotated[str | None, typer.Option(help="infer: model reference.")] = None,
    input: Annotated[
        list[Path] | None, typer.Option("--input", help="infer: .npy array or image files.")
    ] = None,
    top_k: Annotated[int, typer.Option(help="infer: answers per input.")] = 1,
    job_id: Annotated[str | None, typer.Option(help="Choose the job id.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Block until it finishes.")] = False,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate and submit a job from a spec file, or with the train|compress|infer shortcuts."""
    with reported_errors():
        if what == "train":
            spec: dict[str, Any] = {
                "kind": "train", "model_name": _required(model_name, "--model-name"),
                "arch": arch, "dataset": {"name": dataset}, "epochs": epochs,
                "batch_size": batch_size, "optimizer": {"lr": lr},
            }  # fmt: skip
        elif what == "compress":
            spec = {
                "kind": "compress", "source": _required(source, "--source"),
                "steps": [{"method": method}], "eval_dataset": {"name": dataset},
            }  # fmt: skip
        elif what == "infer":
            spec = _infer_spec(_required(model, "--model"), input or [], top_k)
        else:
            spec = _load_spec(Path(what))
        with Client() as client:
            if spec.get("kind") == "group":
                from producers.commands.groups import load_group_spec

                group_id = client.submit_group(load_group_spec(Path(what)), group_id=job_id)
                if as_json:
                    print(json.dumps({"group_id": group_id}))
                else:
                    console.print(group_id)
                return
            if hasattr(spec.get("inputs"), "tobytes"):  # an array: the client picks its transport
                options = {k: v for k, v in spec.items() if k not in ("kind", "model", "inputs")}
                submitted = client.submit_infer(
                    spec["model"], spec["inputs"], job_id=job_id, **options
                )
            else:
                submitted = client.submit(spec, job_id=job_id)
            if not wait:
                _emit_submitted(submitted, as_json)
                return
            _finish(client, submitted, timeout, as_json)


@app.command("wait")
def wait_cmd(job_id: str, timeout: TimeoutOpt = None, as_json: JsonOpt = False) -> None:
    """Wait for a job, with a live progress display, and print its result."""
    with reported_errors(), Client() as client:
        _finish(client, job_id, timeout, as_json)


@app.command()
def results(
    job_id: str,
    as_json: JsonOpt = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG learning curve (train).")] = None,
) -> None:
    """Print a job's state and result without waiting."""
    with reported_errors(), Client() as client:
        if client.is_group(job_id):
            from producers.commands.groups import print_group

            print_group(client.group_results(job_id), as_json)
            return
        state = client.state(job_id)
    if plot is not None:
        if state.result is None or state.result.get("kind") != "train":
            fail(EXIT_INPUT, f"job {job_id} has no training result to plot ({state.status})")
        from producers.plots import plot_learning_curve

        plot_learning_curve(state.result, str(plot))
        err_console.print(f"wrote {plot}")
    _print_state(state, as_json)


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Every registered model with its versions, variants and aliases."""
    with reported_errors(), Client() as client:
        described = [client.registry.describe(name) for name in client.registry.names()]
    if as_json:
        print(json.dumps(described))
        return
    from rich.table import Table

    table = Table("model", "versions", "variants", "aliases")
    for info in described:
        variants = sorted({v for per in info["versions"].values() for v in per})
        aliases = ", ".join(
            f"{a} -> {r['version']}:{r['variant']}" for a, r in info["aliases"].items()
        )
        table.add_row(info["name"], ", ".join(info["versions"]), ", ".join(variants), aliases)
    console.print(table)


@models_app.command("show")
def models_show(name: str, as_json: JsonOpt = False) -> None:
    """One model: every version and variant with its metrics and lineage."""
    with reported_errors(), Client() as client:
        info = client.registry.describe(name)
    if as_json:
        print(json.dumps(info))
    else:
        console.print_json(data=info)


@models_app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="name:version[:variant] to point the alias at.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
) -> None:
    """Point an alias (default production) at a version and variant."""
    from shared.jobs import ModelRef

    with reported_errors(), Client() as client:
        try:
            parsed = ModelRef.parse(ref)
        except ValueError as e:
            fail(EXIT_INPUT, str(e))
        resolved = client.registry.resolve(parsed)
        client.registry.set_alias(resolved.name, alias, resolved.version, resolved.variant)
    console.print(f"{resolved.name}@{alias} -> {resolved.version}:{resolved.variant}")


@models_app.command("rollback")
def models_rollback(name: str, alias: str = "production") -> None:
    """Move an alias back to where it pointed before."""
    with reported_errors(), Client() as client:
        record = client.registry.rollback(name, alias)
    console.print(f"{name}@{alias} -> {record.version}:{record.variant}")


@app.command()
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
) -> None:
    """Start a Celery worker pinned to one device (one process; threads, never forks)."""
    unknown = set(queues.split(",")) - set(ALL_QUEUES)
    if unknown:
        fail(EXIT_INPUT, f"unknown queue(s) {sorted(unknown)}; known: {', '.join(ALL_QUEUES)}")
    from workers.main import prepare_worker, run_worker

    hostname = name or f"torchfleet-{device.replace(':', '')}-{os.getpid()}@{socket.gethostname()}"
    try:  # here, not in a Celery signal (which would log and swallow the error)
        prepare_worker(hostname, device=device, batching=batching)
    except (TorchfleetError, RedisConnectionError) as e:
        fail(EXIT_INPUT if isinstance(e, InputError) else EXIT_UNREACHABLE, str(e))
    run_worker(
        [
            "worker", "--queues", queues, "--pool", "threads", "--concurrency", str(concurrency),
            "--hostname", hostname, "--loglevel", loglevel, "--without-gossip", "--without-mingle",
        ]
    )  # fmt: skip


@app.command()
def demo(
    requests: Annotated[int, typer.Option(help="Inference jobs per variant.")] = 300,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 5,
    embedded: Annotated[bool, typer.Option(help="Always use a throw-away redis-server.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start Redis (embedded if needed) and a worker, train, quantize, serve, and print a table."""
    from producers.demo import run_demo

    with reported_errors():
        run_demo(requests=requests, epochs=epochs, as_json=as_json, embedded=embedded)


# ------------------------------------------------------------------ helpers
def _required(value: str | None, option: str) -> str:
    if not value:
        fail(EXIT_INPUT, f"{option} is required here")
    return value


def _load_spec(path: Path) -> dict[str, Any]:
    if not path.exists():
        fail(EXIT_INPUT, f"{path} does not exist (and is not train, compress or infer)")
    text = path.read_text()
    try:
        spec = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        fail(EXIT_INPUT, f"{path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {e}")
    if not isinstance(spec, dict):
        fail(EXIT_INPUT, f"{path} must hold one job object")
    return spec


def _infer_spec(model: str, inputs: list[Path], top_k: int) -> dict[str, Any]:
    """An infer job; a .npy array stays an array (large ones travel beside the message)."""
    from producers.encoding import encode_images

    if not inputs:
        fail(EXIT_INPUT, "--input is required: a .npy file or image files")
    if len(inputs) == 1 and inputs[0].suffix == ".npy":
        import numpy as np

        payload: Any = np.load(inputs[0], allow_pickle=False)
    else:
        payload = [p.model_dump() for p in encode_images(list(inputs))]
    return {"kind": "infer", "model": model, "inputs": payload, "top_k": top_k}


def _emit_submitted(job_id: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"job_id": job_id, "status": "PENDING"}))
    else:
        console.print(job_id)


def _finish(client: Client, job_id: str, timeout: float | None, as_json: bool) -> None:
    if as_json or not sys.stderr.isatty():
        state = client.wait_state(job_id, timeout=timeout)
    else:
        state = _wait_with_progress(client, job_id, timeout)
    _print_state(state, as_json)


def _wait_with_progress(client: Client, job_id: str, timeout: float | None) -> JobState:
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(f"{job_id[:8]} queued", total=1.0)

        def update(state: JobState) -> None:
            if state.status != "PROGRESS":  # STARTED's meta is the worker's pid and host
                bar.update(task, description=f"{job_id[:8]} {state.status.lower()}")
                return
            done = _fraction(state.progress)
            bar.update(task, completed=done, description=render_progress_text(state.progress))

        return client.wait_state(job_id, timeout=timeout, on_progress=update)


def _fraction(progress: dict[str, Any]) -> float:
    if {"epoch", "epochs"} <= progress.keys():
        steps = max(1, int(progress.get("steps") or 1))
        step = int(progress.get("step") or steps)
        return min(1.0, ((progress["epoch"] - 1) + step / steps) / max(1, progress["epochs"]))
    if {"step", "steps"} <= progress.keys():
        return min(1.0, progress["step"] / max(1, progress["steps"]))
    return 0.0


def _print_state(state: JobState, as_json: bool) -> None:
    if as_json:
        print(json.dumps(state.result if state.status == "SUCCESS" else state.to_json()))
    elif state.result is not None:
        render_result(console, state.result)
    elif not state.finished:
        console.print(f"{state.job_id}: {state.status} {render_progress_text(state.progress)}")
    if state.finished and state.status != "SUCCESS":
        fail(
            EXIT_FAILED,
            f"job {state.job_id} {state.status.lower()}: {state.error_code}: {state.error}",
        )


def _register_command_modules() -> None:
    import importlib
    import pkgutil

    import producers.commands

    for info in pkgutil.iter_modules(producers.commands.__path__):
        module = importlib.import_module(f"producers.commands.{info.name}")
        module.register(app)


_register_command_modules()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except (JobFailed, TorchfleetError) as e:
        fail(EXIT_FAILED, str(e))


if __name__ == "__main__":
    main()
