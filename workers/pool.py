"""The worker's execution pool: Celery's thread pool, with threads a stuck job can be left in.

Celery's own thread pool runs tasks on a ``ThreadPoolExecutor``; a task stuck in a call that
never returns (a read on a file no one writes) holds one of its threads for good, and the
executor's threads are joined at shutdown, so the worker could not even exit. Here the
threads are daemons and the watchdog (:mod:`workers.limits`) may *abandon* one: the pool
starts another in its place, never waits for the stuck one, and that thread exits as soon as
its job returns, if it ever does.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from celery.concurrency.base import BasePool, apply_target
from celery.concurrency.thread import ApplyResult

log = logging.getLogger("torchfleet.worker")

Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class JobThreads:
    """``limit`` daemon threads that run submitted work; a stuck one can be replaced."""

    def __init__(self, limit: int, name: str = "job") -> None:
        self.limit = limit
        self.name = name
        self._work: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: dict[int, threading.Thread] = {}  # the live ones, by thread id
        self._abandoned: set[int] = set()
        self._started = 0
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._work.put((future, fn, args))
        self._fill()
        return future

    def abandon(self, ident: int) -> int:
        """Stop counting the thread ``ident`` (stuck in a job): start another in its place.
        Returns how many threads are stuck now."""
        with self._lock:
            if self._threads.pop(ident, None) is not None:
                self._abandoned.add(ident)
            stuck = len(self._abandoned)
        self._fill()
        return stuck

    @property
    def stuck(self) -> int:
        with self._lock:
            return len(self._abandoned)

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._threads)

    def shutdown(self, cancel_futures: bool = True) -> None:
        """Stop taking work and wait for the live threads (never for an abandoned one)."""
        with self._lock:
            self._closed = True
            live = list(self._threads.values())
            ends = len(live) + len(self._abandoned)  # one each, should a stuck one come back
        if cancel_futures:
            self._cancel_queued()
        for _ in range(ends):
            self._work.put(None)
        for thread in live:
            thread.join()

    def _fill(self) -> None:
        with self._lock:
            while not self._closed and len(self._threads) < self.limit:
                self._started += 1
                thread = threading.Thread(
                    target=self._run, name=f"{self.name}-{self._started}", daemon=True
                )
                thread.start()
                self._threads[thread.ident or 0] = thread

    def _run(self) -> None:
        ident = threading.get_ident()
        while ident not in self._abandoned:
            item = self._work.get()
            if item is None:
                break
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # the future carries it to whoever waits
                future.set_exception(e)
        with self._lock:
            self._threads.pop(ident, None)
            self._abandoned.discard(ident)

    def _cancel_queued(self) -> None:
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[0].cancel()


_current: FleetPool | None = None


class FleetPool(BasePool):
    """The pool `torchfleet worker` runs (``--concurrency`` job threads)."""

    body_can_be_buffer = True
    signal_safe = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        global _current
        super().__init__(*args, **kwargs)
        self.threads = JobThreads(self.limit)
        _current = self

    def on_apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        **_: Any,
    ) -> ApplyResult:
        future = self.threads.submit(apply_target, target, args, kwargs, callback, accept_callback)
        return ApplyResult(future)

    def on_stop(self) -> None:
        self.threads.shutdown()
        super().on_stop()

    def _get_info(self) -> dict[str, Any]:
        info: dict[str, Any] = super()._get_info()
        info.update({"max-concurrency": self.limit, "threads": self.threads.size})
        info["stuck"] = self.threads.stuck
        return info


def abandon_thread(ident: int) -> int:
    """Leave the job thread ``ident`` behind (a replacement starts); how many are stuck now.
    Outside a worker (no pool), nothing to replace: 0."""
    if _current is None:
        return 0
    stuck = _current.threads.abandon(ident)
    log.warning("a job thread is stuck and was replaced (%d stuck in this worker)", stuck)
    return stuck
