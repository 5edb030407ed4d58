"""The chaos fleet of :mod:`workers.bench.chaosfleet`, wired to the producers' Client."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from producers.client import Client
from workers.bench.chaosfleet import (
    ChaosFleet,
    chaos_input,
    counts,
    drain,
    drain_reconciled,
    register_chaos,
    submit_many,
    wait_status,
)
from workers.bench.chaosfleet import open_fleet as open_chaos_fleet

__all__ = [
    "ChaosFleet",
    "chaos_input",
    "counts",
    "drain",
    "drain_reconciled",
    "open_fleet",
    "register_chaos",
    "submit_many",
    "wait_status",
]


# Fault-injection tests take minutes: they run under `make chaos` (TORCHFLEET_CHAOS=1).
CHAOS_ONLY = pytest.mark.skipif(
    not os.environ.get("TORCHFLEET_CHAOS"), reason="fault injection: run with `make chaos`"
)
# Celery's AsyncResult unsubscribes in __del__, which fails while Redis is down (or full).
REDIS_DOWN_WARNINGS = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def open_fleet(root: Path, **options: Any) -> ChaosFleet:
    """A private redis-server and a producers Client on it (workers start on demand)."""
    return open_chaos_fleet(root, client=Client, **options)
