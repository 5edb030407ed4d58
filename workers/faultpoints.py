"""Fault injection for tests at named points of a job, switched on only through settings.

``settings.fault_stop_at`` (``TORCHFLEET_FAULT_STOP_AT``) names a point where the worker stops
itself with SIGSTOP, every thread at once, so that a test can look at what the job left behind
and then kill the worker exactly there (or let it go on with SIGCONT). Unset, as in every
production worker, a point costs one comparison.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Final

from shared.settings import Settings

log = logging.getLogger(__name__)

REGISTERED: Final = "registered"  # a training job's registry writes done, its answer not stored


def stop_point(point: str, settings: Settings) -> None:
    """Stop this process here when ``settings.fault_stop_at`` names ``point``."""
    if settings.fault_stop_at != point:
        return
    log.warning("fault injection: the worker stops itself at %r (TORCHFLEET_FAULT_STOP_AT)", point)
    os.kill(os.getpid(), signal.SIGSTOP)
