"""Inference jobs for the compose test, sent and checked from inside the producer container.

The test mounts this folder and its inputs and runs, for example::

    docker compose run --rm -v DIR:/checks:ro -v WORK/jobs:/jobs:ro producer \\
        python /checks/jobs.py send --prefix run1-serve --count 300 --model digits

Job ids are ``PREFIX-NNNN``, chosen by the producer, so ``check`` (a later container) knows
every id that was sent and reads each one's answer: a job with no answer before the
deadline is lost. Inputs are real handwritten digits (uint8 8x8 pixels, written by the test
from scikit-learn's set) with their labels; most jobs carry 4 images in the message, every
tenth carries 96 (6 KiB, stored beside the message in Redis). ``check`` recomputes each
job's accuracy from its predictions and compares it with the worker's.

Only the producer image's packages are used: torchfleet's client, numpy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from producers.client import Client, JobState
from shared.errors import JobTimeout

SMALL, LARGE, TOP_K = 4, 96, 3
JOBS = "/jobs"


def job_id(prefix: str, i: int) -> str:
    return f"{prefix}-{i:04d}"


def job_inputs(i: int, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Job ``i``'s images and labels: a slice of the set, large for every tenth job."""
    size = LARGE if i % 10 == 9 else SMALL
    start = (i * 37) % (len(images) - size)
    return images[start : start + size], [int(y) for y in labels[start : start + size]]


def load_inputs() -> tuple[np.ndarray, np.ndarray]:
    return np.load(f"{JOBS}/digits.npy"), np.load(f"{JOBS}/labels.npy")


def send(args: argparse.Namespace) -> int:
    images, labels = load_inputs()
    sent = 0
    try:
        with Client() as client:
            for i in range(args.count):
                pixels, truth = job_inputs(i, images, labels)
                client.submit_infer(
                    args.model, pixels, job_id=job_id(args.prefix, i), labels=truth, top_k=TOP_K
                )
                sent += 1
    finally:
        print(json.dumps({"prefix": args.prefix, "sent": sent}))
    return 0


def problems(state: JobState, model: str, truth: list[int]) -> list[str]:
    """What is wrong with one job's answer (nothing, for a good one)."""
    if state.status != "SUCCESS" or state.result is None:
        return [f"{state.status}: {state.error_code}: {state.error}"]
    result = state.result
    predictions = result.get("predictions") or []
    found = []
    if result.get("kind") != "infer" or result.get("model") != model:
        found.append(f"answered by {result.get('kind')} {result.get('model')}, not infer {model}")
    if len(predictions) != len(truth):
        found.append(f"{len(predictions)} predictions for {len(truth)} inputs")
    elif any(len(p) != TOP_K or not all(0 <= c["label"] < 10 for c in p) for p in predictions):
        found.append("a prediction is not the top 3 of the 10 digits")
    else:
        hits = sum(p[0]["label"] == y for p, y in zip(predictions, truth, strict=True))
        if not math.isclose(hits / len(truth), result.get("accuracy") or -1.0):
            found.append(f"worker says accuracy {result.get('accuracy')}, predictions say other")
    return found


def check(args: argparse.Namespace) -> int:
    images, labels = load_inputs()
    deadline = time.monotonic() + args.timeout
    answered, lost, failed, hits, inputs = 0, [], [], 0, 0
    workers: Counter[str] = Counter()
    with Client() as client:
        for i in range(args.count):
            name = job_id(args.prefix, i)
            _, truth = job_inputs(i, images, labels)
            try:
                state = client.wait_state(name, timeout=max(1.0, deadline - time.monotonic()))
            except JobTimeout:
                lost.append(name)
                continue
            answered += 1
            found = problems(state, args.model_name, truth)
            if found:
                failed.append(f"{name}: {'; '.join(found)}")
                continue
            result = state.result or {}
            workers[result["worker"].split("@")[-1]] += 1
            top = [p[0]["label"] for p in result["predictions"]]
            hits += sum(t == y for t, y in zip(top, truth, strict=True))
            inputs += len(truth)
    accuracy = hits / inputs if inputs else 0.0
    report = {
        "prefix": args.prefix, "sent": args.count, "answered": answered, "lost": len(lost),
        "failed": len(failed), "accuracy": round(accuracy, 4), "hosts": dict(workers),
        "lost_ids": lost[:10], "failures": failed[:10],
    }  # fmt: skip
    print(json.dumps(report))
    return 0 if not lost and not failed and accuracy >= args.min_accuracy else 1


