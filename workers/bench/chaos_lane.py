"""The online lane's part of the chaos report: lane requests under unique ids from several
producer threads to a private fleet, while faults hit it in a seeded random order; then
every request is accounted for: answered, dead-lettered, or lost (must be 0).

Faults, each injected while the load is sending and requests are in flight:

* ``kill_mid_batch``: with every consumer paused, a request that holds the forward
  (chaos_net ``MODE_HOLD``) and a third of a phase of load queue up; one consumer resumes
  and reads them as one batch; once its forward holds, that worker is SIGKILLed with the
  whole batch in hand;
* ``redis_restart``: Redis SIGKILLed while such a batch is held and the producers send,
  started again on its AOF once every producer has been refused; then the batch's answers
  go out to the restarted Redis;
* ``redis_pause``: ``CLIENT PAUSE`` of every client for ``PAUSE_MS``;
* ``poison``: a request whose input SIGKILLs every worker that runs it (``MODE_KILL``),
  read in one batch with a third of a phase of load: it must end dead-lettered after
  ``lane_max_deliveries``, its batch neighbours answered.

Recovery of a fault: from the fault until every request sent so far has its answer.
The fleet: its own redis-server (AOF, ``appendfsync always``), two workers kept alive by
the queue check's supervisor (a killed one is replaced), lane claim and heartbeat times of
a fraction of a second so that a dead worker's requests come back quickly.
"""

from __future__ import annotations

import functools
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from kombu.exceptions import KombuError

from shared.deadletter import list_dead_letters
from shared.names import (
    CONTROL_LANE,
    LANE_GROUP,
    TASK_LANE,
    lane_alive_key,
    lane_streams,
)
from workers.bench.chaos_lane_load import (
    DEAD_LETTERED,
    Ledger,
    Load,
    duplicates_executed,
    left_in_lane,
)
from workers.bench.chaos_models import MODE_HOLD, MODE_KILL
from workers.bench.chaos_queue import PAUSE_MS, Supervisor
from workers.bench.chaosfleet import ChaosFleet, ClientFactory, open_fleet, register_chaos
from workers.bench.harness import WorkerProcess

LANE_FAULTS = ("kill_mid_batch", "redis_restart", "redis_pause", "poison")
LANE_FIGURES = (
    "requests_sent",
    "requests_refused",
    "answered",
    "dead_lettered",
    "poison_dead_lettered",
    "innocents_dead_lettered",
    "error_replies",
    "lost",
    "duplicate_replies",
    "duplicates_executed",
    "resends",
    "left_in_lane",
    "workers_started",
    "elapsed_s",
)
WORKERS = 2
MAX_DELIVERIES = 3
FAST_RECOVERY = {
    "TORCHFLEET_LANE_CLAIM_IDLE_MS": "1000",
    "TORCHFLEET_LANE_CLAIM_INTERVAL_S": "0.25",
    "TORCHFLEET_LANE_HEARTBEAT_S": "0.25",
    "TORCHFLEET_LANE_BLOCK_MS": "100",
    "TORCHFLEET_LANE_MAX_DELIVERIES": str(MAX_DELIVERIES),
}
SEND_GAP_S = 0.025  # per producer thread: a phase of the load lasts about a second
SETTLE_S = 120.0
READY_S = 120.0
CONTROL_WAIT_S = 2.0


