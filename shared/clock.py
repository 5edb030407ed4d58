"""The Redis server's clock, the one every recovery decision reads.

When a job's worker was last seen alive is written by one process (the worker's visibility
keeper, kombu's delivery record) and judged by another (kombu's restore sweeps in every
worker, ``torchfleet status``). Each reading its own clock, two hosts whose clocks disagree by
more than the visibility timeout hand a live job to a second worker, or keep a dead one's
job for too long. So both sides read the Redis server's clock: :func:`server_time` asks it
(``TIME``); a long-lived process keeps a :class:`ServerClock`, its own clock plus the offset
it last measured, so that kombu can read it without a round trip.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Clock = Callable[[], float]


def server_time(client: Any) -> float:
    """The Redis server's clock, in Unix seconds."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


class ServerClock:
    """This process's view of the server's clock: ``local()`` plus the measured offset."""

    def __init__(self, local: Clock = time.time) -> None:
        self.local = local
        self.offset = 0.0
        self.synced = False

    def sync(self, client: Any) -> float:
        """Measure the offset (half the round trip is the error); returns it."""
        before = self.local()
        server = server_time(client)
        after = self.local()
        self.offset = server - (before + after) / 2
        self.synced = True
        return self.offset

    def now(self) -> float:
        return self.local() + self.offset


def skewed(skew_s: float) -> Clock:
    """This host's clock reading ``skew_s`` seconds off (``settings.clock_skew_s``: tests)."""
    if not skew_s:
        return time.time
    return lambda: time.time() + skew_s
