"""A killed worker's jobs come back in seconds, and `status` says where each job is
(issue 13 item 6): the short default timeout, the keeper's pace, and the in-flight view."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from celery.worker import state
from kombu.transport import redis as kombu_redis
from rich.console import Console

from shared.clock import ServerClock, server_time, skewed
from shared.deadletter import HOLDER, delivery_counts, in_flight
from shared.names import KOMBU_UNACKED, KOMBU_UNACKED_INDEX, deliveries_key
from shared.settings import Settings
from workers.heartbeat import DEFAULT_INTERVAL_S
from workers.transport import (
    held_delivery_tags,
    held_job_ids,
    keeper_interval_s,
    use_server_clock,
)


def test_the_default_visibility_timeout_is_seconds_and_the_keeper_renews_well_within_it() -> None:
    timeout = Settings(_env_file=None).visibility_timeout_s  # type: ignore[call-arg]
    assert 10 <= timeout <= 60
    assert keeper_interval_s(timeout) <= timeout / 4
    assert timeout / 2 > DEFAULT_INTERVAL_S  # a heartbeat lists held jobs several times per lease


def unacked(client: redis.Redis, tag: str, job_id: str, renewed: float) -> None:
    message = {"headers": {"id": job_id, "task": "torchfleet.train"}, "body": "[]"}
    client.hset(KOMBU_UNACKED, tag, json.dumps([message, "train", "train"]))
    client.zadd(KOMBU_UNACKED_INDEX, {tag: renewed})


def test_in_flight_names_each_holder_and_when_a_dead_workers_job_comes_back(
    redis_client: redis.Redis,
) -> None:
    now = 1000.0
    unacked(redis_client, "t1", "alive-job", renewed=now - 2)
    unacked(redis_client, "t2", "dead-job", renewed=now - 12)
    unacked(redis_client, "t3", "fresh-job", renewed=now - 1)  # not in a heartbeat yet
    unacked(redis_client, "t4", "lost-job", renewed=now - 20)  # nobody claims it
    redis_client.hset(deliveries_key("dead-job"), HOLDER, "w-killed")
    live = {"w-alive": ["alive-job"]}

    jobs = {j["job_id"]: j for j in in_flight(redis_client, live, visibility_timeout_s=30, now=now)}

    assert (jobs["alive-job"]["state"], jobs["alive-job"]["worker"]) == ("running", "w-alive")
    assert jobs["alive-job"]["returns_in_s"] is None and jobs["alive-job"]["queue"] == "train"
    dead = jobs["dead-job"]
    assert (dead["state"], dead["worker"], dead["returns_in_s"]) == ("worker_gone", "w-killed", 18)
    assert dead["task"] == "torchfleet.train" and dead["renewed_s_ago"] == 12
    assert jobs["fresh-job"]["state"] == "running" and jobs["fresh-job"]["worker"] is None
    assert (jobs["lost-job"]["state"], jobs["lost-job"]["returns_in_s"]) == ("worker_gone", 10)


def test_the_holder_field_does_not_disturb_the_delivery_counts(redis_client: redis.Redis) -> None:
    redis_client.hset(deliveries_key("j"), mapping={"delivered": 2, "executed": 1, HOLDER: "w"})
    assert delivery_counts(redis_client, "j") == {"delivered": 2, "executed": 1}


class Message:
    def __init__(self, tag: str) -> None:
        self.delivery_tag = tag


class Request:
    def __init__(self, job_id: str, tag: str) -> None:
        self.id = job_id
        self.message: Any = Message(tag)


def test_a_retry_waiting_for_its_countdown_is_kept_visible() -> None:
    """A backoff (up to 60 s) outlasts a 30 s timeout: the keeper must renew it too."""
    waiting = Request("retrying-job", "tag-9")
    state.scheduled_requests.add(waiting)
    try:
        assert "tag-9" in held_delivery_tags() and "retrying-job" in held_job_ids()
    finally:
        state.scheduled_requests.discard(waiting)


def test_status_prints_the_gone_workers_job_and_when_it_comes_back(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from producers.cli import status as status_cli

    monkeypatch.setattr(status_cli, "console", Console(width=200, force_terminal=False))
    job = {"job_id": "job-7", "task": "torchfleet.train", "queue": "train", "worker": "w-dead",
           "state": "worker_gone", "renewed_s_ago": 12.0, "returns_in_s": 18.0}  # fmt: skip
    report = {"time": 0.0, "workers": [], "queues": {}, "deadletter": 0, "in_flight": [job],
              "restore_interval_s": 10}  # fmt: skip

    status_cli.render(report)

    out = capsys.readouterr().out
    assert "job-7" in out and "w-dead" in out and "worker gone: back in ~18s" in out


# ----------------------------------------------------------------- the server's clock
def test_a_server_clock_cancels_this_hosts_skew(redis_client: redis.Redis) -> None:
    clock = ServerClock(local=skewed(-60.0))
    assert abs(clock.now() - server_time(redis_client)) > 59  # not measured yet
    clock.sync(redis_client)
    assert abs(clock.now() - server_time(redis_client)) < 1


def test_kombu_and_the_keeper_read_the_servers_clock(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kombu_redis, "time", kombu_redis.time)  # restored after the test
    clock = use_server_clock(redis_client, skew_s=3600.0)
    assert abs(kombu_redis.time() - server_time(redis_client)) < 1
    assert clock.synced


def test_in_flight_judges_ages_on_the_servers_clock(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    unacked(redis_client, "t1", "fresh-job", renewed=server_time(redis_client) - 1)
    monkeypatch.setattr(time, "time", lambda: 10_000_000_000.0)  # the caller's clock is off
    [job] = in_flight(redis_client, {}, visibility_timeout_s=30)
    assert job["state"] == "running" and job["renewed_s_ago"] < 5
