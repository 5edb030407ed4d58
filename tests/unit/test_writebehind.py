"""Write-behind: stats records off the job's path, batched, kept while Redis is away."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.embedded import free_port
from shared.names import KEY_STATS
from shared.stats import append_record, infer_fields, stats_entry
from tests.fleet import until
from workers.writebehind import Write, WriteBehind


def entry(job_id: str) -> dict[str, str]:
    return stats_entry(kind="infer", job_id=job_id, outcome="success", wall_ms=1.5, error=None)


def record(job_id: str) -> Write:
    return append_record(entry(job_id), maxlen=1000)


def stream_ids(client: redis.Redis) -> list[str]:
    return [fields[b"job_id"].decode() for _, fields in client.xrange(KEY_STATS)]


def unreachable() -> redis.Redis:
    return redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


def test_an_entry_is_flat_text_without_empty_fields() -> None:
    record = entry("j1")
    assert record["wall_ms"] == "1.5" and "error" not in record
    assert all(isinstance(v, str) for v in record.values())


def test_the_thread_writes_records_in_order_without_being_asked(
    redis_client: redis.Redis,
) -> None:
    writer = WriteBehind(redis_client)
    for i in range(50):
        writer.add(record(f"j{i}"))
    written = until(lambda: len(stream_ids(redis_client)) == 50 and stream_ids(redis_client), "50")
    assert written == [f"j{i}" for i in range(50)]
    writer.close()


def test_close_writes_what_is_pending(redis_client: redis.Redis) -> None:
    writer = WriteBehind(redis_client, background=False)  # only close writes
    writer.add(record("a"))
    writer.add(record("b"))
    assert stream_ids(redis_client) == []
    writer.close()
    assert stream_ids(redis_client) == ["a", "b"]


def test_records_wait_for_redis_and_the_oldest_go_past_the_bound(
    redis_client: redis.Redis,
) -> None:
    writer = WriteBehind(unreachable(), max_pending=3, background=False)
    for i in range(5):
        writer.add(record(f"j{i}"))
    assert writer.flush() == 0 and writer.dropped == 2
    writer.client = redis_client  # Redis is back
    assert writer.flush() == 3
    assert stream_ids(redis_client) == ["j2", "j3", "j4"]


def test_other_writes_ride_in_the_same_pipeline(redis_client: redis.Redis) -> None:
    redis_client.set("torchfleet:input:j1", b"bytes")
    writer = WriteBehind(redis_client, background=False)
    writer.add(record("j1"))
    writer.add(lambda pipe: pipe.delete("torchfleet:input:j1"))
    assert writer.flush() == 2
    assert stream_ids(redis_client) == ["j1"] and not redis_client.exists("torchfleet:input:j1")


def test_infer_fields_flatten_the_latency_breakdown() -> None:
    result = {
        "model": "m", "variant": "base", "device": "cpu", "worker": "w", "batch_size": 4,
        "latency": {"compute_ms": 1.0, "queued_ms": 2.0}, "predictions": [[], []],
    }  # fmt: skip
    fields = infer_fields(result)
    assert fields["compute_ms"] == 1.0 and fields["inputs"] == 2 and fields["batch_size"] == 4
