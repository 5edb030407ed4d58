"""`torchfleet infer`: an online request through the lane (milliseconds), not a Celery job.

Each ``--input`` file is one request, all in flight at once: a ``.npy`` array (one sample or
a batch, float32 or uint8 pixels) or a PNG/JPEG image. Answers are also stored under each
request's id, so `torchfleet results ID` reads them later. `torchfleet submit infer` is the
batch-job path (Celery: retries, groups, progress).
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from producers.cli.common import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_TIMEOUT,
    JsonOpt,
    console,
    fail,
    reported_errors,
)
from producers.client import Client
from shared.errors import JobFailed, JobTimeout
from shared.names import MAX_PRIORITY

DEFAULT_TIMEOUT_S = 60.0
NPY_SUFFIX = ".npy"


def infer(
    model: Annotated[str, typer.Argument(help="Model: name, name:version or name@alias.")],
    inputs: Annotated[
        list[Path],
        typer.Option(
            "--input", help="A .npy array or a PNG/JPEG image; repeat it for several inputs."
        ),
    ],
    top_k: Annotated[int, typer.Option(help="Answers per input.")] = 1,
    timeout: Annotated[
        float, typer.Option(help="Give up waiting after this many seconds.")
    ] = DEFAULT_TIMEOUT_S,
    deadline_ms: Annotated[
        int | None,
        typer.Option(help="Answer 'expired' without computing if not started within MS ms."),
    ] = None,
    priority: Annotated[
        bool, typer.Option("--priority", help="Take the lane's high-priority stream.")
    ] = False,
    device: Annotated[str, typer.Option(help="Lane: any, cpu or cuda.")] = "any",
    as_json: JsonOpt = False,
) -> None:
    """Predict now through the online lane; one answer per --input file."""
    with reported_errors():
        payloads = [(path.name, read_input(path)) for path in inputs]
        deadline = time.time() + deadline_ms / 1000 if deadline_ms is not None else None
        options = {
            "top_k": top_k,
            "deadline": deadline,
            "priority": MAX_PRIORITY if priority else 0,
            "device": device,
        }
        with Client() as client:
            sent = []
            for name, payload in payloads:
                request_id = uuid.uuid4().hex
                sent.append((name, request_id, send(client, model, payload, request_id, options)))
            answers, failure = collect(sent, timeout)
    show(answers, as_json)
    if failure is not None:
        fail(EXIT_TIMEOUT if isinstance(failure, JobTimeout) else EXIT_FAILED, str(failure))


def read_input(path: Path) -> Any:
    """A ``.npy`` file's array (never unpickled), or the image file's path."""
    if not path.is_file():
        fail(EXIT_INPUT, f"--input {path} does not exist")
    if path.suffix.lower() != NPY_SUFFIX:
        return path  # the lane client checks the PNG/JPEG magic bytes
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        fail(EXIT_INPUT, f"--input {path} is not a plain .npy array: {e}")


def send(
    client: Client, model: str, payload: Any, request_id: str, options: dict[str, Any]
) -> Future[dict[str, Any]]:
    """One lane request, its answer also stored under ``request_id`` (always, from the CLI)."""
    return client.infer_async(model, payload, store=True, request_id=request_id, **options)


def collect(
    sent: list[tuple[str, str, Future[dict[str, Any]]]], timeout: float
) -> tuple[list[dict[str, Any]], JobFailed | JobTimeout | None]:
    """Every answer that came within ``timeout`` s, and the first failure (if any)."""
    give_up = time.monotonic() + timeout
    answers: list[dict[str, Any]] = []
    failure: JobFailed | JobTimeout | None = None
    for name, request_id, future in sent:
        try:
            result = future.result(max(0.0, give_up - time.monotonic()))
        except JobFailed as e:
            failure = failure or e
            continue
        except TimeoutError:
            failure = failure or JobTimeout(
                f"request {request_id} ({name}): no answer in {timeout} s"
            )
            continue
        answers.append({"input": name, "job_id": request_id, "result": result})
    return answers, failure


def show(answers: list[dict[str, Any]], as_json: bool) -> None:
    """One JSON object, or a table: each input's (and each sample's) top-k answers."""
    if as_json:
        print(json.dumps({"answers": answers}))
        return
    if not answers:
        return
    table = Table("input", "top-k (label: score)", "request id")
    for answer in answers:
        predictions = answer["result"]["predictions"]
        for i, scores in enumerate(predictions):
            name = answer["input"] if len(predictions) == 1 else f"{answer['input']}[{i}]"
            top = ", ".join(f"{s['name'] or s['label']}: {s['score']:.3f}" for s in scores)
            table.add_row(name, top, answer["job_id"] if i == 0 else "")
    console.print(table)
    first = answers[0]["result"]
    console.print(
        f"{first['model']}:{first['version']}:{first['variant']} on {first['device']} "
        f"({first['worker']}); worker ms per request: "
        + ", ".join(f"{a['result']['latency']['total_worker_ms']:.2f}" for a in answers)
    )
