"""One bench run: every arm of a :class:`Plan`, on the running fleet or on workers of its own.

The torch side (registering models, the in-process floor, worker processes) is handed in as
a :class:`Lab` by the command, so that this package never imports ``workers``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from producers.bench.cpu import CpuMeter
from producers.bench.lane import drain, lane_call
from producers.bench.load import drive, infer_call, sample_inputs, task_call
from producers.bench.plan import (
    BIG_JOB,
    INPUT_SHAPE,
    SEED_MODEL,
    WORKER_READY_TIMEOUT_S,
    Plan,
    Row,
    percentile,
    summarise,
)
from producers.bench.ratios import bars, ratios
from producers.client import Client
from producers.encoding import encode_array
from producers.ops import live_queues
from shared.jobs import InferJob
from shared.names import QUEUE_BENCH, TASK_NAIVE_INFER, TASK_NOOP
from shared.settings import Settings

Log = Callable[[str], None]


class Stored(Protocol):
    """A model the bench registered (see workers.bench.harness.Registered)."""

    @property
    def ref(self) -> str: ...

    @property
    def digest(self) -> str: ...


class Worker(Protocol):
    """A worker process the bench launched (see workers.bench.harness.WorkerProcess)."""

    launched: float
    name: str

    @property
    def pid(self) -> int | None: ...

    def wait_ready(self, client: Client) -> None: ...

    def stop(self) -> int | None: ...


class Floor(Protocol):
    """A model loaded in this process (see workers.bench.floor.Floor)."""

    def forward_ms(self, array: Any, *, iters: int, budget_s: float) -> list[float]: ...

    def wire_ms(
        self, array: Any, encode: Callable[[Any], Any], *, iters: int
    ) -> tuple[list[float], list[float]]: ...


@dataclass(frozen=True)
class Lab:
    """The torch side of a run: register a seeded model, load the floor, launch a worker,
    describe the machine."""

    register: Callable[[Settings, str], Stored]
    floor: Callable[[Settings, str, Plan], Floor]
    spawn: Callable[[dict[str, str], Plan, bool, str], Worker]
    machine: Callable[[str, int], dict[str, Any]]


@contextmanager
def bench_environment(spawn: bool) -> Iterator[tuple[Settings, dict[str, str]]]:
    """Settings and worker environment: an embedded Redis and a temporary store with
    ``spawn``, the configured fleet otherwise."""
    from shared.embedded import EmbeddedRedis
    from shared.settings import get_settings

    settings = get_settings()
    if not spawn:
        yield settings, dict(os.environ)
        return
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory(prefix="tf-bench-") as folder:
        local = settings.model_copy(
            update={"redis_url": server.url, "artifacts": os.path.join(folder, "artifacts")}
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHFLEET_")}
        env.update(TORCHFLEET_REDIS_URL=local.redis_url, TORCHFLEET_ARTIFACTS=local.artifacts)
        yield local, env


def run_bench(plan: Plan, lab: Lab, *, spawn: bool, log: Log) -> dict[str, Any]:
    """Measure every arm of the plan; the JSON document `torchfleet bench --json` prints."""
    load_before = os.getloadavg()
    with bench_environment(spawn) as (settings, env), tempfile.TemporaryDirectory() as logs:
        env["TORCHFLEET_TORCH_THREADS"] = str(plan.threads)
        for key in ("TORCHFLEET_METRICS_PORT", "TORCHFLEET_PRELOAD"):
            env.pop(key, None)
        models = {arch: lab.register(settings, arch) for arch in plan.models}
        rows: list[Row] = []
        client = Client(settings)
        # Redis's process is on this host only when the bench started it.
        redis_pid = int(client.redis.info("server")["process_id"]) if spawn else None
        try:
            for index, (arch, stored) in enumerate(models.items()):
                # The floor right before the model's fleet arms: a busy host drifts less between.
                log(f"floor: {arch}")
                floor = lab.floor(settings, stored.digest, plan)
                rows += floor_rows(floor, arch, plan)
                arms = FleetArms(client, lab, env, plan, logs, log, floor, redis_pid)
                rows += arms.measure(arch, stored.ref, spawn=spawn, with_noop=index == 0)
        finally:
            client.close()
    figures = {arch: ratios(rows, arch) for arch in plan.models}
    headline = SEED_MODEL if SEED_MODEL in figures else plan.models[0]
    return {
        "machine": lab.machine(plan.device, plan.threads),
        # 1/5/15-minute load averages before and after: the host may be shared.
        "load": {"before": list(load_before), "after": list(os.getloadavg())},
        "plan": asdict(plan) | {"spawn": spawn},
        "results": [asdict(r) for r in rows],
        "ratios": figures,
        "bars": {"model": headline, **bars(figures[headline])},
    }


def floor_rows(floor: Floor, arch: str, plan: Plan) -> list[Row]:
    """The floor at batch 1 and 32, with the producer's encode and the worker's decode cost
    of the same inputs."""
    return [floor_row(floor, arch, plan, inputs) for inputs in (1, BIG_JOB)]


def floor_row(floor: Floor, arch: str, plan: Plan, inputs: int, arm: str = "floor") -> Row:
    """The floor at one batch size."""
    array = sample_inputs(inputs, list(INPUT_SHAPE))
    iters = plan.floor_iters if inputs == 1 else max(10, plan.floor_iters // 4)
    latencies = floor.forward_ms(array, iters=iters, budget_s=plan.budget_s)
    encode, decode = floor.wire_ms(array, encode_array, iters=iters)
    return summarise(
        arm, arch, 1, inputs, latencies, sum(latencies) / 1000,
        encode_ms=percentile(encode, 50), decode_ms=percentile(decode, 50),
    )  # fmt: skip


@dataclass
class FleetArms:
    """Every queue-borne arm for one model; with ``spawn``, on workers launched here."""

    client: Client
    lab: Lab
    env: dict[str, str]
    plan: Plan
    logs: str
    log: Log
    floor: Floor
    redis_pid: int | None = None

    def measure(self, arch: str, ref: str, *, spawn: bool, with_noop: bool) -> list[Row]:
        """The arms in the order that keeps each comparison close in time."""
        client, plan, log = self.client, self.plan, self.log
        # The fleet arms hand arrays to the client, as a user would: it picks the transport
        # (inline base64 or stored raw bytes).
        single = sample_inputs(1, list(INPUT_SHAPE))
        big = sample_inputs(BIG_JOB, list(INPUT_SHAPE))
        rows: list[Row] = []
        worker = None
        if spawn:
            log(f"fleet_cold: {arch}")
            worker, cold = self.cold_start(arch, ref, single)
            rows.append(cold)
        try:
            if spawn or self.bench_served():
                rows += self.bench_tasks(arch, ref, single, with_noop=with_noop)
            rows += self.sweep("fleet_batched", arch, ref, single, worker)
            for p in sorted({1, min(4, max(plan.producers))}):
                log(f"fleet_batched: {arch}, {p} producers of {BIG_JOB}-input jobs")
                call = infer_call(client, ref, big)
                lat, wall = drive(p, plan.big_jobs, call, budget_s=plan.budget_s)
                rows.append(summarise("fleet_batched", arch, p, BIG_JOB, lat, wall))
            rows += self.sweep("lane_batched", arch, ref, single, worker)
            if worker is not None:
                rows += self.drain(arch, ref, single, worker)
        finally:
            if worker is not None:
                worker.stop()
        if not spawn:
            return rows
        worker = self.lab.spawn(self.env, plan, False, self.logs)
        try:
            worker.wait_ready(client)
            rows += self.sweep("fleet_unbatched", arch, ref, single, worker)
            rows += self.sweep("lane_unbatched", arch, ref, single, worker, (max(plan.producers),))
        finally:
            worker.stop()
        return rows

    def bench_served(self) -> bool:
        """Whether a live worker of the running fleet consumes the bench's queue; says so
        when none does (its arms are skipped)."""
        if QUEUE_BENCH in live_queues(self.client.redis):
            return True
        self.log(
            "celery_noop, naive: skipped, no live worker consumes the bench queue "
            "(start one with `torchfleet worker --bench`)"
        )
        return False

    def bench_tasks(self, arch: str, ref: str, single: Any, *, with_noop: bool) -> list[Row]:
        """The no-op task (its other producer counts once, ``with_noop``), the naive task at
        each producer count, then the no-op at one producer right before the fleet's arms."""
        client, plan, log = self.client, self.plan, self.log
        job = InferJob(model=ref, inputs=encode_array(single))  # the naive task's: inline
        naive = [job.model_dump(mode="json", exclude_none=True)]
        rows: list[Row] = []
        noop = task_call(client, TASK_NOOP, [None])
        if with_noop:
            for p in [p for p in plan.producers if p > 1]:
                log(f"celery_noop: {p} producers")
                lat, wall = drive(p, plan.jobs, noop, budget_s=plan.budget_s)
                rows.append(summarise("celery_noop", "-", p, 1, lat, wall))
        for p in plan.producers:
            log(f"naive: {arch}, {p} producers")
            one = task_call(client, TASK_NAIVE_INFER, naive)
            lat, wall = drive(p, max(plan.naive_jobs, 2 * p), one, budget_s=plan.budget_s)
            rows.append(summarise("naive", arch, p, 1, lat, wall))
        # The queue's own cost right before the fleet's: the host's speed drifts in minutes.
        log(f"celery_noop: 1 producer, beside {arch}")
        lat, wall = drive(1, plan.jobs, noop, budget_s=plan.budget_s)
        rows.append(summarise("celery_noop", "-", 1, 1, lat, wall, beside=arch))
        return rows

    def sweep(
        self,
        arm: str,
        arch: str,
        ref: str,
        payload: Any,
        worker: Worker | None,
        producers: tuple[int, ...] | None = None,
    ) -> list[Row]:
        """1-input requests (Celery jobs, or lane requests for ``lane_*`` arms) at each
        producer count, with the CPU time each request cost the processes on this host."""
        plan, lane = self.plan, arm.startswith("lane_")
        rows = []
        for p in producers or plan.producers:
            self.log(f"{arm}: {arch}, {p} producers")
            if lane:  # a lane request costs far less: more of them fill the same budget
                call, jobs, warmup = lane_call(self.client, ref, payload), plan.jobs * 16, 5
            else:
                call, jobs, warmup = infer_call(self.client, ref, payload), plan.jobs, 2
            meter = self.meter(worker)
            meter.start()
            lat, wall = drive(p, max(jobs, 4 * p), call, warmup=warmup, budget_s=plan.budget_s)
            row = summarise(arm, arch, p, 1, lat, wall)
            row.extra.update(rounded(meter.per_request(len(lat) + warmup * p)))
            rows.append(row)
        return rows

    def drain(self, arch: str, ref: str, payload: Any, worker: Worker) -> list[Row]:
        """The drain, with the batch-32 floor right before and after it (a shared host's
        speed drifts in seconds; ``drain_vs_floor`` divides by the faster of the two)."""
        n = self.plan.drain
        self.log(f"lane_drain: {arch}, {n} requests, the floor right before and after")
        before = floor_row(self.floor, arch, self.plan, BIG_JOB, "floor_beside_drain")
        meter = self.meter(worker)
        meter.start()
        lane = "cuda" if self.plan.device.startswith("cuda") else "cpu"
        drained = drain(self.client, worker.name, arch, ref, payload, n, lane)
        drained.extra.update(rounded(meter.per_request(n)))
        after = floor_row(self.floor, arch, self.plan, BIG_JOB, "floor_beside_drain")
        return [before, drained, after]

    def meter(self, worker: Worker | None) -> CpuMeter:
        """CPU time of the producers (this process), the worker and Redis."""
        pids = {"client": os.getpid(), "worker": worker.pid if worker else None}
        return CpuMeter(pids | {"redis": self.redis_pid})

    def cold_start(self, arch: str, ref: str, inputs: Any) -> tuple[Worker, Row]:
        """Launch fresh workers and time launch -> first answer; the last one keeps running."""
        times: list[float] = []
        worker: Worker | None = None
        for attempt in range(self.plan.cold_launches):
            worker = self.lab.spawn(self.env, self.plan, True, self.logs)
            try:
                self.client.wait(
                    self.client.submit_infer(ref, inputs), timeout=WORKER_READY_TIMEOUT_S
                )
            except BaseException:
                worker.stop()
                raise
            times.append((time.perf_counter() - worker.launched) * 1000)
            if attempt < self.plan.cold_launches - 1:
                worker.stop()
        if worker is None:
            raise ValueError("cold_launches must be at least 1")
        return worker, summarise("fleet_cold", arch, 1, 1, times, sum(times) / 1000)


def rounded(figures: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in figures.items()}
