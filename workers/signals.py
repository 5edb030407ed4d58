"""Worker start-up and shutdown: security check, device pinning, cache warm-up, lease release."""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery.signals import worker_init, worker_ready, worker_shutdown

from shared.errors import InvalidJob
from shared.settings import Settings
from workers.lane import start_lane, stop_lane
from workers.runtime import effective_settings, start_runtime, stop_runtime
from workers.serving import prepare_serving

log = logging.getLogger("torchfleet.worker")


def check_security(settings: Settings) -> None:
    """Refuse a non-loopback Redis without a password unless explicitly allowed."""
    if settings.is_loopback() or settings.has_password() or settings.allow_insecure_redis:
        return
    raise InvalidJob(
        "refusing to start: Redis at a non-loopback address with no password. Set "
        "TORCHFLEET_REDIS_PASSWORD (or put it in the URL), or TORCHFLEET_ALLOW_INSECURE_REDIS=1"
    )


@worker_init.connect
def _on_init(**_: Any) -> None:
    check_security(effective_settings())


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    rt = start_runtime(worker=getattr(sender, "hostname", None))
    prepare_serving(rt)  # cache options, metrics endpoint and cache counters, preload list
    start_lane(rt, sender)  # the online lane's consumer, if this worker serves inference
    # Everything loaded so far (torch, Celery, the preloaded models) lives as long as the
    # process: out of the collector's sight, its full collections stop walking it mid-job.
    gc.collect()
    gc.freeze()
    log.info("torchfleet worker %s ready on %s", rt.worker, rt.device)


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    stop_lane()  # its last batch answered before the runtime's writes are flushed
    stop_runtime()
