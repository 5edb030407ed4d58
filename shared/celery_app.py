"""The Celery app: JSON only, late acks, requeue on worker loss, results with a TTL.

Producers and workers build the same app from the same settings; only workers import the
task implementations (``workers.tasks``), so a producer never imports torch.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from shared.connection import redis_url, ssl_options
from shared.names import (
    ALL_QUEUES,
    APP_NAME,
    PRIORITY_SEP,
    PRIORITY_STEPS,
    QUEUE_BENCH,
    TASK_QUEUES,
    every_queue,
    transport_priority,
)
from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None, *, backend_class: str | None = None) -> Celery:
    """A Celery app configured from settings with the fleet's reliability defaults.

    ``backend_class`` (``module:Class``): a subclass of Celery's Redis result backend to use
    instead of it (the workers' own, ``workers.resultstore``)."""
    settings = settings or get_settings()
    url = redis_url(settings)
    backend = f"{backend_class}+{url}" if backend_class else url
    app = Celery(APP_NAME, broker=url, backend=backend, set_as_current=False)
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_connect_timeout": 5,
        "retry_on_timeout": True,
    }
    # Priority lanes: one Redis list per step; kombu pops lower steps first.
    broker_transport = {
        **transport,
        "priority_steps": list(PRIORITY_STEPS),
        "sep": PRIORITY_SEP,
        "queue_order_strategy": "round_robin",
        # The body is JSON text already: kombu's default base64 layer would add a third to
        # every message and an encode and a decode on each side (messages say which they use).
        "body_encoding": "utf-8",
        # Jobs of a dead worker come back after the visibility timeout; sweep for them often.
        "unacked_restore_interval": settings.restore_interval_s,
        "unacked_restore_throttle": 1,
        # A worker killed inside a sweep must not block every other sweep for kombu's 5 min.
        "unacked_mutex_expire": 60,
        "health_check_interval": 10,
        # Without it a read on a connection that Redis dropped (a restart) blocks the worker's
        # event loop for good; BRPOP itself waits 1 s, well inside this. A timeout is a lost
        # connection here (kombu reconnects), not something to retry on the same socket.
        "socket_timeout": 5,
        "retry_on_timeout": False,
    }
    # Every queue, plus the device-only ones (infer.cpu, infer.cuda...) that device routing uses.
    queue_names = [*every_queue(), QUEUE_BENCH]
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        # The result holds what the job returned, not a copy of its (possibly large) inputs.
        result_extended=False,
        result_expires=settings.result_ttl_s,
        result_failure_expires=settings.failure_ttl_s,
        task_queues=[Queue(name, Exchange(name), routing_key=name) for name in queue_names],
        task_default_queue=ALL_QUEUES[-1],
        task_default_priority=transport_priority(0),
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        broker_transport_options=broker_transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        # A Redis restart must not lose a result: the backend retries its writes and reads.
        result_backend_always_retry=True,
        result_backend_max_retries=30,
        result_backend_max_sleep_between_retries_ms=2000,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Events cost Redis round trips on every job; Flower switches them on when it runs.
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
    )
    tls = ssl_options(settings)
    if tls is not None:
        app.conf.broker_use_ssl = tls
        app.conf.redis_backend_use_ssl = tls
    return app
