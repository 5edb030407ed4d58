"""A private fleet for fault injection: its own redis-server, chaos workers, waits and counts.

Shared by the chaos tests (tests/integration/test_chaos*.py) and the chaos report
(``python -m workers.bench.chaos``). Workers load :mod:`workers.bench.chaos_models` through
``TORCHFLEET_PLUGINS`` and run with a short visibility timeout, so that the jobs of a
dead worker come back in seconds instead of an hour. The fleet's client is handed in (a
producers ``Client`` class): this side never imports the producers.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from celery.states import READY_STATES as FINISHED

from shared.embedded import EmbeddedRedis
from shared.errors import JobTimeout
from shared.names import ALL_QUEUES, DEVICE_KINDS, device_queue
from shared.settings import Settings
from workers.bench import chaos_models
from workers.bench.harness import WorkerProcess, register_seeded

PLUGIN = chaos_models.__name__
VISIBILITY_TIMEOUT_S = 3
RESULT_PREFIX = "celery-task-meta-"
POLL_S = 0.05
ORPHAN_AFTER_S = 10.0


class FleetClient(Protocol):
    """What the chaos fleet uses of a producers ``Client``."""

    redis: Any
    app: Any
    lane: Any  # a producers LaneClient: in_flight(), stray_replies

    def state(self, job_id: str) -> Any: ...

    def submit_infer(self, model: str, inputs: Any, **options: Any) -> str: ...

    def status(self) -> dict[str, Any]: ...

    def infer_async(self, model: str, inputs: Any, **options: Any) -> Any: ...

    def close(self) -> None: ...


ClientFactory = Callable[[Settings], FleetClient]
JobState = Any  # a producers JobState: status, finished, result, error


@dataclass
class ChaosFleet:
    """A redis-server and the chaos workers started on it; :meth:`close` ends them all."""

    root: Path
    redis: EmbeddedRedis
    env: dict[str, str]
    settings: Settings
    client: FleetClient
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def chaos_dir(self) -> Path:
        return Path(self.env["TF_CHAOS_DIR"])

    def worker(
        self, *, concurrency: int = 2, ready: bool = True, batching: bool = False, **env: str
    ) -> WorkerProcess:
        """Start a chaos worker (micro-batching off by default: each job's forward is its own)."""
        process = WorkerProcess(
            env={**self.env, **env},
            log_dir=self.root,
            concurrency=concurrency,
            extra=[] if batching else ["--no-batching"],
        ).start()
        self.workers.append(process)
        if ready:
            process.wait_ready(self.client)
        return process

    def release(self) -> None:
        """Let every held forward (chaos_net MODE_HOLD) go on."""
        (self.chaos_dir / "release").touch()

    def hold(self) -> None:
        """Make forwards hold again (remove the release file and the old holding marks)."""
        for path in self.chaos_dir.glob("*"):
            path.unlink()

    def wait_holding(
        self, count: int = 1, timeout: float = 120, job_id: str | None = None
    ) -> list[Path]:
        """Wait until ``count`` forwards are held: the job is certainly mid-computation.

        With ``job_id``, a job that finishes instead (an error, say) ends the wait at once.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            marks = sorted(self.chaos_dir.glob("holding-*"))
            if len(marks) >= count:
                return marks
            if job_id is not None and (state := self.client.state(job_id)).finished:
                raise AssertionError(f"job {job_id} finished instead of holding: {state}")
            time.sleep(POLL_S)  # waits on the marks the held forwards write
        raise TimeoutError(f"fewer than {count} forwards held within {timeout} s")

    def __enter__(self) -> ChaosFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # Pending AsyncResults unsubscribe from Redis when collected: let them do it now,
        # while this Redis still answers (if it still does), not at some later test.
        gc.collect()
        for process in self.workers:
            process.kill()
        self.client.close()
        self.redis.cleanup()


def open_fleet(
    root: Path,
    *,
    client: ClientFactory,
    visibility_timeout_s: int = VISIBILITY_TIMEOUT_S,
    max_deliveries: int = 3,
    appendonly: bool = False,
) -> ChaosFleet:
    """Start a private redis-server and a client on it (workers are started on demand)."""
    root.mkdir(parents=True, exist_ok=True)
    chaos = root / "chaos"
    chaos.mkdir(exist_ok=True)
    server = EmbeddedRedis(appendonly=appendonly, directory=root / "redis")
    server.directory.mkdir(exist_ok=True)
    server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHFLEET_")}
    env.update(
        TORCHFLEET_REDIS_URL=server.url,
        TORCHFLEET_ARTIFACTS=str(root / "artifacts"),
        TORCHFLEET_TORCH_THREADS="1",
        TORCHFLEET_VISIBILITY_TIMEOUT_S=str(visibility_timeout_s),
        TORCHFLEET_RESTORE_INTERVAL_S="1",
        TORCHFLEET_MAX_DELIVERIES=str(max_deliveries),
        TORCHFLEET_PLUGINS=json.dumps([PLUGIN]),
        TF_CHAOS_DIR=str(chaos),
    )
    settings = Settings(
        redis_url=server.url,
        artifacts=env["TORCHFLEET_ARTIFACTS"],
        visibility_timeout_s=visibility_timeout_s,
        max_deliveries=max_deliveries,
    )
    return ChaosFleet(root, server, env, settings, client(settings))


def cleanup_dir(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------- models and inputs
def register_chaos(settings: Settings, name: str | None = None, **arch_kwargs: int) -> str:
    """Register a chaos_net (1x4x4 inputs, 2 classes) exactly as training would."""
    name = name or f"chaos-{uuid.uuid4().hex[:8]}"
    register_seeded(settings, "chaos_net", name, input_shape=(1, 4, 4), arch_kwargs=arch_kwargs)
    return name


def register_cnn(settings: Settings, name: str | None = None) -> str:
    """Register an untrained cifar_cnn (3x32x32 inputs, 10 classes): the soak's model."""
    return register_seeded(settings, "cifar_cnn", name or f"soak-{uuid.uuid4().hex[:8]}").name


def chaos_input(mode: float = 0.0, n: int = 1, seed: int = 0) -> np.ndarray:
    """``n`` inputs of shape 1x4x4 whose first value selects a chaos_net mode (0 = normal)."""
    values = np.random.default_rng(seed).uniform(-0.5, 0.5, (n, 1, 4, 4)).astype(np.float32)
    values[0, 0, 0, 0] = mode
    return values


# ----------------------------------------------------------------- waits and counts
def drain(client: FleetClient, job_ids: Iterable[str], timeout: float = 120) -> dict[str, JobState]:
    """Wait until every job has finished (read from the result backend); their states.

    Polls with one MGET per round, so it keeps working across a Redis restart.
    """
    pending = list(dict.fromkeys(job_ids))
    states: dict[str, JobState] = {}
    deadline = time.monotonic() + timeout
    while pending:
        try:
            raws = client.redis.mget([RESULT_PREFIX + job_id for job_id in pending])
        except Exception:  # a restarting Redis: try again next round
            raws = [None] * len(pending)
        still = []
        for job_id, raw in zip(pending, raws, strict=True):
            status = json.loads(raw).get("status") if raw else None
            if status in FINISHED:
                states[job_id] = client.state(job_id)
            else:
                still.append(job_id)
        pending = still
        if pending and time.monotonic() > deadline:
            raise JobTimeout(f"{len(pending)} jobs unfinished after {timeout} s: {pending[:5]}")
        if pending:
            time.sleep(POLL_S)  # the result backend is the thing waited on
    return states


def drain_reconciled(
    client: FleetClient,
    job_ids: Iterable[str],
    resubmit: Callable[[str], None],
    timeout: float = 120,
    orphan_after_s: float = ORPHAN_AFTER_S,
) -> tuple[dict[str, JobState], list[str]]:
    """:func:`drain`, resubmitting (same id) the jobs that exist nowhere any more.

    What a careful producer does: a job with no result, in no queue and unacknowledged
    nowhere for ``orphan_after_s`` was dropped by the transport (see
    :func:`shared.deadletter.orphaned`). Returns the states and the ids resubmitted.
    """
    from shared.deadletter import orphaned

    ids = list(dict.fromkeys(job_ids))
    queues = [*ALL_QUEUES, *(device_queue(q, d) for d in DEVICE_KINDS for q in ALL_QUEUES)]
    resubmitted: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            return drain(client, ids, min(orphan_after_s, timeout)), resubmitted
        except JobTimeout:
            if time.monotonic() > deadline:
                raise
        for job_id in orphaned(client.redis, ids, queues):
            resubmit(job_id)
            resubmitted.append(job_id)


def wait_status(
    client: FleetClient, job_id: str, statuses: set[str], timeout: float = 120
) -> JobState:
    """Wait until a job reaches one of ``statuses`` (STARTED, PROGRESS...)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.state(job_id)
        if state.status in statuses:
            return state
        time.sleep(POLL_S)  # the result backend is the thing waited on
    raise JobTimeout(f"job {job_id} did not reach {statuses} within {timeout} s")


def counts(client: FleetClient, job_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """Deliveries and executions per job (the worker's ``deliveries:{id}`` hashes)."""
    from shared.deadletter import delivery_counts

    return {job_id: delivery_counts(client.redis, job_id) for job_id in job_ids}


def submit_many(client: FleetClient, model: str, n: int, prefix: str, **options: Any) -> list[str]:
    """Submit ``n`` normal inference jobs with ids ``{prefix}-{i}``."""
    return [
        client.submit_infer(model, chaos_input(0.0, seed=i), job_id=f"{prefix}-{i}", **options)
        for i in range(n)
    ]
