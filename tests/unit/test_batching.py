"""The micro-batcher merges concurrent jobs, never makes a lone job wait, and backs off on OOM."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import torch
from torch import nn

from shared.errors import ResourceExhausted
from shared.manifest import Manifest
from workers.batching import MicroBatcher, forward_with_oom_backoff
from workers.cache import LoadedModel
from workers.jobs.serving import batch_parallel

T = TypeVar("T")
ZEROS = torch.zeros(1, 3)


class Recorder(nn.Module):
    """Identity-like model that records every batch size it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.running = 0
        self.most_running = 0

        self.lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.entered.set()
        self.gate.wait(timeout=10)
        with self.lock:
            self.sizes.append(len(x))
            self.running -= 1
        return x.flatten(1)[:, :3]


def loaded(module: nn.Module, digest: str = "d" * 64) -> LoadedModel:
    manifest = Manifest(arch="x", input_shape=[3], num_classes=3)
    return LoadedModel(digest, manifest, module, torch.device("cpu"), 0)


class Picky(Recorder):
    """Fails any forward whose batch holds a negative value, like a model broken by one input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if (x < 0).any():
            raise RuntimeError("this input breaks the model")
        return out


def together(
    batcher: MicroBatcher,
    recorder: Recorder,
    jobs: int,
    run: Callable[[int, Any], T],
    before_release: Callable[[], None] | None = None,
) -> list[Future[T]]:
    """``jobs`` jobs that each take a slot, wait for one another, then ``run(i, slot)``, while
    the model's gate is shut (the first forward holds, the others queue behind it); the gate
    opens once all are submitted (after ``before_release``). The finished futures."""
    recorder.gate.clear()
    barrier = threading.Barrier(jobs)

    def job(i: int) -> T:
        with batcher.slot() as slot:
            barrier.wait()
            return run(i, slot)

    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(job, i) for i in range(jobs)]
        if before_release is not None:
            before_release()
        recorder.gate.set()
    return futures


def test_a_lone_job_runs_at_once_with_batch_size_one() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(max_batch=16, max_wait_ms=10_000)
    with batcher.slot() as slot:
        out = batcher.run(loaded(recorder), torch.ones(1, 3), slot)
    assert out.batch_size == 1 and recorder.sizes == [1]
    assert out.batch_wait_ms < 1000  # far below max_wait: nobody else held a slot


def test_concurrent_jobs_share_one_forward_and_get_their_own_rows() -> None:
    recorder = Recorder()
    model = loaded(recorder)
    batcher = MicroBatcher(max_batch=64, max_wait_ms=5_000)
    jobs = 6

    def run(i: int, slot: Any) -> torch.Tensor:
        return batcher.run(model, torch.full((1, 3), float(i)), slot).logits

    outputs = [f.result() for f in together(batcher, recorder, jobs, run)]
    assert sum(recorder.sizes) == jobs and len(recorder.sizes) < jobs
    for i, logits in enumerate(outputs):
        assert logits.tolist() == [[float(i)] * 3]


def test_max_batch_caps_the_merge() -> None:
    recorder = Recorder()
    model = loaded(recorder)
    batcher = MicroBatcher(max_batch=4, max_wait_ms=5_000)
    for f in together(batcher, recorder, 10, lambda i, slot: batcher.run(model, ZEROS, slot)):
        f.result()
    assert max(recorder.sizes) <= 4 and sum(recorder.sizes) == 10


def test_disabled_batcher_runs_each_job_alone() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(max_batch=64, max_wait_ms=5, enabled=False)
    with batcher.slot() as slot:
        assert batcher.run(loaded(recorder), torch.ones(3, 3), slot).batch_size == 3


def test_oom_halves_the_batch_until_it_fits() -> None:
    seen: list[int] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("injected")
        return x * 2

    out = forward_with_oom_backoff(forward, torch.arange(8.0).view(8, 1))
    assert out.view(-1).tolist() == [2.0 * i for i in range(8)]
    assert seen[0] == 8 and max(seen[1:]) <= 4


def test_oom_at_batch_one_is_a_transient_error() -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("injected")

    with pytest.raises(ResourceExhausted):
        forward_with_oom_backoff(forward, torch.zeros(1, 1))


def test_a_job_that_breaks_the_forward_fails_alone() -> None:
    picky = Picky()
    model = loaded(picky)
    batcher = MicroBatcher(max_batch=64, max_wait_ms=5_000)
    jobs, bad = 5, 2

    def run(i: int, slot: Any) -> torch.Tensor:
        value = -1.0 if i == bad else float(i)
        return batcher.run(model, torch.full((1, 3), value), slot).logits

    for i, future in enumerate(together(batcher, picky, jobs, run)):
        if i == bad:
            with pytest.raises(RuntimeError, match="breaks the model"):
                future.result()
        else:
            assert future.result().tolist() == [[float(i)] * 3]
    assert max(picky.sizes) > 1  # the jobs were merged before the failure split them


def test_jobs_for_different_models_are_never_merged() -> None:
    recorder = Recorder()
    first, second = loaded(recorder, "a" * 64), loaded(recorder, "b" * 64)
    batcher = MicroBatcher(max_batch=64, max_wait_ms=5_000)

    def run(i: int, slot: Any) -> int:
        return batcher.run(first if i % 2 else second, ZEROS, slot).batch_size

    sizes = [f.result() for f in together(batcher, recorder, 6, run)]
    assert max(sizes) <= 3 and sum(recorder.sizes) == 6


def test_batch_wait_is_reported_per_job() -> None:
    recorder = Recorder()
    model = loaded(recorder)
    batcher = MicroBatcher(max_batch=64, max_wait_ms=5_000)
    outs = [
        f.result()
        for f in together(batcher, recorder, 4, lambda i, slot: batcher.run(model, ZEROS, slot))
    ]
    assert all(o.batch_size >= 1 and o.compute_ms >= 0 and o.batch_wait_ms >= 0 for o in outs)


def test_jobs_arriving_during_a_lone_forward_are_merged_after_it() -> None:
    recorder = Recorder()
    model = loaded(recorder)
    batcher = MicroBatcher(max_batch=64, max_wait_ms=5_000)
    recorder.gate.clear()
    later = threading.Barrier(2)

    def job(value: float, wait: threading.Barrier | None) -> int:
        with batcher.slot() as slot:
            if wait is not None:
                wait.wait()
            return batcher.run(model, torch.full((1, 3), value), slot).batch_size

    with ThreadPoolExecutor(3) as pool:
        lone = pool.submit(job, 0.0, None)
        assert recorder.entered.wait(timeout=10)  # the lone job is inside its forward
        followers = [pool.submit(job, float(i), later) for i in (1, 2)]
        while batcher.queued() < 2:  # both followers wait behind the running forward
            time.sleep(0.001)
        recorder.gate.set()
        assert lone.result(timeout=30) == 1
        assert [f.result(timeout=30) for f in followers] == [2, 2]
    assert recorder.sizes == [1, 2] and recorder.most_running == 1


def test_parallel_batches_run_at_once_up_to_the_limit() -> None:
    recorder = Recorder()
    models = [loaded(recorder, c * 64) for c in "abc"]
    batcher = MicroBatcher(max_batch=64, max_wait_ms=5_000, parallel=2)

    def two_running() -> None:
        while recorder.running < 2:  # two groups are inside their forwards at once
            time.sleep(0.001)

    def run(i: int, slot: Any) -> int:
        return batcher.run(models[i % 3], ZEROS, slot).batch_size

    sizes = [f.result() for f in together(batcher, recorder, 9, run, two_running)]
    assert recorder.most_running == 2 and sum(recorder.sizes) == 9
    assert max(sizes) == 3  # each model's three jobs still share one forward


def test_parallel_batches_default_to_one_per_core_group_on_a_cpu() -> None:
    assert batch_parallel(3, torch.device("cpu")) == 3
    assert batch_parallel(None, torch.device("cuda")) == 1
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert batch_parallel(None, torch.device("cpu")) == max(1, os.cpu_count() or 1)
    finally:
        torch.set_num_threads(threads)
