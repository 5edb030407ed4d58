"""The load generator: producer threads that each submit a job and wait for its answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from producers.bench.plan import RESULT_TIMEOUT_S


def drive(
    producers: int,
    jobs: int,
    one: Callable[[], float],
    *,
    warmup: int = 2,
    budget_s: float = float("inf"),
) -> tuple[list[float], float]:
    """``jobs`` calls of ``one()`` (each waits for its answer and returns its latency in ms)
    from ``producers`` threads, after ``warmup`` unmeasured calls per thread; the latencies
    and the wall time of the measured part in seconds. Past ``budget_s`` seconds no new call
    starts once every producer has made two (slow models stay within the run's budget)."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    remaining = [jobs]
    lock = threading.Lock()
    start_line = threading.Barrier(producers + 1)
    deadline = [float("inf")]

    def producer() -> None:
        try:
            for _ in range(warmup):
                one()
            start_line.wait()
            while True:
                with lock:
                    late = time.perf_counter() > deadline[0] and len(latencies) >= 2 * producers
                    if remaining[0] <= 0 or errors or late:
                        return
                    remaining[0] -= 1
                ms = one()
                with lock:
                    latencies.append(ms)
        except threading.BrokenBarrierError:
            return
        except BaseException as e:  # reported once the other producers stop
            errors.append(e)
            start_line.abort()

    threads = [threading.Thread(target=producer, daemon=True) for _ in range(producers)]
    for t in threads:
        t.start()
    with suppress(threading.BrokenBarrierError):
        start_line.wait()
    start = time.perf_counter()
    deadline[0] = start + budget_s
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return latencies, wall


def infer_call(client: Any, ref: str, payload: Any) -> Callable[[], float]:
    """One fleet inference job, submitted and awaited as any producer does."""

    def one() -> float:
        start = time.perf_counter()
        client.wait(client.submit_infer(ref, payload), timeout=RESULT_TIMEOUT_S)
        return (time.perf_counter() - start) * 1000

    return one


def task_call(client: Any, task: str, args: list[Any]) -> Callable[[], float]:
    """One plain Celery task round trip: send_task, then the result backend's answer."""

    def one() -> float:
        start = time.perf_counter()
        client.app.send_task(task, args=args).get(timeout=RESULT_TIMEOUT_S)
        return (time.perf_counter() - start) * 1000

    return one


def sample_inputs(count: int, shape: list[int]) -> Any:
    """``count`` seeded standard-normal float32 inputs of ``shape`` (the same every run)."""
    import numpy as np

    return np.random.default_rng(0).standard_normal((count, *shape)).astype(np.float32)
