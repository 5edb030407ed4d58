"""`torchfleet demo`: the whole life cycle on one machine in about a minute.

Redis (the configured one, or an embedded redis-server when none answers), one worker
process, a seed CNN trained on the first 1,500 of scikit-learn's digits, a dynamic-int8
variant of it, and a few hundred of the 297 held-out digits per variant: as Celery
inference jobs, then as online lane requests, side by side (:mod:`producers.demo_serving`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from producers.client import Client
from producers.demo_serving import PRODUCER_THREADS, serve_both
from shared.embedded import EmbeddedRedis
from shared.errors import BrokerUnavailable
from shared.settings import Settings, get_settings

TRAIN_SAMPLES = 1500
DEMO_MODEL = "demo-digits"
WORKER_START_TIMEOUT_S = 120


def run_demo(
    *, requests: int, epochs: int, as_json: bool, embedded: bool = False
) -> dict[str, Any]:
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 120)
    with (
        redis_for_demo(console, force_embedded=embedded) as settings,
        worker_process(settings, console),
    ):
        client = Client(settings)
        wait_for_worker(client)
        summary = lifecycle(client, console, requests=requests, epochs=epochs)
        client.close()
    if as_json:
        print(json.dumps(summary))
    else:
        print_summary(console, summary)
    return summary


@contextmanager
def redis_for_demo(console: Console, *, force_embedded: bool = False) -> Iterator[Settings]:
    """The configured Redis; else the default if it answers; else an embedded one."""
    settings = get_settings()
    configured = "redis_url" in settings.model_fields_set
    if not force_embedded and (configured or _answers(settings.redis_url)):
        console.print(f"[dim]using Redis at {settings.redis_url}[/]")
        yield settings
        return
    with EmbeddedRedis() as server:
        console.print(f"[dim]no Redis answered; started an embedded one at {server.url}[/]")
        yield settings.model_copy(update={"redis_url": server.url})


@contextmanager
def worker_process(settings: Settings, console: Console) -> Iterator[None]:
    env = {**os.environ, "TORCHFLEET_REDIS_URL": settings.redis_url}
    env["TORCHFLEET_ARTIFACTS"] = settings.artifacts
    command = [sys.executable, "-m", "producers.cli", "worker", "--loglevel", "WARNING"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    console.print(f"[dim]started worker pid {process.pid}[/]")
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)


def wait_for_worker(client: Client) -> None:
    """Block until a worker answers a ping (a broadcast over the broker, not a sleep)."""
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if client.app.control.ping(timeout=1.0):
            return
    raise BrokerUnavailable(f"no worker answered within {WORKER_START_TIMEOUT_S} s")


def lifecycle(client: Client, console: Console, *, requests: int, epochs: int) -> dict[str, Any]:
    console.rule("1. train the seed CNN on digits")
    train_id = client.submit_train(
        model_name=DEMO_MODEL,
        arch="cifar_cnn",
        dataset={"name": "digits", "limit": TRAIN_SAMPLES},
        epochs=epochs,
        batch_size=32,
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9},
    )
    trained = _wait(client, train_id, console)
    version = trained["version"]
    console.print(
        f"trained {DEMO_MODEL}:{version}, val accuracy {trained['best_val_accuracy']:.2%}"
    )

    console.rule("2. quantize it (dynamic int8)")
    compress_id = client.submit_compress(
        source=f"{DEMO_MODEL}:{version}",
        steps=[{"method": "quantize_dynamic"}],
        eval_dataset={"name": "digits", "limit": TRAIN_SAMPLES},
    )
    compressed = _wait(client, compress_id, console)
    variants = [compressed["baseline"], *(v for v in compressed["variants"] if v["registered"])]

    console.rule(f"3. {requests} held-out digits per variant: as jobs, then through the lane")
    images, labels = held_out_digits(requests)
    rows = []
    for report in variants:
        ref = f"{DEMO_MODEL}:{version}:{report['variant']}"
        served = serve_both(client, ref, images, labels)
        rows.append({"ref": ref, "variant": report["variant"], "size_bytes": report["size_bytes"]})
        rows[-1].update(served)
    return {"model": DEMO_MODEL, "version": version, "train": trained, "variants": rows}


def held_out_digits(count: int) -> tuple[list[Any], list[int]]:
    """Digits the model never saw in training, as uint8 8x8 images (0-255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[TRAIN_SAMPLES:] * (255 / 16)).round().astype("uint8")
    labels = [int(y) for y in digits.target[TRAIN_SAMPLES:]]
    picks = [i % len(labels) for i in range(count)]
    return [images[i][None, None] for i in picks], [labels[i] for i in picks]


PATHS = (
    ("jobs", f"jobs x{PRODUCER_THREADS}"),
    ("lane", f"lane x{PRODUCER_THREADS}"),
    ("lane_1", "lane x1"),
)


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """One table: each variant's digits as Celery jobs and through the lane, side by side."""
    title = f"torchfleet demo: {summary['model']}:{summary['version']} on held-out digits"
    table = Table(
        "variant", "path", "accuracy", "p50 ms", "p95 ms", "p99 ms", "forward ms", "req/s",
        "batch", "cache hits", title=title,
    )  # fmt: skip
    for variant in summary["variants"]:
        labels = [variant["variant"], f"{variant['size_bytes'] / 1024:.0f} KiB", ""]
        for (key, path), label in zip(PATHS, labels, strict=True):
            row = variant[key]
            table.add_row(
                label,
                path,
                f"{row['accuracy']:.2%}",
                f"{row['p50_ms']:.2f}",
                f"{row['p95_ms']:.2f}",
                f"{row['p99_ms']:.2f}",
                f"{row['forward_p50_ms']:.2f}",
                f"{row['throughput']:.0f}",
                f"{row['mean_batch']:.2f}",
                f"{row['cache_hits']}/{row['requests']}",
                end_section=key == PATHS[-1][0],
            )
    console.print(table)
    console.print(
        f"jobs: one Celery job per digit; lane: one online request per digit (Client.infer); "
        f"x{PRODUCER_THREADS}: from {PRODUCER_THREADS} producer threads, x1: one at a time. "
        "forward: the model's forward alone as the worker timed it (p50); at x1 it is the floor."
    )
    for variant in summary["variants"]:
        one, jobs, lane = variant["lane_1"], variant["jobs"], variant["lane"]
        console.print(
            f"{variant['variant']}: the lane answers one request in {one['p50_ms']:.2f} ms "
            f"(p50), {one['p50_ms'] - one['forward_p50_ms']:.2f} ms over the floor; at "
            f"x{PRODUCER_THREADS}, {lane['p50_ms']:.2f} ms against {jobs['p50_ms']:.2f} ms "
            f"for a job, {lane['throughput'] / jobs['throughput']:.1f}x the requests per second."
        )


def _wait(client: Client, job_id: str, console: Console) -> dict[str, Any]:
    with console.status(f"job {job_id[:8]}") as status:

        def show(state: Any) -> None:
            text = " ".join(f"{k}={v}" for k, v in state.progress.items() if k != "stage")
            status.update(f"job {job_id[:8]}: {text}")

        return client.wait(job_id, timeout=1800, on_progress=show)


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False
