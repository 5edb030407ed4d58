"""`torchfleet schema|submit|wait|results`: validate and submit jobs, follow them, read results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from producers.cli.common import (
    EXIT_FAILED,
    EXIT_INPUT,
    JsonOpt,
    TimeoutOpt,
    console,
    emit_submitted,
    err_console,
    fail,
    load_spec,
    reported_errors,
    warn_unserved,
)
from producers.cli.groups import load_group_spec, print_group
from producers.client import Client, JobState
from producers.render import (
    is_epoch_end,
    render_progress_short,
    render_progress_text,
    render_result,
)
from shared.jobs import job_schema


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


def submit(
    what: Annotated[
        str, typer.Argument(help="A spec file (.json/.yaml), or train|compress|infer.")
    ],
    model_name: Annotated[str | None, typer.Option(help="train: name to register.")] = None,
    arch: Annotated[str, typer.Option(help="train: architecture.")] = "cifar_cnn",
    dataset: Annotated[
        str | None,
        typer.Option(
            help="train: dataset name (digits if unset); compress: eval data (the source's "
            "training data if unset)."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="train: epochs.")] = 5,
    batch_size: Annotated[int, typer.Option(help="train: batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="train: learning rate.")] = 0.01,
    source: Annotated[str | None, typer.Option(help="compress: model reference.")] = None,
    method: Annotated[str, typer.Option(help="compress: method.")] = "quantize_dynamic",
    model: Annotated[str | None, typer.Option(help="infer: model reference.")] = None,
    input: Annotated[
        list[Path] | None,
        typer.Option("--input", help="infer: a .npy array, or image files (several may follow)."),
    ] = None,
    more: Annotated[
        list[Path] | None, typer.Argument(help="infer: more image files after --input.")
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
                "arch": arch, "dataset": {"name": dataset or "digits"}, "epochs": epochs,
                "batch_size": batch_size, "optimizer": {"lr": lr},
            }  # fmt: skip
        elif what == "compress":
            spec = {
                "kind": "compress", "source": _required(source, "--source"),
                "steps": [{"method": method}],
            }  # fmt: skip
            if dataset is not None:
                spec["eval_dataset"] = {"name": dataset}
        elif what == "infer":
            spec = _infer_spec(_required(model, "--model"), [*(input or []), *(more or [])], top_k)
        else:
            spec = load_spec(Path(what))
        if more and what != "infer":
            fail(EXIT_INPUT, f"unexpected extra arguments: {' '.join(map(str, more))}")
        names = _input_names(spec, [*(input or []), *(more or [])])
        with Client() as client:
            if spec.get("kind") == "group":
                group_id = client.submit_group(load_group_spec(Path(what)), group_id=job_id)
                if as_json:
                    print(json.dumps({"group_id": group_id}))
                else:
                    console.print(group_id)
                return
            if spec.get("kind") == "infer":  # refused here, not after a worker round trip
                client.registry.resolve(str(spec.get("model")))
            if hasattr(spec.get("inputs"), "tobytes"):  # an array: the client picks its transport
                options = {k: v for k, v in spec.items() if k not in ("kind", "model", "inputs")}
                submitted = client.submit_infer(
                    spec["model"], spec["inputs"], job_id=job_id, **options
                )
            else:
                submitted = client.submit(spec, job_id=job_id)
            warn_unserved(client, spec)
            emit_submitted(submitted, as_json, waiting=wait)
            if wait:
                _finish(client, submitted, timeout, as_json, names)


def wait_cmd(job_id: str, timeout: TimeoutOpt = None, as_json: JsonOpt = False) -> None:
    """Wait for a job, with a live progress display, and print its result."""
    with reported_errors(), Client() as client:
        _finish(client, job_id, timeout, as_json)


def results(
    job_id: str,
    as_json: JsonOpt = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG learning curve (train).")] = None,
) -> None:
    """Print a job's state and result without waiting."""
    with reported_errors(), Client() as client:
        if client.is_group(job_id):
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


def _required(value: str | None, option: str) -> str:
    if not value:
        fail(EXIT_INPUT, f"{option} is required here")
    return value


def _input_names(spec: dict[str, Any], paths: list[Path]) -> list[str] | None:
    """The file names an infer job's image inputs came from (None for arrays)."""
    if spec.get("kind") == "infer" and isinstance(spec.get("inputs"), list) and paths:
        return [p.name for p in paths]
    return None


def _infer_spec(model: str, inputs: list[Path], top_k: int) -> dict[str, Any]:
    """An infer job; a .npy array stays an array (large ones travel beside the message)."""
    from producers.encoding import encode_images

    if not inputs:
        fail(EXIT_INPUT, "--input is required: a .npy file or image files")
    if any(p.suffix == ".npy" for p in inputs) and len(inputs) > 1:
        fail(EXIT_INPUT, "--input takes one .npy array, or image files (not both)")
    if len(inputs) == 1 and inputs[0].suffix == ".npy":
        import numpy as np

        payload: Any = np.load(inputs[0], allow_pickle=False)
    else:
        payload = [p.model_dump() for p in encode_images(list(inputs))]
    return {"kind": "infer", "model": model, "inputs": payload, "top_k": top_k}


def _finish(
    client: Client,
    job_id: str,
    timeout: float | None,
    as_json: bool,
    names: list[str] | None = None,
) -> None:
    if as_json or not sys.stderr.isatty():
        state = client.wait_state(job_id, timeout=timeout)
    else:
        state = _wait_with_progress(client, job_id, timeout)
    _print_state(state, as_json, names)


def _wait_with_progress(client: Client, job_id: str, timeout: float | None) -> JobState:
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("queued", total=1.0)
        return client.wait_state(
            job_id, timeout=timeout, on_progress=lambda state: show_progress(bar, task, state)
        )


def show_progress(bar: Progress, task: TaskID, state: JobState) -> None:
    """Move the bar; an epoch's end is also printed whole above it (the bar's line holds
    only the fields that fit beside the bar)."""
    if state.status != "PROGRESS":  # STARTED's meta is the worker's pid and host
        bar.update(task, description=state.status.lower())
        return
    if is_epoch_end(state.progress):
        bar.console.print(render_progress_text(state.progress), highlight=False)
    description = render_progress_short(state.progress)
    bar.update(task, completed=_fraction(state.progress), description=description)


def _fraction(progress: dict[str, Any]) -> float:
    if {"epoch", "epochs"} <= progress.keys():
        steps = max(1, int(progress.get("steps") or 1))
        step = int(progress.get("step") or steps)
        return min(1.0, ((progress["epoch"] - 1) + step / steps) / max(1, progress["epochs"]))
    if {"step", "steps"} <= progress.keys():
        return min(1.0, progress["step"] / max(1, progress["steps"]))
    return 0.0


def _print_state(state: JobState, as_json: bool, names: list[str] | None = None) -> None:
    if as_json:
        print(json.dumps(state.result if state.status == "SUCCESS" else state.to_json()))
    elif state.result is not None:
        render_result(console, state.result, names=names)
    elif not state.finished:
        console.print(f"{state.job_id}: {state.status} {render_progress_text(state.progress)}")
    if state.finished and state.status != "SUCCESS":
        fail(
            EXIT_FAILED,
            f"job {state.job_id} {state.status.lower()}: {state.error_code}: {state.error}",
        )
