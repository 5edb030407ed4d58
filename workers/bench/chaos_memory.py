"""The full-Redis check of the chaos report: a private fleet whose redis-server reaches
``maxmemory`` (policy ``noeviction``) under load, then gets its memory back.

Redis at maxmemory refuses every write that may grow memory. Producers must be told so
(``RedisFull``, nothing queued), workers must stay up, stop taking jobs and say so in their
heartbeat, and every job accepted before must be answered once memory frees: lost = 0.
"""

from __future__ import annotations

import redis

FILLER_KEY = "chaos:filler"  # no torchfleet: prefix: it is the test's, not the fleet's
FILLER_CHUNK = 64 * 1024
FILLER_BYTES = 4 * 1024 * 1024


def fill_redis(admin: redis.Redis, filler_bytes: int = FILLER_BYTES) -> int:
    """Make Redis full and keep it full until :func:`free_redis`: write ``filler_bytes`` of
    filler, then set ``maxmemory`` half of it below what is used. Returns that maxmemory.

    Deleting the filler frees twice what is needed to get under the limit again, so the
    worker's own reads and pops cannot make Redis flap between full and not.
    """
    admin.config_set("maxmemory", 0)  # room for the filler first
    chunk = b"x" * FILLER_CHUNK
    for i in range(filler_bytes // FILLER_CHUNK):
        admin.hset(FILLER_KEY, str(i), chunk)
    admin.config_set("maxmemory-policy", "noeviction")
    limit = int(admin.info("memory")["used_memory"]) - filler_bytes // 2
    admin.config_set("maxmemory", limit)
    return limit


def free_redis(admin: redis.Redis, *, unlimited: bool = False) -> None:
    """Delete the filler (allowed at maxmemory); with ``unlimited`` also lift the limit."""
    admin.delete(FILLER_KEY)
    if unlimited:
        admin.config_set("maxmemory", 0)


def is_full(admin: redis.Redis) -> bool:
    """Whether Redis refuses writes for memory now (a tiny write is the only exact test)."""
    try:
        admin.set("chaos:probe", b"", px=1000)
    except redis.OutOfMemoryError:
        return True
    return False
