"""A lost Redis is not the job's fault: the job waits for Redis and runs on where it is.

Rejecting the delivery instead (kombu's ``reject(requeue=True)``) fails while Redis is away,
so the job would wait the whole visibility timeout for a restore sweep, and come back as one
more delivery. Here the job keeps its delivery and its worker thread: the keeper keeps it
visible, and it runs again (a training job from its checkpoint) as soon as Redis answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from celery.worker import state

from workers.faults import is_connection_error
from workers.runtime import Runtime

log = logging.getLogger("torchfleet.worker")
T = TypeVar("T")
PAUSE_S = 0.2  # between two pings of a Redis that is away
MAX_OUTAGES = 5  # outages one delivery rides through before it is given back to the queue


def worker_stopping() -> bool:
    """The worker was asked to stop (warm or cold): a job stops waiting for Redis."""
    return any(flag not in (None, False) for flag in (state.should_stop, state.should_terminate))


def wait_for_redis(
    client: redis.Redis,
    limit_s: float,
    *,
    pause_s: float = PAUSE_S,
    stopping: Callable[[], bool] = worker_stopping,
) -> bool:
    """Block until Redis answers a PING; False after ``limit_s`` or once the worker stops."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return bool(client.ping())
        except redis.RedisError:
            if time.monotonic() + pause_s > deadline or stopping():
                return False
            time.sleep(pause_s)  # Redis is away: ask again shortly


def through_outages(
    rt: Runtime, job_id: str, call: Callable[[], T], *, max_outages: int = MAX_OUTAGES
) -> T:
    """``call()``; when it fails because Redis went away, wait for Redis (at most
    ``settings.outage_wait_s``) and call it again, up to ``max_outages`` times. Past that,
    or when Redis stays away, the connection error is raised (the task gives the delivery
    back to its queue)."""
    outages = 0
    while True:
        try:
            return call()
        except Exception as e:
            if not is_connection_error(e) or outages >= max_outages:
                raise
            outages += 1
            log.warning(
                "job %s lost its connection to Redis (%s): it waits for Redis and runs on here",
                job_id,
                e,
            )
            if not wait_for_redis(rt.client, rt.settings.outage_wait_s):
                raise
            log.info("job %s: Redis is back, running on (outage %d)", job_id, outages)
