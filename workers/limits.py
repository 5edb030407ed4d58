"""Hard time limits, and stopping a job from outside its thread (a limit or a cancel).

Celery enforces ``time_limit`` only in its prefork and gevent pools; a fleet worker runs jobs
in threads (CUDA is never forked), where Celery ignores it. So each worker runs one watchdog
thread, as Dramatiq's TimeLimit middleware does, that every :data:`TICK_S` stops the running
jobs that are past their limit or whose cancel flag is set:

1. it fences the job first: every registry the delivery writes through gets a new fencing
   token, so nothing more is registered or promoted, whatever the job's thread does next;
2. it raises :class:`Stop` in the job's thread (``PyThreadState_SetAsyncExc``): a job busy in
   Python code (a loop, a walk of folders) unwinds at once and the task stores the outcome
   (FAILURE ``time_limit``, or REVOKED) as it would any other;
3. a thread still there after ``time_limit_grace_s`` is stuck in a call Python cannot
   interrupt (a read that never returns): the watchdog answers for it (the task's
   ``on_abandon``), acknowledges its message (it must not run again) and leaves the thread
   behind; the pool starts another (:mod:`workers.pool`). Past ``max_stuck_jobs`` such
   threads the worker asks to be replaced.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

import redis
from celery.exceptions import Ignore
from celery.worker import state as worker_state

from shared.errors import JobCancelled, TimeLimitExceeded, TorchfleetError
from shared.names import cancel_key, fence_key
from shared.settings import Settings
from workers.faults import request_replacement
from workers.pool import abandon_thread
from workers.transport import held_requests

log = logging.getLogger("torchfleet.worker")
T = TypeVar("T")
TICK_S: Final = 0.25
KIND_LIMITS: Final = {
    "train": "time_limit_train_s",
    "compress": "time_limit_compress_s",
    "infer": "time_limit_infer_s",
    "pipeline": "time_limit_pipeline_s",
}
RUNNING, STOPPING, DONE, ABANDONED = "running", "stopping", "done", "abandoned"
OnAbandon = Callable[[TorchfleetError], None]


class Stop(BaseException):
    """Raised into a job's thread by the watchdog. A BaseException, so that a job's own
    ``except Exception`` cannot swallow it; :func:`run_watched` turns it into the reason."""


# ------------------------------------------------------------------ the limit of one job
@dataclass(frozen=True)
class TimeLimit:
    """How long one delivery may run, and what to say when it runs out."""

    seconds: float
    maximum: float  # the worker's, for this kind
    setting: str  # the environment variable that sets the maximum
    what: str  # "train jobs", "the pipeline's compress stage"

    def error(self) -> TimeLimitExceeded:
        head = f"time limit of {self.seconds:g} s for {self.what} reached"
        if self.seconds < self.maximum:
            return TimeLimitExceeded(
                f"{head}; raise time_limit_s up to the worker's maximum of "
                f"{self.maximum:g} s ({self.setting})"
            )
        return TimeLimitExceeded(
            f"{head}: that is the worker's maximum ({self.setting}); make the job smaller or "
            "raise the maximum on the workers"
        )


def time_limit(
    settings: Settings, kind: str, requested: float | None, what: str | None = None
) -> TimeLimit:
    """The limit of a ``kind`` job that asked for ``requested`` seconds (None: the maximum)."""
    name = KIND_LIMITS[kind]
    maximum = float(getattr(settings, name))
    seconds = maximum if requested is None else min(float(requested), maximum)
    return TimeLimit(seconds, maximum, f"TORCHFLEET_{name.upper()}", what or f"{kind} jobs")


# ------------------------------------------------------------------ one running job
@dataclass(eq=False)
class Watch:
    """A running job as the watchdog sees it; ``state`` moves under ``lock``."""

    task_id: str
    cancel_id: str  # whose cancel flag stops it (a stage: its pipeline's)
    limit: TimeLimit
    on_abandon: OnAbandon  # stores the outcome when the thread cannot
    thread_id: int = field(default_factory=threading.get_ident)
    deadline: float = 0.0  # time.monotonic()
    fences: list[str] = field(default_factory=list)  # fence ids of its registries
    reason: TorchfleetError | None = None
    state: str = RUNNING
    stopped_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


_watches: dict[int, Watch] = {}  # by thread id
_watches_lock = threading.Lock()


def run_watched(watch: Watch, fn: Callable[[], T]) -> T:
    """``fn()`` under ``watch``: a stop raises its reason (:class:`TimeLimitExceeded` or
    :class:`JobCancelled`), whatever ``fn`` raised on its way out (a fenced write's
    ``StaleDelivery``, the :class:`Stop` itself); a job the watchdog already answered for
    raises ``Ignore``, so that nothing is stored twice."""
    watch.deadline = time.monotonic() + watch.limit.seconds
    with _watches_lock:
        _watches[watch.thread_id] = watch
    error: BaseException | None = None
    try:
        result = fn()
    except BaseException as e:
        error = e
    while True:  # a Stop raised just as the job ended lands here: close again
        try:
            final = _close(watch)
            break
        except Stop:
            continue
    if final == ABANDONED:
        raise Ignore("answered by the watchdog")
    if error is None:
        return result
    if watch.reason is not None:
        raise watch.reason from None
    raise error


def _close(watch: Watch) -> str:
    with watch.lock:
        if watch.state in (RUNNING, STOPPING):
            watch.state = DONE
        if watch.reason is not None:  # a Stop raised but not yet delivered: withdraw it
            _raise_in(watch.thread_id, None)
        with _watches_lock:
            _watches.pop(watch.thread_id, None)
        return watch.state


def fence_current(fence_id: str) -> None:
    """The job running in this thread writes through the registry fenced as ``fence_id``."""
    with _watches_lock:
        watch = _watches.get(threading.get_ident())
    if watch is not None:
        watch.fences.append(fence_id)


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    target = ctypes.py_object(exc) if exc is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), target)


# ------------------------------------------------------------------ the watchdog
class Watchdog:
    """Stops jobs past their limit or cancelled, and answers for those that cannot stop."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.grace_s = settings.time_limit_grace_s
        self.max_stuck = settings.max_stuck_jobs

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with _watches_lock:
            watches = list(_watches.values())
        for watch in watches:
            if watch.state == STOPPING and now >= watch.stopped_at + self.grace_s:
                self.abandon(watch)
        for watch in watches:
            if watch.state == RUNNING and now >= watch.deadline:
                self.stop(watch, watch.limit.error(), now)
        # last: with Redis away this raises, and the limits above are enforced all the same
        for watch in self.cancelled([w for w in watches if w.state == RUNNING]):
            self.stop(watch, JobCancelled(f"job {watch.cancel_id} was cancelled"), now)

    def cancelled(self, watches: list[Watch]) -> list[Watch]:
        if not watches:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for watch in watches:
                pipe.exists(cancel_key(watch.cancel_id))
            flags = pipe.execute()
        return [w for w, flag in zip(watches, flags, strict=True) if flag]

    def stop(self, watch: Watch, reason: TorchfleetError, now: float) -> None:
        """Fence the job's registry writes, then raise :class:`Stop` in its thread."""
        with watch.lock:
            if watch.state != RUNNING:
                return
            watch.state, watch.reason, watch.stopped_at = STOPPING, reason, now
        log.warning("stopping job %s: %s", watch.task_id, reason)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for fence_id in watch.fences:
                    pipe.incr(fence_key(fence_id))
                pipe.execute()
        except redis.RedisError:  # its writes still check the cancel flag, not the limit
            log.warning("could not fence job %s", watch.task_id, exc_info=True)
        with watch.lock:
            if watch.state == STOPPING:
                _raise_in(watch.thread_id, Stop)

    def abandon(self, watch: Watch) -> None:
        """Answer for a job whose thread did not unwind; acknowledge it, replace the thread."""
        reason = watch.reason
        if reason is None:
            return
        try:
            watch.on_abandon(reason)
        except Exception:  # Redis away, say: try again at the next tick
            log.warning("could not store the outcome of job %s", watch.task_id, exc_info=True)
            return
        with watch.lock:
            if watch.state != STOPPING:
                return  # it ended meanwhile, and stored the same outcome itself
            watch.state = ABANDONED
        acknowledge(watch.task_id)
        if abandon_thread(watch.thread_id) >= self.max_stuck:
            log.error("%d job threads are stuck: asking for a fresh worker", self.max_stuck)
            request_replacement()


def acknowledge(task_id: str) -> None:
    """Acknowledge the delivery of ``task_id`` held by this worker and forget the request."""
    for request in held_requests():
        if request.id == task_id:
            request.acknowledge()
            worker_state.task_ready(request)


_stop = threading.Event()


def watch_loop(dog: Watchdog, stop: threading.Event, tick_s: float = TICK_S) -> None:
    failing = False
    while not stop.wait(tick_s):
        try:
            dog.tick()
        except Exception:  # a Redis outage, say: the next tick tries again (said once)
            if not failing:
                log.warning("the job watchdog's tick failed; retrying", exc_info=True)
            failing = True
        else:
            failing = False


def start_watchdog(client: redis.Redis, settings: Settings) -> None:
    """Worker start-up: the watchdog thread."""
    _stop.clear()
    thread = threading.Thread(
        target=watch_loop, args=(Watchdog(client, settings), _stop), name="job-watchdog"
    )
    thread.daemon = True
    thread.start()


def stop_watchdog() -> None:
    _stop.set()
