"""Real worker processes for integration tests: started through the CLI, awaited by ping.

The harness itself is package code (:mod:`workers.bench.harness`), shared with
`torchfleet bench` and the chaos report; this module adds the tests' waits.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from producers.client import Client
from shared.settings import Settings
from workers.bench.harness import Registered, WorkerProcess, register_module, register_seeded

__all__ = ["Registered", "WorkerProcess", "recorded", "register_cnn", "register_module", "until"]


def register_cnn(settings: Settings, seed: int = 0, name: str | None = None) -> Registered:
    """A seeded, untrained cifar_cnn stored and registered exactly as training would."""
    return register_seeded(settings, "cifar_cnn", name or f"cnn-{uuid.uuid4().hex[:8]}", seed=seed)


def until(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll Redis-backed state until ``check`` returns something truthy (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    interval = 0.01
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)  # polling interval of a reader of Redis state, as Client.wait does
        interval = min(0.2, interval * 1.5)
    raise TimeoutError(f"timed out waiting for {what}")


def recorded(client: Client, job_ids: Iterable[str], timeout: float = 30) -> list[dict[str, Any]]:
    """The stats stream once every job in ``job_ids`` has its record there (workers write
    records from a background thread, a moment after the answer)."""
    wanted = set(job_ids)

    def records() -> list[dict[str, Any]] | None:
        found = client.stats_records()
        return found if wanted <= {r.get("job_id") for r in found} else None

    return until(records, f"stats records of {sorted(wanted)}", timeout)
