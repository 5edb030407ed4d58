"""Outages are not failures, and a crash is held only against the job that caused it
(issue 14 item 4): the crash attribution of the admission, the gate that runs a suspect
alone, and a job riding through a Redis outage (a private redis-server stopped and started).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.deadletter import crash_count, delivery_counts, list_dead_letters
from shared.embedded import EmbeddedRedis
from shared.errors import DeadLettered
from shared.settings import Settings
from tests.fleet import until
from workers.admission import admit, doomed, mark_running, settle
from workers.delivery import delivery
from workers.gate import Gate
from workers.outage import through_outages, wait_for_redis
from workers.writebehind import WriteBehind

WAIT_S = 10


def request(job_id: str) -> SimpleNamespace:
    return SimpleNamespace(id=job_id, task="torchfleet.infer", args=[{}], retries=0)


def died_under(client: redis.Redis, settings: Settings, job_id: str, *, alone: bool) -> None:
    """One delivery of ``job_id`` whose worker dies while it runs (never settled)."""
    admission = admit(client, settings, request(job_id), "w", {})
    if not admission.marked:
        mark_running(client, job_id, admission.token, alone=alone, ttl_s=60)


# ----------------------------------------------------------------- crash attribution
def test_only_a_delivery_that_started_and_never_ended_is_a_crash(
    redis_client: redis.Redis,
) -> None:
    settings = Settings()
    first = admit(redis_client, settings, request("j"), "w", {})
    settle(redis_client, "j", first.token)  # answered, failed, retried or rejected
    waiting = admit(redis_client, settings, request("j"), "w", {}, mark=False)
    assert not waiting.suspect  # prefetched, or queued behind a suspect: never started
    started = admit(redis_client, settings, request("j"), "w", {})
    assert not started.suspect and crash_count(redis_client, "j") == 0
    again = admit(redis_client, settings, request("j"), "w", {})  # `started`'s worker died
    assert again.suspect and again.crashes == 1 and not again.marked
    assert delivery_counts(redis_client, "j") == {"delivered": 4, "executed": 4}


def test_a_late_settle_of_an_overtaken_delivery_leaves_the_new_token(
    redis_client: redis.Redis,
) -> None:
    settings = Settings()
    frozen = admit(redis_client, settings, request("j"), "w1", {})
    taken_over = admit(redis_client, settings, request("j"), "w2", {})
    mark_running(redis_client, "j", taken_over.token, alone=True, ttl_s=60)
    assert settle(redis_client, "j", frozen.token) == 0  # the frozen worker wakes up, ends
    assert settle(redis_client, "j", taken_over.token) == 1


def test_a_poison_job_is_dead_lettered_and_the_jobs_beside_it_are_not(
    redis_client: redis.Redis,
) -> None:
    settings = Settings(max_deliveries=3)
    died_under(redis_client, settings, "poison", alone=False)  # killed with "innocent" beside
    died_under(redis_client, settings, "innocent", alone=False)
    for _ in range(2):  # the poison job, alone, kills two more workers
        died_under(redis_client, settings, "poison", alone=True)
    with pytest.raises(DeadLettered, match="delivered 3 times"):
        admit(redis_client, settings, request("poison"), "w", {})
    innocent = admit(redis_client, settings, request("innocent"), "w", {})
    assert innocent.suspect and innocent.crashes == 1  # it runs alone once, and finishes
    assert [e.job_id for e in list_dead_letters(redis_client)] == ["poison"]


@pytest.mark.parametrize(
    ("crashes", "alone", "verdict"),
    [(2, True, False), (3, True, True), (3, False, False), (5, False, False), (6, False, True)],
)
def test_the_dead_letter_verdict(crashes: int, alone: bool, verdict: bool) -> None:
    assert doomed(crashes, alone, max_deliveries=3) is verdict


def test_a_redelivered_finished_job_is_answered_without_a_token(
    redis_client: redis.Redis,
) -> None:
    redis_client.set("celery-task-meta-j", '{"status": "SUCCESS", "result": {"a": 1}}')
    done = admit(redis_client, Settings(), request("j"), "w", {}, result_key="celery-task-meta-j")
    assert done.stored == {"a": 1} and not done.marked
    assert not redis_client.exists("torchfleet:deliveries:j")


# ----------------------------------------------------------------- the gate
def run_in_thread(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_suspect_waits_for_the_running_jobs_and_runs_alone() -> None:
    gate = Gate()
    running, suspect_in, late_in = threading.Event(), threading.Event(), threading.Event()
    finish, suspect_done = threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def ordinary() -> None:
        with gate.hold(alone=False, wait_s=WAIT_S):
            running.set()
            finish.wait(WAIT_S)

    def suspect() -> None:
        with gate.hold(alone=True, wait_s=WAIT_S) as alone:
            seen["alone"] = alone
            suspect_in.set()
            suspect_done.wait(WAIT_S)

    def late() -> None:
        with gate.hold(alone=False, wait_s=WAIT_S):
            late_in.set()

    run_in_thread(ordinary)
    assert running.wait(WAIT_S)
    run_in_thread(suspect)
    until(gate.contended, "the suspect to wait")
    run_in_thread(late)  # queues behind the waiting suspect
    assert not suspect_in.is_set() and not late_in.is_set()
    finish.set()
    assert suspect_in.wait(WAIT_S) and seen["alone"]
    assert not late_in.is_set()
    suspect_done.set()
    assert late_in.wait(WAIT_S)


def test_a_suspect_that_finds_no_quiet_moment_runs_beside_the_others() -> None:
    gate = Gate()
    with gate.hold(alone=False, wait_s=0), gate.hold(alone=True, wait_s=0.05) as alone:
        assert alone is False  # it waited, in vain, and runs shared
        assert not gate.contended()


# ----------------------------------------------------------------- riding through an outage
@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def no_retry(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url, retry=Retry(NoBackoff(), 0))


def runtime(server: EmbeddedRedis, outage_wait_s: float = WAIT_S) -> Any:
    return SimpleNamespace(client=no_retry(server), settings=Settings(outage_wait_s=outage_wait_s))


def test_a_job_that_loses_redis_runs_on_as_soon_as_it_is_back(
    private_redis: EmbeddedRedis,
) -> None:
    rt, client = runtime(private_redis), no_retry(private_redis)
    calls: list[int] = []
    met_outage = threading.Event()
    result: dict[str, Any] = {}

    def job_step() -> Any:
        calls.append(1)
        try:
            return client.incr("steps")
        except redis.ConnectionError:
            met_outage.set()
            raise

    private_redis.stop()
    thread = run_in_thread(lambda: result.update(value=through_outages(rt, "j", job_step)))
    assert met_outage.wait(WAIT_S)
    private_redis.start()
    thread.join(WAIT_S)
    assert result == {"value": 1} and len(calls) == 2


def test_a_redis_that_stays_away_gives_the_delivery_back(private_redis: EmbeddedRedis) -> None:
    rt, client = runtime(private_redis, outage_wait_s=0.3), no_retry(private_redis)
    private_redis.stop()
    with pytest.raises(redis.ConnectionError):
        through_outages(rt, "j", lambda: client.incr("steps"))


def test_other_errors_are_not_waited_out(private_redis: EmbeddedRedis) -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("the job's own fault")

    with pytest.raises(ValueError):
        through_outages(runtime(private_redis), "j", broken)
    assert calls == [1]


def test_waiting_for_redis_stops_when_the_worker_stops(private_redis: EmbeddedRedis) -> None:
    client = no_retry(private_redis)
    assert wait_for_redis(client, WAIT_S, stopping=lambda: True)
    private_redis.stop()
    assert not wait_for_redis(client, WAIT_S, stopping=lambda: True)


# ----------------------------------------------------------------- one delivery, end to end
class Task:
    """What :func:`delivery` uses of a fleet task."""

    def __init__(self, client: redis.Redis, settings: Settings, job_id: str) -> None:
        self.client, self.settings = client, settings
        self.request = request(job_id)

    def admit(self, rt: Any, payload: Any, *, cancel_id: str | None = None, **options: Any) -> Any:
        return admit(self.client, self.settings, self.request, "w", payload, **options)


def test_a_delivery_runs_a_suspect_alone_and_settles_at_its_end(
    redis_client: redis.Redis,
) -> None:
    settings = Settings()
    behind = WriteBehind(redis_client, background=False)
    rt: Any = SimpleNamespace(client=redis_client, settings=settings, gate=Gate(), behind=behind)
    key = "torchfleet:deliveries:j"
    with delivery(Task(redis_client, settings, "j"), rt, {}) as first:
        assert redis_client.hget(key, "running") == first.token.encode()
        assert not rt.gate.contended()
    # its worker died: the token stays; the next delivery is a suspect and runs alone
    with delivery(Task(redis_client, settings, "j"), rt, {}) as again:
        assert again.suspect and rt.gate.contended()
        assert redis_client.hget(key, "solo") == redis_client.hget(key, "running")
    assert redis_client.hget(key, "running") is not None  # settled by the write-behind thread
    behind.flush()
    assert redis_client.hget(key, "running") is None
    assert crash_count(redis_client, "j") == 1
