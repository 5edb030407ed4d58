"""Exactly-once effects on the registry, against a real redis-server and real concurrency.

Each race runs its writers in threads with their own connections, released together by a
barrier, so the read-then-write windows overlap; the assertions count what Redis holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from shared.embedded import EmbeddedRedis
from shared.errors import AliasMoved, JobCancelled, StaleDelivery, VariantExists
from shared.names import cancel_key
from shared.registry import JobRegistry, ModelRegistry, VariantRecord

WRITERS = 8


def record(n: int = 0, job_id: str | None = None) -> VariantRecord:
    return VariantRecord(digest=f"{n:064x}", arch="mlp", job_id=job_id)


def race(server: EmbeddedRedis, writers: list[Callable[[ModelRegistry], object]]) -> list[object]:
    """Run each writer in its own thread with its own connection, all starting together;
    what each returned or raised."""
    barrier = threading.Barrier(len(writers))

    def run(writer: Callable[[ModelRegistry], object]) -> object:
        registry = ModelRegistry(redis.Redis.from_url(server.url))
        barrier.wait()
        try:
            return writer(registry)
        except Exception as e:  # the race's outcome, inspected by the test
            return e
        finally:
            registry.client.close()

    with ThreadPoolExecutor(len(writers)) as pool:
        return list(pool.map(run, writers))


def test_concurrent_promotions_keep_every_move_in_the_history(
    registry: ModelRegistry, redis_server: EmbeddedRedis
) -> None:
    for version in range(1, WRITERS + 1):
        registry.register("m", registry.new_version("m"), "base", record(version))

    def promote(version: int) -> Callable[[ModelRegistry], object]:
        return lambda r: r.set_alias("m", "production", version)

    outcomes = race(redis_server, [promote(v) for v in range(1, WRITERS + 1)])
    assert not [o for o in outcomes if isinstance(o, Exception)]
    alias = registry.describe("m")["aliases"]["production"]
    assert len(alias["history"]) == WRITERS - 1
    visited = sorted([v for v, _ in alias["history"]] + [alias["version"]])
    assert visited == list(range(1, WRITERS + 1))  # every move once, none lost


def test_concurrent_rollbacks_and_promotions_never_lose_a_move(
    registry: ModelRegistry, redis_server: EmbeddedRedis
) -> None:
    for version in range(1, 4):
        registry.register("m", registry.new_version("m"), "base", record(version))
    registry.set_alias("m", "production", 1)
    registry.set_alias("m", "production", 2)
    writers: list[Callable[[ModelRegistry], object]] = [
        lambda r: r.set_alias("m", "production", 3),
        lambda r: r.rollback("m", "production"),
    ]
    race(redis_server, writers)
    alias = registry.describe("m")["aliases"]["production"]
    # promote-then-rollback ends on 2 with history [1]; rollback-then-promote on 3 with [1].
    # A lost update would end on 1 with [] or on 3 with [1, 2]
    assert (alias["version"], [v for v, _ in alias["history"]]) in [(2, [1]), (3, [1])]


def test_compare_and_set_refuses_an_alias_that_moved(registry: ModelRegistry) -> None:
    for version in (1, 2, 3):
        registry.register("m", registry.new_version("m"), "base", record(version))
    registry.set_alias("m", "production", 1, expected=None)
    with pytest.raises(AliasMoved, match="points to 1:base, not nothing"):
        registry.set_alias("m", "production", 2, expected=None)
    registry.set_alias("m", "production", 2, expected=(1, "base"))
    with pytest.raises(AliasMoved):
        registry.set_alias("m", "production", 3, expected=(1, "base"))
    assert registry.resolve("m").version == 2


def test_a_move_to_the_current_target_adds_no_history(registry: ModelRegistry) -> None:
    registry.register("m", registry.new_version("m"), "base", record(1))
    registry.set_alias("m", "production", 1)
    registry.set_alias("m", "production", 1)  # a redelivered promotion
    assert registry.describe("m")["aliases"]["production"]["history"] == []


def test_one_job_reserves_one_version_even_when_its_deliveries_race(
    registry: ModelRegistry, redis_server: EmbeddedRedis
) -> None:
    registry.new_version("m")  # someone else's version 1
    deliveries = {job: registry.for_job(job).token for job in ("job-a", "job-b")}

    def reserve(job_id: str) -> Callable[[ModelRegistry], object]:
        token = deliveries[job_id]
        return lambda r: JobRegistry(r.client, job_id=job_id, token=token).new_version("m")

    outcomes = race(redis_server, [reserve("job-a")] * 4 + [reserve("job-b")] * 4)
    a, b = set(outcomes[:4]), set(outcomes[4:])
    assert len(a) == 1 and len(b) == 1 and a != b
    assert a | b == {2, 3}
    assert registry.for_job("job-a").new_version("m") == a.pop()  # the next delivery finds it
    assert registry.new_version("m") == 4  # no number was burnt by the repeats


def test_two_jobs_cannot_take_the_same_variant_name(
    registry: ModelRegistry, redis_server: EmbeddedRedis
) -> None:
    registry.register("m", registry.new_version("m"), "base", record(1))

    def claim(n: int) -> Callable[[ModelRegistry], object]:
        return lambda r: r.for_job(f"compress-{n}").register("m", 1, "int8", record(n))

    outcomes = race(redis_server, [claim(n) for n in range(WRITERS)])
    refused = [o for o in outcomes if isinstance(o, VariantExists)]
    assert len(refused) == WRITERS - 1
    winner = registry.get("m", 1, "int8").job_id
    assert outcomes[int(str(winner).split("-")[1])] is None  # the one that was not refused
    with pytest.raises(VariantExists):  # an unowned write cannot overwrite either
        registry.register("m", 1, "int8", record(99))


def test_the_owner_may_write_its_variant_again(registry: ModelRegistry) -> None:
    registry.register("m", registry.new_version("m"), "base", record(1))
    registry.for_job("c1").register("m", 1, "int8", record(2))
    registry.for_job("c1").register("m", 1, "int8", record(3))  # its redelivery
    assert registry.get("m", 1, "int8").digest == record(3).digest


def test_a_stale_delivery_cannot_write(registry: ModelRegistry) -> None:
    stale = registry.for_job("train-1")  # delivery 1 ...
    version = stale.new_version("m")
    live = registry.for_job("train-1")  # ... overtaken by delivery 2
    live.register("m", version, "base", record(2))
    with pytest.raises(StaleDelivery, match="delivery 1 was overtaken by delivery 2"):
        stale.register("m", version, "base", record(1))
    with pytest.raises(StaleDelivery):
        stale.set_alias("m", "production", version)
    with pytest.raises(StaleDelivery):
        stale.new_version("m")
    assert registry.get("m", version).digest == record(2).digest
    assert "production" not in registry.describe("m")["aliases"]


def test_a_cancelled_job_never_registers(
    registry: ModelRegistry, redis_client: redis.Redis
) -> None:
    registry.register("m", registry.new_version("m"), "base", record(1))
    job = registry.for_job("train-2")
    version = job.new_version("m")
    redis_client.set(cancel_key("train-2"), "1")
    with pytest.raises(JobCancelled):
        job.register("m", version, "base", record(2))
    with pytest.raises(JobCancelled):
        job.set_alias("m", "production", 1)
    stage = registry.for_job("pipe-7-promote", cancel_id="pipe-7")  # a pipeline's stage
    redis_client.set(cancel_key("pipe-7"), "1")
    with pytest.raises(JobCancelled):
        stage.set_alias("m", "production", 1)
    assert registry.describe("m")["versions"].keys() == {"1"}
    assert registry.describe("m")["aliases"] == {}


def test_a_cancel_that_lands_inside_the_transaction_aborts_it(
    registry: ModelRegistry, redis_client: redis.Redis
) -> None:
    """The cancel flag is watched: set between the check and EXEC, the write retries and is
    then refused."""
    registry.register("m", registry.new_version("m"), "base", record(1))
    job = registry.for_job("train-3")
    original = job._guard
    calls = []

    def guard_then_cancel(conn: redis.Redis) -> None:
        original(conn)
        calls.append(1)
        if len(calls) == 1:  # another client cancels right after the first check
            redis_client.set(cancel_key("train-3"), "1")

    job._guard = guard_then_cancel  # type: ignore[method-assign]
    with pytest.raises(JobCancelled):
        job.set_alias("m", "production", 1)
    assert registry.describe("m")["aliases"] == {}
