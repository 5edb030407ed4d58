"""The worker start path: check, build the runtime, connect the hooks, run Celery.

`torchfleet worker` calls :func:`prepare_worker` (errors here end the command with a clear
exit code instead of a Celery log line) and then :func:`run_worker`. This module imports
every task module, so the worker knows every task it may be sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery.apps.worker import Worker

from shared.errors import InvalidJob
from shared.settings import MIN_REMOTE_PASSWORD_CHARS, Settings
from workers import bench_tasks, chain, groups, tasks
from workers.app import app
from workers.pool import FleetPool
from workers.refusals import RefusingConsumer
from workers.runtime import Runtime, configure, effective_settings, start_runtime
from workers.signals import connect_signals

TASK_MODULES = (tasks, chain, groups, bench_tasks)  # imported for their task definitions


def check_security(settings: Settings) -> None:
    """Refuse a non-loopback Redis without a password, or with a short one, unless
    explicitly allowed."""
    if settings.is_loopback() or settings.allow_insecure_redis:
        return
    if not settings.has_password():
        raise InvalidJob(
            "refusing to start: Redis at a non-loopback address with no password. Set "
            "TORCHFLEET_REDIS_PASSWORD (or put it in the URL), or TORCHFLEET_ALLOW_INSECURE_REDIS=1"
        )
    password, setting = settings.password_source()
    if len(password) < MIN_REMOTE_PASSWORD_CHARS:
        raise InvalidJob(
            f"refusing to start: the Redis password in {setting} has {len(password)} "
            f"characters; a non-loopback Redis needs at least {MIN_REMOTE_PASSWORD_CHARS} "
            "(`openssl rand -hex 32` makes one), or TORCHFLEET_ALLOW_INSECURE_REDIS=1"
        )


def prepare_worker(hostname: str, **overrides: Any) -> Runtime:
    """Apply the command line's settings, check them, and build the runtime (device pinned,
    store opened, cache and batcher created) under ``hostname``."""
    configure(**overrides)
    check_security(effective_settings())
    return start_runtime(worker=hostname)


def banner_urls(text: str, settings: Settings) -> str:
    """Celery's banner without the ``:**@`` that kombu writes into every broker URL, even
    one with no password (it would read as if a password were set)."""
    return text if settings.has_password() else text.replace("://:**@", "://")


class FleetWorker(Worker):
    """Celery's worker application, with a banner that masks only passwords that exist."""

    def startup_info(self, artlines: bool = True) -> str:
        return banner_urls(super().startup_info(artlines), effective_settings())


def run_worker(argv: Sequence[str]) -> None:
    """Connect the lifecycle hooks and run the Celery worker with ``argv``."""
    connect_signals()
    app.conf.worker_consumer = RefusingConsumer  # refused messages get a FAILURE result
    app.__dict__["Worker"] = app.subclass_with_self(FleetWorker)  # a cached property's slot
    app.conf.worker_pool = FleetPool  # job threads a stuck job can be left behind in
    app.worker_main(list(argv))
