"""Every worker lifecycle hook, in the order it runs, connected when the worker starts.

:func:`connect_signals` is called by the worker start path (:mod:`workers.main`), never on
import. Celery calls the receivers of a signal in the order they were connected:

* ``worker_init``: guard kombu's Redis transport and set it on the Redis server's clock,
  arm the pause for a full Redis (its probe renews this worker's deliveries before it takes
  jobs again), import the plugins from settings;
* ``worker_ready``: also consume the device's own queues, start the heartbeat, the
  visibility keeper and the job watchdog (time limits, cancel of a hung job), prepare
  serving (cache options, metrics, preload list), start the online lane's consumer and the
  checkpoint sweeper, watch the GPU lease (a worker that loses it steps down), then freeze
  what is loaded out of the garbage collector's sight;
* ``worker_shutdown``: stop the lane's consumer (its last batch answered), the keeper, the
  memory probe, the watchdog, the sweeper and the heartbeat, flush the pending writes and
  release the GPU lease, and exit with the code a device fault asked for.
"""

from __future__ import annotations

import gc
import importlib
import logging
from collections.abc import Iterable
from functools import partial
from typing import Any

from celery.signals import worker_init, worker_ready, worker_shutdown
from celery.worker.control import control_command

from shared.clock import server_time
from shared.connection import redis_client
from shared.names import CONTROL_WARM
from workers import redisfull, transport
from workers.control import add_device_queues, consumed_queues, torchfleet_warm
from workers.faults import exit_with_requested_code
from workers.heartbeat import poke_heartbeat, start_heartbeat, stop_heartbeat
from workers.jobs.serving import prepare_serving
from workers.lane import start_lane, stop_lane
from workers.lane.control import register_lane_command
from workers.limits import start_watchdog, stop_watchdog
from workers.runtime import get_runtime, stop_runtime
from workers.sweeper import start_sweeper, stop_sweeper

log = logging.getLogger("torchfleet.worker")


def connect_signals() -> None:
    """Connect the worker's lifecycle hooks and register its control commands (idempotent)."""
    worker_init.connect(on_init, dispatch_uid="torchfleet.init")
    worker_ready.connect(on_ready, dispatch_uid="torchfleet.ready")
    worker_shutdown.connect(on_shutdown, dispatch_uid="torchfleet.shutdown")
    control_command(args=[("digests", list)], signature="<digest> [digest ...]", name=CONTROL_WARM)(
        torchfleet_warm
    )
    register_lane_command()


def on_init(**_: Any) -> None:
    """Before the consumer starts: the transport guards, the server's clock, the memory
    pause and the plugins."""
    transport.guard_transport()
    rt = get_runtime()
    transport.use_server_clock(rt.client, rt.settings.clock_skew_s)
    redisfull.GUARD.install(
        rt.client,
        on_resume=[partial(renew_held, rt.client)],
        on_change=[poke_heartbeat],
    )
    load_plugins(rt.settings.plugins)


def renew_held(client: Any) -> None:
    """Renew this worker's deliveries at the server's time (before a paused worker takes
    jobs again)."""
    transport.renew_visibility(client, transport.held_delivery_tags(), server_time(client))


def on_ready(sender: Any = None, **_: Any) -> None:
    """The consumer is up: device queues, heartbeat, keeper, serving, the lane, gc freeze."""
    rt = get_runtime()
    add_device_queues(sender, rt)
    start_heartbeat(rt, queues=lambda: consumed_queues(sender))
    transport.start_keeper(redis_client(rt.settings), rt.settings.visibility_timeout_s)
    start_watchdog(rt.client, rt.settings)
    prepare_serving(rt)  # cache options, metrics endpoint and cache counters, preload list
    start_lane(rt, sender)  # the online lane's consumer, if this worker serves inference
    start_sweeper(rt)  # checkpoints nobody will resume: now, then periodically
    if rt.lease is not None:
        rt.lease.watch(partial(step_down, sender))
    # Everything loaded so far (torch, Celery, the preloaded models) lives as long as the
    # process: out of the collector's sight, its full collections stop walking it mid-job.
    gc.collect()
    gc.freeze()
    log.info("torchfleet worker %s ready on %s", rt.worker, rt.device)


def step_down(consumer: Any, reason: str) -> None:
    """The GPU lease is lost (another worker has the GPU): take no more jobs from any queue
    nor the lane; the heartbeat says why (``stepped_down``). Running jobs finish."""
    for queue in consumed_queues(consumer):
        consumer.call_soon(consumer.cancel_task_queue, queue)  # on the consumer's own thread
    stop_lane()
    log.error("worker stepped down (%s); restart it to claim a free GPU", reason)
    poke_heartbeat()


def on_shutdown(**_: Any) -> None:
    """Stop the threads, do the pending writes, release the lease, exit with the asked code."""
    stop_lane()  # its last batch answered before the runtime's writes are flushed
    transport.stop_keeper()
    redisfull.GUARD.stop()
    stop_watchdog()
    stop_sweeper()
    stop_heartbeat()
    stop_runtime()
    exit_with_requested_code()


def load_plugins(modules: Iterable[str]) -> list[str]:
    """Import modules named in ``settings.plugins`` (extra architectures or datasets)."""
    loaded = []
    for name in modules:
        importlib.import_module(name)
        loaded.append(name)
    return loaded
