"""The online lane: Redis Streams requests served inside the Celery worker process.

:func:`start_lane` (from the worker-ready hook) starts one consumer for the worker's
device when its queues include inference and ``settings.lane`` is on; :func:`stop_lane`
(from the shutdown hook) stops it after its last batch is answered.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from workers.control import consumed_queues, serves_inference
from workers.lane.consumer import LaneConsumer
from workers.runtime import Runtime

log = logging.getLogger("torchfleet.lane")
_consumer: LaneConsumer | None = None
_lock = threading.Lock()

__all__ = ["LaneConsumer", "current", "start_lane", "stop_lane"]


def start_lane(rt: Runtime, worker: Any) -> LaneConsumer | None:
    """Start the device's lane consumer, unless the lane is off or this worker does not
    serve inference (``worker``: the Celery consumer the worker-ready signal names)."""
    global _consumer
    if not rt.settings.lane or not serves_inference(consumed_queues(worker)):
        return None
    with _lock:
        if _consumer is None:
            consumer = LaneConsumer(rt)
            consumer.start()
            _consumer = consumer
        return _consumer


def stop_lane(**_: Any) -> None:
    """Stop the consumer (its last batch answered, its writes sent)."""
    global _consumer
    with _lock:
        consumer, _consumer = _consumer, None
    if consumer is not None:
        consumer.stop()


def current() -> LaneConsumer | None:
    """The running consumer of this process, if any."""
    return _consumer
