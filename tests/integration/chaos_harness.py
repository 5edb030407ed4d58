"""The chaos fleet of :mod:`workers.bench.chaosfleet`, wired to the producers' Client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def open_fleet(root: Path, **options: Any) -> ChaosFleet:
    """A private redis-server and a producers Client on it (workers start on demand)."""
    return open_chaos_fleet(root, client=Client, **options)
