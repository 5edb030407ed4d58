"""The demo's serving step: the same held-out digits through both ways into the fleet.

* ``jobs``: one Celery inference job per digit (``Client.submit_infer`` + ``wait``), the
  way batch scoring goes;
* ``lane``: one online request per digit (``Client.infer``), the way real-time requests go;
* ``lane, 1 producer``: one request at a time, next to the floor: the model's forward alone,
  as the worker timed it (``compute_ms`` of a batch of one).

Each is summarised the same way (percentiles of the producer's round trip, throughput,
accuracy from the answers' top-1 labels) so the table shows the two paths side by side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from producers.client import Client
from producers.encoding import encode_array
from shared.stats import percentile

PRODUCER_THREADS = 8
ANSWER_TIMEOUT_S = 120
Answer = tuple[float, dict[str, Any]]  # the round trip in ms, the InferResult JSON


def job_path(client: Client, ref: str, images: list[Any]) -> Callable[[int], Answer]:
    """One Celery inference job for image ``i``, submitted and awaited."""

    def one(i: int) -> Answer:
        start = time.perf_counter()
        job_id = client.submit_infer(ref, encode_array(images[i]))
        result = client.wait(job_id, timeout=ANSWER_TIMEOUT_S)
        return (time.perf_counter() - start) * 1000, result

    return one


def lane_path(client: Client, ref: str, images: list[Any]) -> Callable[[int], Answer]:
    """One online lane request for image ``i``."""

    def one(i: int) -> Answer:
        start = time.perf_counter()
        result = client.infer(ref, images[i], timeout=ANSWER_TIMEOUT_S)
        return (time.perf_counter() - start) * 1000, result

    return one


def load(one: Callable[[int], Answer], count: int, producers: int) -> tuple[list[Answer], float]:
    """``count`` calls from ``producers`` threads, in order; the answers and the wall time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(producers) as pool:
        answers = list(pool.map(one, range(count)))
    return answers, time.perf_counter() - started


def top1(result: dict[str, Any]) -> int:
    """The most likely label of a one-input answer."""
    return int(result["predictions"][0][0]["label"])


def summarise(
    answers: list[Answer], wall_s: float, labels: list[int], producers: int
) -> dict[str, Any]:
    """Round-trip percentiles, worker and forward times, throughput, and accuracy."""
    latencies = sorted(ms for ms, _ in answers)
    results = [r for _, r in answers]
    predicted = [top1(r) for r in results]
    return {
        "producers": producers,
        "requests": len(results),
        "accuracy": sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(results),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "worker_p50_ms": percentile([r["latency"]["total_worker_ms"] for r in results], 50),
        "forward_p50_ms": percentile([r["latency"]["compute_ms"] for r in results], 50),
        "mean_batch": sum(r["batch_size"] for r in results) / len(results),
        "throughput": len(results) / wall_s if wall_s > 0 else 0.0,
        "cache_hits": sum(bool(r["cache_hit"]) for r in results),
        "predicted": predicted,
    }


def serve_both(client: Client, ref: str, images: list[Any], labels: list[int]) -> dict[str, Any]:
    """The variant's digits as jobs and as lane requests from several producers, then as lane
    requests one at a time (the lane's latency next to the floor)."""
    paths: dict[str, Any] = {}
    for name, make in (("jobs", job_path), ("lane", lane_path)):
        answers, wall = load(make(client, ref, images), len(images), PRODUCER_THREADS)
        paths[name] = summarise(answers, wall, labels, PRODUCER_THREADS)
    answers, wall = load(lane_path(client, ref, images), len(images), 1)
    paths["lane_1"] = summarise(answers, wall, labels, 1)
    jobs = paths["jobs"]["predicted"]
    for name in ("lane", "lane_1"):
        same = sum(a == b for a, b in zip(paths[name].pop("predicted"), jobs, strict=True))
        paths[name]["agree_with_jobs"] = same / len(jobs)
    paths["jobs"].pop("predicted")
    return paths
