"""kombu's Redis transport under a worker: guards for a Redis that restarts or fills up, and
the visibility keeper.

kombu restores any unacknowledged delivery older than the visibility timeout, even one a
live worker is still running; the keeper refreshes the worker's held deliveries so that only
a dead worker's jobs come back. The guards close the gaps of the transport when Redis
restarts, or reaches maxmemory, under a worker (see :func:`guard_transport`). Every delivery
time, written or compared, is read from the Redis server's clock (:func:`use_server_clock`),
so hosts whose clocks disagree judge a job alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis
from celery.worker import state
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import QoS as virtual_qos

from shared.clock import ServerClock, skewed
from shared.connection import is_redis_full
from shared.names import KOMBU_UNACKED_INDEX
from workers import redisfull

log = logging.getLogger("torchfleet.worker")
APPEND_RETRY_S = 30.0
APPEND_RETRY_PAUSE_S = 0.1
MIN_KEEPER_INTERVAL_S = 0.2


def renew_visibility(client: redis.Redis, tags: Iterable[str], now: float | None = None) -> int:
    """Mark deliveries this worker still holds as fresh in kombu's unacked index.

    kombu's Redis transport restores any unacknowledged delivery older than the visibility
    timeout, even one a live worker is still running. Refreshing the score of held deliveries
    makes the timeout count from the worker's last sign of life instead of from delivery, so
    only the jobs of a dead worker come back. ``XX``: an acknowledged tag is never re-added.
    """
    mapping = {tag: now if now is not None else time.time() for tag in tags}
    if not mapping:
        return 0
    client.zadd(KOMBU_UNACKED_INDEX, mapping, xx=True, ch=True)
    return len(mapping)


def held_requests() -> list[Any]:
    """The requests this worker holds: prefetched, running, and waiting for a retry's
    countdown (those stay unacknowledged too, and a backoff can outlast the timeout)."""
    scheduled = getattr(state, "scheduled_requests", ())
    for _ in range(3):  # the sets are weak and shared with the pool's threads
        try:
            return [*state.reserved_requests, *state.active_requests, *scheduled]
        except RuntimeError:
            continue
    return []


def held_delivery_tags() -> list[str]:
    """Delivery tags of the requests this worker holds (prefetched, running, scheduled)."""
    held = held_requests()
    return sorted({str(r.message.delivery_tag) for r in held if r.message is not None})


def held_job_ids() -> list[str]:
    """Ids of the jobs this worker holds, for its heartbeat (`torchfleet status`)."""
    return sorted({str(r.id) for r in held_requests()})


def keep_visible(
    client: redis.Redis, interval_s: float, stop: threading.Event, clock: ServerClock
) -> None:
    """Renew this worker's held deliveries every ``interval_s`` until ``stop`` is set, at the
    server's time (the clock's offset measured again each time)."""
    while not stop.wait(interval_s):
        try:
            clock.sync(client)
            renew_visibility(client, held_delivery_tags(), clock.now())
        except redis.RedisError as e:
            if is_redis_full(e):  # paused; the probe renews them before jobs are taken again
                redisfull.GUARD.pause(e)
                continue
            log.warning("could not renew job visibility; retrying", exc_info=True)


_keeper_stop = threading.Event()
_clock = ServerClock()


def use_server_clock(client: redis.Redis, skew_s: float = 0.0) -> ServerClock:
    """Worker start: kombu's delivery times (the score it writes when it takes a message and
    the cut-off of its restore sweeps) and the keeper's read the Redis server's clock.
    ``skew_s``: this host's clock reads that far off (``settings.clock_skew_s``, for tests)."""
    global _clock
    _clock = ServerClock(local=skewed(skew_s))
    try:
        _clock.sync(client)
    except redis.RedisError as e:  # the keeper measures it as soon as Redis answers
        log.warning("the Redis server's clock is not read yet (%s)", e)
    kombu_redis.time = _clock.now
    return _clock


def keeper_interval_s(visibility_timeout_s: float) -> float:
    """How often the keeper renews: four times per visibility timeout."""
    return max(MIN_KEEPER_INTERVAL_S, visibility_timeout_s / 4)