class LaneCheck:
    """Sends the load, injects the faults, and keeps the books."""

    def __init__(
        self,
        fleet: ChaosFleet,
        supervisor: Supervisor,
        load: Load,
        requests: int,
        seed: int,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.fleet, self.supervisor, self.load = fleet, supervisor, load
        self.settle_s = settle_s
        self.ledger = load.ledger
        self.rng = random.Random(seed)
        self.per_phase = max(3, requests // (len(LANE_FAULTS) + 1))
        self.special = 0

    # -- load and waits
    def start_phase(self) -> int:
        """Queue a phase of load; returns once a third of it is sent (the fault's moment)."""
        sent = self.load.send(self.per_phase)
        self.ledger.wait_sent(sent - self.per_phase * 2 // 3 + self.special)
        return sent

    def send_special(self, mode: float, kind: str) -> str:
        request_id = f"lane-{kind}-{self.special}"
        self.special += 1
        self.ledger.send(self.fleet.client, self.load.model, request_id, mode, kind)
        return request_id

    def in_flight(self) -> int:
        return self.load.in_flight() + int(self.fleet.client.lane.in_flight())

    def settled(self, started: float, in_flight: int, **extra: Any) -> dict[str, Any]:
        """The fault's figures once every request sent so far has its answer."""
        self.load.join()
        still_open = self.ledger.settle(self.settle_s)
        took = None if still_open else round(time.monotonic() - started, 3)
        return {"recovery_s": took, "in_flight_at_fault": in_flight, "open": still_open, **extra}

    def pending_of(self, consumer: str) -> int:
        """Requests read by ``consumer`` and not acknowledged (its batch in hand)."""
        total = 0
        for stream in lane_streams("cpu"):
            summary = self.fleet.client.redis.xpending(stream, LANE_GROUP)
            for owner in summary.get("consumers") or []:
                name = owner["name"]
                if (name.decode() if isinstance(name, bytes) else name) == consumer:
                    total += int(owner["pending"])
        return total

    # -- batches in hand
    def control(self, workers: list[WorkerProcess], action: str) -> None:
        """Pause or resume the lane consumers of ``workers`` (asked again until each answers:
        a worker reconnecting to a restarted Redis misses broadcasts for a moment)."""
        waiting = {w.name for w in workers}
        deadline = time.monotonic() + READY_S
        while True:
            # A worker that died (a poison it had just resumed to read) needs no answer.
            waiting -= {w.name for w in workers if not w.alive()}
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {CONTROL_LANE} {action} answer from {sorted(waiting)}")
            try:
                replies = self.fleet.client.app.control.broadcast(
                    CONTROL_LANE,
                    arguments={"action": action},
                    destination=sorted(waiting),
                    reply=True,
                    limit=len(waiting),
                    timeout=CONTROL_WAIT_S,
                )
            except (redis.RedisError, KombuError, OSError):
                continue  # the client's broker connection died with Redis: a new one next
            for reply in replies:
                for name, answer in reply.items():
                    if "error" not in answer and "skipped" not in answer:
                        waiting.discard(name)

    def batch_behind(
        self, mode: float, kind: str, readers: int
    ) -> tuple[list[WorkerProcess], float]:
        """One ``kind`` request and a third of a phase of load queued behind it while every
        consumer is paused; then ``readers`` of the workers resume (the first reads the
        special request with up to a batch of load in the same read). The workers, and
        when they were told to resume."""
        workers = wait_lane_ready(self.fleet, self.supervisor)
        self.control(workers, "pause")
        self.send_special(mode, kind)
        self.start_phase()
        resumed = time.monotonic()
        self.control(workers[:readers], "resume")
        return workers, resumed

    def held_batch(self) -> tuple[WorkerProcess, int]:
        """A worker holding a batch mid-forward (chaos_net ``MODE_HOLD``) and its size."""
        self.fleet.hold()
        workers, _ = self.batch_behind(MODE_HOLD, "hold", readers=1)
        [mark] = self.fleet.wait_holding(1)
        self.control(workers[1:], "resume")
        holder = self.supervisor.holder(mark)
        return holder, self.pending_of(holder.name)

    # -- faults
    def kill_mid_batch(self) -> dict[str, Any]:
        victim, in_hand = self.held_batch()
        in_flight, started = self.in_flight(), time.monotonic()
        victim.kill()
        self.fleet.release()
        return self.settled(started, in_flight, batch_killed=in_hand)

    def redis_restart(self) -> dict[str, Any]:
        # A batch is held across the restart: its answers go out to the restarted Redis.
        _, in_hand = self.held_batch()
        in_flight, started = self.in_flight(), time.monotonic()
        resends = self.ledger.resends
        self.fleet.redis.kill()
        self.load.send(self.per_phase // 3)  # sent while Redis is down: resent until it is up
        self.ledger.wait_resends(resends + len(self.load.clients))
        self.fleet.redis.start()
        down = time.monotonic() - started
        self.fleet.release()
        return self.settled(started, in_flight, down_s=round(down, 3), batch_held=in_hand)

    def redis_pause(self) -> dict[str, Any]:
        admin = redis.Redis.from_url(self.fleet.redis.url)
        self.start_phase()
        in_flight, started = self.in_flight(), time.monotonic()
        admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        admin.close()
        return self.settled(started, in_flight, pause_ms=PAUSE_MS)

    def poison(self) -> dict[str, Any]:
        _, resumed = self.batch_behind(MODE_KILL, "poison", readers=WORKERS)
        return self.settled(resumed, self.in_flight())

    def run(self) -> list[dict[str, Any]]:
        faults: list[dict[str, Any]] = []
        for name in self.rng.sample(LANE_FAULTS, len(LANE_FAULTS)):
            fault: Callable[[], dict[str, Any]] = getattr(self, name)
            faults.append({"fault": name, **fault()})
        self.start_phase()  # the fleet still serves after every fault
        self.load.join()
        self.ledger.settle(self.settle_s)
        return faults


def report(check: LaneCheck, faults: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    """Every request's fate, from the client's side and the fleet's."""
    ledger, client = check.ledger, check.fleet.client
    outcomes = ledger.outcomes()
    tally = Counter(outcomes.values())
    dead = {e.job_id for e in list_dead_letters(client.redis) if e.task == TASK_LANE}
    dead_lettered = [r for r, o in outcomes.items() if o == DEAD_LETTERED]
    innocents = [r for r in dead_lettered if ledger.kinds[r] != "poison"]
    errors = {r: o for r, o in outcomes.items() if o.startswith("error:")}
    lost = [r for r, o in outcomes.items() if o == "open"]
    return {
        "requests_sent": len(outcomes),
        "requests_refused": len(ledger.refused),
        "answered": tally["answered"],
        "dead_lettered": len(dead_lettered),
        "poison_dead_lettered": sum(1 for r in dead_lettered if ledger.kinds[r] == "poison"),
        "poison_sent": sum(1 for k in ledger.kinds.values() if k == "poison"),
        "innocents_dead_lettered": len(innocents),
        "dead_letters_missing": sorted(set(dead_lettered) - dead)[:10],
        "error_replies": len(errors),
        "lost": len(lost),
        "lost_ids": lost[:10],
        "error_samples": dict(list(errors.items())[:5]),
        "refused_samples": ledger.refused[:5],
        "duplicate_replies": check.load.stray_replies() + int(client.lane.stray_replies),
        "duplicates_executed": duplicates_executed(client.redis, set(outcomes)),
        "resends": ledger.resends,
        "left_in_lane": left_in_lane(client.redis),
        "workers_started": check.supervisor.replaced,
        "faults": faults,
        "elapsed_s": round(elapsed, 1),
    }


def wait_lane_ready(fleet: ChaosFleet, workers: Supervisor) -> list[WorkerProcess]:
    """The live workers, once there are as many as the supervisor keeps and each one's lane
    consumer beats (a replaced worker takes a few seconds to start)."""
    deadline = time.monotonic() + READY_S
    while True:
        with workers.lock:
            live = [w for w in workers.live if w.alive()]
        keys = [lane_alive_key("cpu", w.name) for w in live]
        try:
            beating = int(fleet.client.redis.exists(*keys)) if keys else 0
        except redis.RedisError:
            beating = -1
        if len(live) >= workers.size and beating == len(keys):
            return live
        if time.monotonic() > deadline:
            raise TimeoutError(f"lane consumers not all beating within {READY_S} s: {keys}")
        time.sleep(0.05)  # waits on the consumers' heartbeats


def run_lane(
    requests: int,
    producers: int,
    seed: int,
    root: Path,
    client: ClientFactory,
    *,
    settle_s: float = SETTLE_S,
) -> dict[str, Any]:
    """The lane check on a fresh private fleet under ``root``; its figures. ``settle_s``:
    how long to wait, after each fault, for the requests sent so far to be answered."""
    fleet = open_fleet(root / "lane", client=client, appendonly=True)
    fleet.env.update(FAST_RECOVERY)
    supervisor = Supervisor(fleet, WORKERS, batching=True)  # the lane reads batches
    load = None
    try:
        supervisor.top_up()
        wait_lane_ready(fleet, supervisor)
        supervisor.start()
        model = register_chaos(fleet.settings)
        make = functools.partial(client, fleet.settings)
        load = Load(make, model, Ledger(), producers=producers, gap_s=SEND_GAP_S)
        check = LaneCheck(fleet, supervisor, load, requests, seed, settle_s)
        started = time.monotonic()
        faults = check.run()
        figures = report(check, faults, time.monotonic() - started)
        return {"seed": seed, "producers": producers, **figures}
    finally:
        if load is not None:
            load.close()
        supervisor.stop()
        fleet.close()
