"""The watchdog on its own (real Redis, real threads, ticks driven by the test): a job past
its limit or cancelled is stopped in Python code, fenced even if it swallows the stop, and
answered for when it is stuck in a call Python cannot interrupt; the pool replaces a stuck
thread and never waits for it. End to end: tests/integration/test_limits.py."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
import redis
from celery.exceptions import Ignore

from shared.errors import (
    JobCancelled,
    StaleDelivery,
    TimeLimitExceeded,
    TorchfleetError,
)
from shared.names import cancel_key, model_key
from shared.registry import ModelRegistry
from shared.settings import Settings
from workers.limits import (
    Stop,
    TimeLimit,
    Watch,
    Watchdog,
    fence_current,
    run_watched,
    time_limit,
)
from workers.pool import JobThreads

JOIN_S = 10.0
FAR = 1e12  # a tick "now" past every deadline and grace


def test_a_job_asks_for_less_than_the_worker_maximum_never_more() -> None:
    settings = Settings(time_limit_train_s=100)
    assert time_limit(settings, "train", None).seconds == 100
    assert time_limit(settings, "train", 5).seconds == 5
    assert time_limit(settings, "train", 500).seconds == 100
    assert time_limit(Settings(), "infer", None).seconds == Settings().time_limit_infer_s


def test_the_message_says_what_to_raise() -> None:
    settings = Settings(time_limit_compress_s=60)
    lowered = str(time_limit(settings, "compress", 2).error())
    assert lowered == (
        "time limit of 2 s for compress jobs reached; raise time_limit_s up to the worker's "
        "maximum of 60 s (TORCHFLEET_TIME_LIMIT_COMPRESS_S)"
    )
    at_max = str(time_limit(settings, "compress", None, "the pipeline's compress stage").error())
    assert at_max.startswith("time limit of 60 s for the pipeline's compress stage reached")
    assert "worker's maximum (TORCHFLEET_TIME_LIMIT_COMPRESS_S)" in at_max


class Job:
    """``body`` run under a watch in a thread of its own; what it returned or raised."""

    def __init__(self, body: Callable[[], Any], cancel_id: str = "job-1", seconds: float = 1):
        self.abandoned: list[TorchfleetError] = []
        limit = TimeLimit(seconds, 10, "TORCHFLEET_TIME_LIMIT_TRAIN_S", "train jobs")
        self.outcome: Future[Any] = Future()
        self.started = threading.Event()

        def run() -> None:
            watch = Watch("job-1", cancel_id, limit, self.abandoned.append)
            self.started.set()
            try:
                self.outcome.set_result(run_watched(watch, body))
            except BaseException as e:
                self.outcome.set_exception(e)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        self.started.wait(JOIN_S)

    def error(self) -> BaseException | None:
        return self.outcome.exception(JOIN_S)


def spin(until: threading.Event) -> Callable[[], str]:
    """A hung loop in Python code (polls an event that nobody sets)."""

    def body() -> str:
        while not until.wait(0.01):
            pass
        return "finished"

    return body


@pytest.fixture
def dog(redis_client: redis.Redis, settings: Settings) -> Watchdog:
    return Watchdog(redis_client, settings.model_copy(update={"time_limit_grace_s": 1}))


@pytest.fixture
def never() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def test_a_hung_loop_is_stopped_at_its_limit(dog: Watchdog, never: threading.Event) -> None:
    job = Job(spin(never))
    dog.tick(now=0)  # before the deadline: nothing happens
    assert not job.outcome.done()
    dog.tick(now=FAR)
    error = job.error()
    assert isinstance(error, TimeLimitExceeded) and "1 s for train jobs" in str(error)
    assert job.abandoned == []  # it unwound by itself


def test_a_cancelled_job_is_stopped(
    dog: Watchdog, never: threading.Event, redis_client: redis.Redis
) -> None:
    job = Job(spin(never), cancel_id="pipe-7")
    redis_client.set(cancel_key("pipe-7"), "1")
    dog.tick(now=0)
    assert isinstance(job.error(), JobCancelled)


def test_a_job_that_finishes_keeps_its_result(dog: Watchdog) -> None:
    done = threading.Event()
    done.set()
    job = Job(spin(done))
    assert job.outcome.result(JOIN_S) == "finished"
    dog.tick(now=FAR)  # nothing left to stop


def test_a_stopped_job_cannot_register_even_if_it_swallows_the_stop(
    dog: Watchdog, redis_client: redis.Redis
) -> None:
    ready = threading.Event()
    refused: list[StaleDelivery] = []

    def stubborn() -> None:
        fence_current("job-1")
        registry = ModelRegistry(redis_client).for_job("job-1")
        try:
            ready.set()
            while True:
                threading.Event().wait(0.01)
        except Stop:  # a job that catches everything must still not write
            pass
        try:
            registry.new_version("stubborn")
        except StaleDelivery as e:
            refused.append(e)
            raise

    job = Job(stubborn)
    ready.wait(JOIN_S)
    dog.tick(now=FAR)
    error = job.error()
    assert isinstance(error, TimeLimitExceeded), error
    assert len(refused) == 1  # the write was tried, and refused by the fence
    assert not redis_client.exists(model_key("stubborn"))


def test_a_job_stuck_in_a_read_is_answered_for_and_its_thread_left_behind(
    dog: Watchdog,
) -> None:
    read_end, write_end = os.pipe()
    reading = threading.Event()

    def stuck() -> bytes:
        reading.set()
        return os.read(read_end, 1)  # no one writes: a call Python cannot interrupt

    try:
        job = Job(stuck)
        reading.wait(JOIN_S)
        dog.tick(now=FAR)  # the stop is raised, but cannot land
        assert not job.outcome.done()
        dog.tick(now=2 * FAR)  # past the grace: answered for
        assert [type(e) for e in job.abandoned] == [TimeLimitExceeded]
        os.write(write_end, b"x")  # the read returns: the late thread stores nothing
        assert isinstance(job.error(), Ignore)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_pool_replaces_a_stuck_thread_and_never_waits_for_it() -> None:
    threads = JobThreads(2, name="test-job")
    release = threading.Event()
    running = threading.Event()
    stuck_at: list[int] = []

    def stuck() -> str:
        stuck_at.append(threading.get_ident())
        running.set()
        release.wait(JOIN_S)
        return "late"

    late = threads.submit(stuck)
    running.wait(JOIN_S)
    assert threads.abandon(stuck_at[0]) == 1
    assert (threads.size, threads.stuck) == (2, 1)
    assert [threads.submit(lambda i=i: i).result(JOIN_S) for i in range(4)] == [0, 1, 2, 3]
    threads.shutdown()  # returns although the stuck thread still waits
    release.set()
    assert late.result(JOIN_S) == "late"  # it finishes its job, then leaves
