"""`torchfleet demo`: the whole life cycle on one machine in about a minute.

Redis (the configured one, or an embedded redis-server when none answers), one worker
process, a seed CNN trained on the first 1,500 of scikit-learn's digits, a dynamic-int8
variant of it, and a few hundred inference jobs per variant on the 297 held-out digits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from producers.client import Client
from producers.encoding import encode_array
from shared.embedded import EmbeddedRedis
from shared.errors import BrokerUnavailable
from shared.settings import Settings, get_settings
from shared.stats import percentile

TRAIN_SAMPLES = 1500
DEMO_MODEL = "demo-digits"
PRODUCER_THREADS = 8
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

    console.rule(f"3. {requests} inference jobs per variant on held-out digits")
    images, labels = held_out_digits(requests)
    rows = []
    for report in variants:
        ref = f"{DEMO_MODEL}:{version}:{report['variant']}"
        rows.append(serve_load(client, ref, images, labels) | {"size_bytes": report["size_bytes"]})
    return {"model": DEMO_MODEL, "version": version, "train": trained, "variants": rows}


def held_out_digits(count: int) -> tuple[list[Any], list[int]]:
    """Digits the model never saw in training, as uint8 8x8 images (0-255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[TRAIN_SAMPLES:] * (255 / 16)).round().astype("uint8")
    labels = [int(y) for y in digits.target[TRAIN_SAMPLES:]]
    picks = [i % len(labels) for i in range(count)]
    return [images[i][None, None] for i in picks], [labels[i] for i in picks]


def serve_load(client: Client, ref: str, images: list[Any], labels: list[int]) -> dict[str, Any]:
    """Send one job per image from several producer threads; summarise latency and accuracy."""

    def one(i: int) -> tuple[float, dict[str, Any]]:
        start = time.perf_counter()
        job_id = client.submit_infer(ref, encode_array(images[i]), labels=[labels[i]])
        result = client.wait(job_id, timeout=120)
        return (time.perf_counter() - start) * 1000, result

    started = time.perf_counter()
    with ThreadPoolExecutor(PRODUCER_THREADS) as pool:
        answers = list(pool.map(one, range(len(images))))
    wall = time.perf_counter() - started
    latencies = sorted(ms for ms, _ in answers)
    results = [r for _, r in answers]
    return {
        "ref": ref,
        "jobs": len(results),
        "accuracy": sum(r["accuracy"] for r in results) / len(results),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "worker_p50_ms": percentile([r["latency"]["total_worker_ms"] for r in results], 50),
        "compute_p50_ms": percentile([r["latency"]["compute_ms"] for r in results], 50),
        "mean_batch": sum(r["batch_size"] for r in results) / len(results),
        "throughput": len(results) / wall,
        "cache_hits": sum(r["cache_hit"] for r in results),
    }


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    title = f"torchfleet demo: {summary['model']}:{summary['version']} on held-out digits"
    table = Table(
        "variant", "accuracy", "size", "p50 ms", "p95 ms", "p99 ms", "worker p50 ms",
        "jobs/s", "mean batch", "cache hits", title=title,
    )  # fmt: skip
    for row in summary["variants"]:
        table.add_row(
            row["ref"].rsplit(":", 1)[-1],
            f"{row['accuracy']:.2%}",
            f"{row['size_bytes'] / 1024:.0f} KiB",
            f"{row['p50_ms']:.1f}",
            f"{row['p95_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['worker_p50_ms']:.2f}",
            f"{row['throughput']:.0f}",
            f"{row['mean_batch']:.2f}",
            f"{row['cache_hits']}/{row['jobs']}",
        )
    console.print(table)


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