def online(args: argparse.Namespace) -> int:
    """ONLINE LANE HOOK: ``Client.infer`` (issue 12) for each request; every answer checked."""
    images, labels = load_inputs()
    answered, failed, hits, inputs = 0, [], 0, 0
    with Client() as client:
        infer = getattr(client, "infer", None)
        if infer is None:
            print(json.dumps({"error": "this producer's Client has no infer()"}))
            return 1
        for i in range(args.count):
            pixels, truth = job_inputs(i, images, labels)
            try:
                answer = infer("digits", pixels, top_k=TOP_K, timeout=60)
            except Exception as error:  # every failure is counted and shown
                failed.append(f"{i}: {type(error).__name__}: {error}")
                continue
            answered += 1
            result = answer if isinstance(answer, dict) else answer.model_dump()
            top = [p[0]["label"] for p in result.get("predictions", [])]
            if len(top) != len(truth):
                failed.append(f"{i}: {len(top)} predictions for {len(truth)} inputs")
            hits += sum(t == y for t, y in zip(top, truth, strict=False))
            inputs += len(truth)
    accuracy = hits / inputs if inputs else 0.0
    report = {"sent": args.count, "answered": answered, "failed": len(failed),
              "accuracy": round(accuracy, 4), "failures": failed[:10]}  # fmt: skip
    print(json.dumps(report))
    return 0 if not failed and accuracy >= args.min_accuracy else 1


def running(args: argparse.Namespace) -> int:
    """Wait until a training job trains epoch ``--min-epoch`` (so an earlier one is
    checkpointed), then print the host of the worker running it."""
    deadline = time.monotonic() + args.timeout
    with Client() as client:
        while True:
            state = client.state(args.job)
            epoch = int(state.progress.get("epoch") or 0) if state.status == "PROGRESS" else 0
            if epoch >= args.min_epoch:
                node = active_node(client, args.job)
                if node is not None:
                    print(json.dumps({"node": node, "host": node.split("@")[-1], "epoch": epoch}))
                    return 0
            if state.finished or time.monotonic() > deadline:
                print(json.dumps({"error": f"{args.job} is {state.status} at epoch {epoch}"}))
                return 1
            time.sleep(0.5)  # training progress is published every half second


def active_node(client: Client, job: str) -> str | None:
    """The Celery node whose active jobs include ``job``."""
    replies: dict[str, Any] = client.app.control.inspect(timeout=3).active() or {}
    for node, tasks in replies.items():
        if any(task.get("id") == job for task in tasks):
            return node
    return None


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobs.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    send_p = commands.add_parser("send", help="submit COUNT inference jobs")
    check_p = commands.add_parser("check", help="wait for and check every answer")
    for sub in (send_p, check_p):
        sub.add_argument("--prefix", required=True)
        sub.add_argument("--count", type=int, required=True)
    send_p.add_argument("--model", required=True, help="model reference")
    check_p.add_argument("--model-name", required=True, help="the name answers must carry")
    check_p.add_argument("--timeout", type=float, default=300.0)
    check_p.add_argument("--min-accuracy", type=float, default=0.8)
    online_p = commands.add_parser("online", help="online requests (the online lane)")
    online_p.add_argument("--prefix", required=True)
    online_p.add_argument("--count", type=int, required=True)
    online_p.add_argument("--min-accuracy", type=float, default=0.8)
    running_p = commands.add_parser("running", help="the host running a training job")
    running_p.add_argument("--job", required=True)
    running_p.add_argument("--min-epoch", type=int, default=2)
    running_p.add_argument("--timeout", type=float, default=300.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    command = {"send": send, "check": check, "online": online, "running": running}[args.command]
    return command(args)


if __name__ == "__main__":
    sys.exit(main())
