"""The micro-batcher: inference jobs for the same model that arrive together share one forward.

Each running inference task holds a *slot* from the moment it starts until it has its
answer. The dispatcher thread takes the oldest request, adds every waiting request for
the same model (up to ``max_batch`` inputs), and waits up to ``max_wait_ms`` for more only
while other slot holders are still decoding their inputs and may join. A lone job on an
idle worker therefore waits for nothing: it runs in its own thread, with no hand-off to the
dispatcher (a thread switch costs ~25 us idle, up to the interpreter's switch interval
when the worker's other threads are busy). At most ``parallel`` forwards run at once (one
by default; on a CPU with single-threaded forwards, one per core keeps every core busy).

Inputs are decoded and checked before they reach the batcher, and a merged forward that
fails is retried job by job, so one bad job never fails the others in its batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from shared.errors import ResourceExhausted
from workers.cache import LoadedModel

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class BatchOutput:
    logits: torch.Tensor
    batch_size: int
    batch_wait_ms: float
    compute_ms: float


@dataclass(eq=False)  # by identity: the queue removes requests, whose tensors cannot compare
class _Request:
    model: LoadedModel
    inputs: torch.Tensor
    future: Future[BatchOutput] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class _Slot:
    submitted: bool = False


class MicroBatcher:
    """``parallel`` dispatcher threads per worker device, fed by the task threads."""

    def __init__(
        self, *, max_batch: int, max_wait_ms: float, enabled: bool = True, parallel: int = 1
    ) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.enabled = enabled
        self.parallel = parallel
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._undecided = 0
        self._running = 0  # forwards running or being gathered; at most `parallel`
        self._gathering = False
        self._threads: list[threading.Thread] = []

    @contextmanager
    def slot(self) -> Iterator[_Slot]:
        """Held by an inference task for its whole run; tells the dispatcher company may come."""
        slot = _Slot()
        with self._cond:
            self._undecided += 1
        try:
            yield slot
        finally:
            if not slot.submitted:
                with self._cond:
                    self._undecided -= 1
                    self._cond.notify_all()

    def run(self, model: LoadedModel, inputs: torch.Tensor, slot: _Slot) -> BatchOutput:
        """Logits for ``inputs`` (CPU tensor), computed alone or with other jobs' inputs."""
        if not self.enabled:
            slot.submitted = True
            with self._cond:
                self._undecided -= 1
            return _compute(model, [inputs], time.perf_counter())[0]
        request = _Request(model, inputs)
        with self._cond:
            slot.submitted = True
            self._undecided -= 1
            inline = (
                not self._queue
                and not self._gathering
                and self._running < self.parallel
                and self._undecided == 0
            )
            if inline:
                self._running += 1
            else:
                self._ensure_threads()
                self._queue.append(request)
                self._cond.notify_all()
        if not inline:
            return request.future.result()
        try:  # nobody to wait for: run in this thread, no hand-off to the dispatcher
            return _compute(model, [inputs], request.enqueued)[0]
        finally:
            self._done()

    def queued(self) -> int:
        """Jobs handed to the dispatcher and not yet taken into a forward."""
        with self._cond:
            return len(self._queue)

    def _done(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    def _ensure_threads(self) -> None:
        while len(self._threads) < self.parallel:
            name = f"micro-batcher-{len(self._threads)}"
            thread = threading.Thread(target=self._loop, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _loop(self) -> None:
        while True:
            group = self._next_group()
            try:
                self._serve(group)
            finally:
                self._done()

    def _serve(self, group: list[_Request]) -> None:
        """Run a group as one forward; if that fails, run each job alone so that only the
        job that breaks the model gets the error."""
        try:
            outputs = _compute(group[0].model, [r.inputs for r in group], group[0].enqueued)
        except BaseException as e:  # every waiter must hear about the failure
            if len(group) > 1:
                for request in group:
                    self._serve([request])
                return
            group[0].future.set_exception(e)
            return
        for request, output in zip(group, outputs, strict=True):
            output.batch_wait_ms = (time.perf_counter() - request.enqueued) * 1000 - (
                output.compute_ms
            )
            request.future.set_result(output)

    def _next_group(self) -> list[_Request]:
        with self._cond:
            while not self._queue or self._running >= self.parallel or self._gathering:
                self._cond.wait()
            self._running += 1  # gathering counts: a job arriving now joins this group
            self._gathering = True  # one gatherer at a time, so a model's jobs are not split
            try:
                return self._gather(self._queue.popleft())
            finally:
                self._gathering = False
                self._cond.notify_all()

    def _gather(self, first: _Request) -> list[_Request]:
        """``first`` and the jobs for its model that are queued or about to be (lock held)."""
        group, size = [first], len(first.inputs)
        deadline = time.perf_counter() + self.max_wait_s
        while size < self.max_batch:
            size += self._take_same_model(group, self.max_batch - size)
            remaining = deadline - time.perf_counter()
            if size >= self.max_batch or self._undecided == 0 or remaining <= 0:
                break
            self._cond.wait(remaining)
        return group

    def _take_same_model(self, group: list[_Request], room: int) -> int:
        key, taken = group[0].model.key, 0
        for request in list(self._queue):
            if request.model.key == key and len(request.inputs) <= room - taken:
                self._queue.remove(request)
                group.append(request)
                taken += len(request.inputs)
        return taken


def _compute(model: LoadedModel, parts: list[torch.Tensor], started: float) -> list[BatchOutput]:
    batch = parts[0] if len(parts) == 1 else torch.cat(parts)
    wait_ms = (time.perf_counter() - started) * 1000
    logits, compute_ms = timed_forward(model, batch)
    outputs, offset = [], 0
    for part in parts:
        chunk = logits[offset : offset + len(part)]
        outputs.append(BatchOutput(chunk, len(batch), wait_ms, compute_ms))
        offset += len(part)
    return outputs


def timed_forward(model: LoadedModel, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Logits on the CPU and compute milliseconds (CUDA events on a GPU, wall clock on a CPU)."""
    if model.device.type != "cuda":
        start = time.perf_counter()
        logits = forward_with_oom_backoff(model.forward, batch)
        return logits, (time.perf_counter() - start) * 1000
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    on_device = batch.pin_memory().to(model.device, non_blocking=True)
    begin.record()
    logits = forward_with_oom_backoff(model.forward, on_device)
    end.record()
    end.synchronize()
    return logits.cpu(), float(begin.elapsed_time(end))


def forward_with_oom_backoff(forward: Forward, batch: torch.Tensor) -> torch.Tensor:
    """Run ``forward``; on CUDA out-of-memory, retry the two halves of the batch separately."""
    try:
        return forward(batch)
    except torch.cuda.OutOfMemoryError as e:
        if len(batch) == 1:
            raise ResourceExhausted("CUDA out of memory even at batch size 1") from e
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(batch) // 2
        first = forward_with_oom_backoff(forward, batch[:half])
        return torch.cat([first, forward_with_oom_backoff(forward, batch[half:])])
