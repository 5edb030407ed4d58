"""Delivery counts set by hand, so that a test can reach the dead-letter rule at once."""

from __future__ import annotations

import redis

from shared.deadletter import CRASHES
from shared.names import deliveries_key


def doom(client: redis.Redis, job_id: str, max_deliveries: int) -> None:
    """As if workers had died under the job often enough: its next admission parks it.

    Twice ``max_deliveries`` crashes is the cap for a job that never ran alone
    (``workers.admission.doomed``)."""
    client.hset(deliveries_key(job_id), CRASHES, 2 * max_deliveries)