def start_keeper(client: redis.Redis, visibility_timeout_s: float) -> None:
    """Worker start-up: renew held deliveries four times per visibility timeout."""
    interval = keeper_interval_s(visibility_timeout_s)
    _keeper_stop.clear()
    threading.Thread(
        target=keep_visible,
        args=(client, interval, _keeper_stop, _clock),
        name="visibility-keeper",
        daemon=True,
    ).start()


def stop_keeper() -> None:
    """Worker shutdown: stop renewing."""
    _keeper_stop.set()


def guard_transport(retry_s: float = APPEND_RETRY_S) -> bool:
    """Close the gaps of kombu's Redis transport when Redis restarts, or fills up, under a
    worker.

    1. A message taken with BRPOP is recorded as unacknowledged by a second command; if that
       fails, kombu drops the message. Retry the record (atomic, idempotent) until Redis is
       back, for up to ``retry_s``, or until Redis has memory again (however long: the
       message exists nowhere else).
    2. On connection loss kombu restores the worker's unacknowledged messages through the
       lost connection, and jobs that finish after the reconnection are acknowledged on their
       old channel; both can fail with an AttributeError that Celery treats as fatal: the
       worker stops (and can hang while stopping). The messages are still in Redis's unacked
       hash, so leave them there; the restore sweeps bring them back (a job that finished is
       then answered from its stored result).
    3. At maxmemory Redis refuses acks and requeues (``MULTI`` queues nothing then), which
       Celery treats as fatal too. Leave those messages in the unacked hash as well and
       settle them when memory frees (:mod:`workers.redisfull`); meanwhile take no new jobs
       and skip the restore sweeps (this worker's live jobs could not be renewed).

    Idempotent; returns True when the guards were installed by this call.
    """
    qos: Any = kombu_redis.QoS
    if getattr(qos, "_torchfleet_guarded", False):
        return False
    append, restore_unacked = qos.append, qos.restore_unacked
    restore_visible, can_consume = qos.restore_visible, qos.can_consume

    def guarded_append(self: Any, message: Any, delivery_tag: Any) -> Any:
        deadline = time.monotonic() + retry_s
        while True:
            try:
                return append(self, message, delivery_tag)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if time.monotonic() > deadline:
                    raise
                log.warning(
                    "delivery %s not yet recorded as unacked (%s); retrying", delivery_tag, e
                )
                time.sleep(APPEND_RETRY_PAUSE_S)  # Redis is away: wait for it, then record
            except redis.ResponseError as e:
                if not is_redis_full(e):
                    raise
                return redisfull.wait_out(
                    lambda: append(self, message, delivery_tag), f"delivery {delivery_tag}"
                )

    def guarded_restore_unacked(self: Any, client: Any = None) -> None:
        try:
            restore_unacked(self, client)
        except Exception as e:
            log.warning("unacked messages left for the restore sweeps (%r)", e)
            self._delivered.clear()

    def guarded(settle: Any) -> Any:
        def settle_or_leave(self: Any, delivery_tag: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return settle(self, delivery_tag, *args, **kwargs)
            except AttributeError as e:  # the channel's connection is gone (reconnected since)
                log.warning("delivery %s left for the restore sweeps (%r)", delivery_tag, e)
            except redis.ResponseError as e:
                if not is_redis_full(e):
                    raise
                redisfull.GUARD.pause(e)
                redisfull.GUARD.leave(lambda: settle(self, delivery_tag, *args, **kwargs))
                log.warning("delivery %s settled when Redis has memory again", delivery_tag)
            return virtual_qos.ack(self, delivery_tag)  # forget it here; Redis keeps it

        return settle_or_leave

    def sweep_unless_full(self: Any, *args: Any, **kwargs: Any) -> Any:
        if redisfull.paused():
            return None
        try:
            return restore_visible(self, *args, **kwargs)
        except redis.ResponseError as e:
            if not is_redis_full(e):
                raise
            redisfull.GUARD.pause(e)
            return None

    def consume_unless_full(self: Any) -> bool:
        return not redisfull.paused() and bool(can_consume(self))

    qos.append = guarded_append
    qos.restore_unacked = guarded_restore_unacked
    qos.ack = guarded(qos.ack)
    qos.reject = guarded(qos.reject)
    qos.restore_visible = sweep_unless_full
    qos.can_consume = consume_unless_full
    qos._torchfleet_guarded = True
    return True
