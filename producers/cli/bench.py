"""`torchfleet bench`: the fleet's inference path beside the physical limit and the naive task.

Arms, for each model, with the same input and the same torch thread count everywhere:

* ``floor``: the model called in-process through the worker's own fast paths (the limit),
  at batch 1 and at the micro-batch size;
* ``celery_noop``: a no-op task round trip on the same Redis (the queue's own cost), at
  one producer right before each model's fleet arms (``beside`` names the model), and at
  the other producer counts once;
* ``naive``: a Celery task that loads the model from the store on every request;
* ``fleet_batched`` / ``fleet_unbatched``: the real path, warm, micro-batching on / off;
* ``fleet_cold``: a freshly launched worker process, from launch to its first answer.

With ``--spawn`` the command starts its own embedded Redis and worker processes (one at a
time, so each arm knows which worker answers); without it, it drives the running fleet and
measures the arms that need no worker of its own (floor, celery_noop, naive, fleet_batched).
The floor imports torch, so run bench where the ``worker`` extra is installed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from shared.percentiles import nearest_rank as percentile

ARMS = ("floor", "celery_noop", "naive", "fleet_batched", "fleet_unbatched", "fleet_cold")
MODELS = ("mlp", "cifar_cnn", "resnet18")
SEED_MODEL = "cifar_cnn"
PRODUCERS = (1, 4, 16)
INPUT_SHAPE = (3, 32, 32)
BIG_JOB = 32
WORKER_READY_TIMEOUT_S = 120
RESULT_TIMEOUT_S = 300
BARS = {
    "overhead_vs_noop": ("<=", 1.2),
    "batched_vs_unbatched_16": (">=", 1.5),
    "batched_vs_naive_16": (">=", 5.0),
    "efficiency_32": (">=", 0.85),
    "cold_start_s": ("<=", 5.0),
}


@dataclass
class Plan:
    """What one bench run measures: models, producer counts, and jobs per measurement."""

    models: tuple[str, ...] = MODELS
    producers: tuple[int, ...] = PRODUCERS
    jobs: int = 200  # jobs per measurement (at least 4 per producer)
    big_jobs: int = 40  # 32-input jobs per measurement
    naive_jobs: int = 48
    floor_iters: int = 200
    cold_launches: int = 1
    budget_s: float = 8.0  # wall seconds per measurement, past its first jobs
    threads: int = 1
    concurrency: int = 16
    device: str = "cpu"

    @classmethod
    def quick(cls, **kw: Any) -> Plan:
        """A subset that runs in well under a minute: the seed CNN at 1 and 16 producers."""
        return cls(
            models=(SEED_MODEL,),
            producers=(1, 16),
            jobs=64,
            big_jobs=12,
            naive_jobs=32,
            floor_iters=50,
            budget_s=3.0,
            **kw,
        )


@dataclass
class Row:
    arm: str
    model: str
    producers: int
    inputs_per_job: int
    jobs: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput: float
    extra: dict[str, float] = field(default_factory=dict)
    beside: str | None = None  # celery_noop: the model whose fleet arms it was measured before


# ------------------------------------------------------------------ pure helpers
def summarise(
    arm: str,
    model: str,
    producers: int,
    inputs: int,
    latencies_ms: list[float],
    wall_s: float,
    beside: str | None = None,
    **extra: float,
) -> Row:
    """One result row from per-job latencies and the wall time of the whole measurement."""
    return Row(
        arm=arm,
        model=model,
        producers=producers,
        inputs_per_job=inputs,
        jobs=len(latencies_ms),
        p50_ms=round(percentile(latencies_ms, 50), 3),
        p95_ms=round(percentile(latencies_ms, 95), 3),
        p99_ms=round(percentile(latencies_ms, 99), 3),
        throughput=round(len(latencies_ms) * inputs / wall_s, 2) if wall_s > 0 else 0.0,
        extra={k: round(v, 3) for k, v in extra.items()},
        beside=beside,
    )


def _find(rows: list[Row], arm: str, model: str, producers: int, inputs: int = 1) -> Row | None:
    for row in rows:
        if (row.arm, row.model, row.producers, row.inputs_per_job) == (
            arm,
            model,
            producers,
            inputs,
        ):
            return row
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(rows: list[Row], model: str) -> dict[str, float | None]:
    """The bars' figures for one model (None where an arm was not measured)."""
    floor1 = _find(rows, "floor", model, 1, 1)
    floor32 = _find(rows, "floor", model, 1, BIG_JOB)
    noops = [r for r in rows if (r.arm, r.producers) == ("celery_noop", 1)]
    noop = next((r for r in noops if r.beside == model), noops[0] if noops else None)
    warm = _find(rows, "fleet_batched", model, 1, 1)
    most = max((r.producers for r in rows if r.arm == "fleet_batched"), default=1)
    batched = _find(rows, "fleet_batched", model, most, 1)
    unbatched = _find(rows, "fleet_unbatched", model, most, 1)
    naive = _find(rows, "naive", model, most, 1)
    noop_most = _find(rows, "celery_noop", "-", most, 1)
    cold = _find(rows, "fleet_cold", model, 1, 1)
    big = [r for r in rows if (r.arm, r.model, r.inputs_per_job) == ("fleet_batched", model, 32)]
    overhead = warm.p50_ms - floor1.p50_ms if warm and floor1 else None
    return {
        "floor_b1_p50_ms": floor1.p50_ms if floor1 else None,
        "fleet_warm_p50_ms": warm.p50_ms if warm else None,
        "overhead_ms": round(overhead, 3) if overhead is not None else None,
        "noop_p50_ms": noop.p50_ms if noop else None,
        "overhead_vs_noop": _ratio(overhead, noop.p50_ms if noop else None),
        "producers_for_throughput": float(most),
        "batched_vs_unbatched_16": _ratio(
            batched.throughput if batched else None, unbatched.throughput if unbatched else None
        ),
        "batched_vs_naive_16": _ratio(
            batched.throughput if batched else None, naive.throughput if naive else None
        ),
        "efficiency_32": _ratio(
            max((r.throughput for r in big), default=None), floor32.throughput if floor32 else None
        ),
        "cold_start_s": round(cold.p50_ms / 1000, 3) if cold else None,
        # Context, not a bar: what a task that does nothing reaches against the naive task at
        # the same load; no fleet on one Celery message per job can beat it on this host.
        "noop_vs_naive_16": _ratio(
            noop_most.throughput if noop_most else None, naive.throughput if naive else None
        ),
    }


def bars(figures: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """Each bar with its figure, its threshold and whether it passed (None: not measured)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (op, limit) in BARS.items():
        value = figures.get(name)
        passed = None if value is None else (value <= limit if op == "<=" else value >= limit)
        out[name] = {"value": value, "bar": f"{op} {limit}", "passed": passed}
    return out


def machine(device: str, threads: int) -> dict[str, Any]:
    """Where the figures come from: CPU, cores, library versions, device, threads."""
    import celery
    import torch

    gpu = torch.cuda.get_device_name(torch.device(device).index or 0) if "cuda" in device else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "celery": celery.__version__,
        "device": f"{device} ({gpu})" if gpu else device,
        "torch_threads": threads,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------ load generation
def drive(
    producers: int,
    jobs: int,
    one: Callable[[], float],
    *,
    warmup: int = 2,
    budget_s: float = float("inf"),
) -> tuple[list[float], float]:
    """``jobs`` calls of ``one()`` (each waits for its answer and returns its latency in ms)
    from ``producers`` threads, after ``warmup`` unmeasured calls per thread; the latencies
    and the wall time of the measured part in seconds. Past ``budget_s`` seconds no new call
    starts once every producer has made two (slow models stay within the run's budget)."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    remaining = [jobs]
    lock = threading.Lock()
    start_line = threading.Barrier(producers + 1)
    deadline = [float("inf")]

    def producer() -> None:
        try:
            for _ in range(warmup):
                one()
            start_line.wait()
            while True:
                with lock:
                    late = time.perf_counter() > deadline[0] and len(latencies) >= 2 * producers
                    if remaining[0] <= 0 or errors or late:
                        return
                    remaining[0] -= 1
                ms = one()
                with lock:
                    latencies.append(ms)
        except threading.BrokenBarrierError:
            return
        except BaseException as e:  # reported once the other producers stop
            errors.append(e)
            start_line.abort()

    threads = [threading.Thread(target=producer, daemon=True) for _ in range(producers)]
    for t in threads:
        t.start()
    with suppress(threading.BrokenBarrierError):
        start_line.wait()
    start = time.perf_counter()
    deadline[0] = start + budget_s
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return latencies, wall


def infer_call(client: Any, ref: str, payload: Any) -> Callable[[], float]:
    """One fleet inference job, submitted and awaited as any producer does."""

    def one() -> float:
        start = time.perf_counter()
        client.wait(client.submit_infer(ref, payload), timeout=RESULT_TIMEOUT_S)
        return (time.perf_counter() - start) * 1000

    return one


def task_call(client: Any, task: str, args: list[Any]) -> Callable[[], float]:
    """One plain Celery task round trip: send_task, then the result backend's answer."""

    def one() -> float:
        start = time.perf_counter()
        client.app.send_task(task, args=args).get(timeout=RESULT_TIMEOUT_S)
        return (time.perf_counter() - start) * 1000

    return one


# ------------------------------------------------------------------ models and the floor
def sample_inputs(count: int, shape: list[int]) -> Any:
    import numpy as np

    return np.random.default_rng(0).standard_normal((count, *shape)).astype(np.float32)


def register_model(settings: Any, arch: str) -> tuple[str, str]:
    """A seeded, untrained model of ``arch`` stored and registered; (reference, digest)."""
    import torch

    from shared.connection import redis_client
    from shared.manifest import Manifest
    from shared.registry import ModelRegistry, VariantRecord
    from workers.artifacts import ArtifactStore
    from workers.zoo import create_model

    torch.manual_seed(0)
    module = create_model(arch).eval()
    manifest = Manifest(
        arch=arch,
        input_shape=list(INPUT_SHAPE),
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        lineage={"source": "torchfleet bench"},
    )
    stored = ArtifactStore(settings.artifacts).put_model(module.state_dict(), manifest)
    registry = ModelRegistry(redis_client(settings))
    name = f"bench-{arch.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    version = registry.new_version(name)
    registry.register(name, version, "base", VariantRecord(digest=stored.sha256, arch=arch))
    return f"{name}:{version}", stored.sha256


def floor_rows(settings: Any, arch: str, digest: str, plan: Plan) -> list[Row]:
    """The model in-process, through the worker's own loader and fast paths, at batch 1 and 32;
    with the producer's encode and the worker's decode cost of the same inputs."""
    import torch

    from producers.encoding import encode_array
    from shared.jobs import InferJob
    from workers.artifacts import ArtifactStore
    from workers.batching import timed_forward
    from workers.cache import load_model
    from workers.inference import decode_inputs

    torch.set_num_threads(plan.threads)
    device = torch.device(plan.device if plan.device.startswith("cuda") else "cpu")
    model = load_model(ArtifactStore(settings.artifacts), digest, device)
    rows = []
    for inputs in (1, BIG_JOB):
        array = sample_inputs(inputs, model.manifest.input_shape)
        batch = torch.from_numpy(array)
        iters = plan.floor_iters if inputs == 1 else max(10, plan.floor_iters // 4)
        for _ in range(3):
            timed_forward(model, batch)
        latencies, encode, decode = [], [], []
        deadline = time.perf_counter() + plan.budget_s
        for _ in range(iters):
            t0 = time.perf_counter()
            timed_forward(model, batch)
            latencies.append((time.perf_counter() - t0) * 1000)
            if t0 > deadline and len(latencies) >= 5:
                break
        for _ in range(min(iters, 20)):
            t0 = time.perf_counter()
            wire = InferJob(model="m", inputs=encode_array(array)).model_dump_json()
            t1 = time.perf_counter()
            job = InferJob.model_validate_json(wire)
            decode_inputs(job.inputs, model.manifest, 1024)
            t2 = time.perf_counter()
            encode.append((t1 - t0) * 1000)
            decode.append((t2 - t1) * 1000)
        rows.append(
            summarise(
                "floor", arch, 1, inputs, latencies, sum(latencies) / 1000,
                encode_ms=percentile(encode, 50), decode_ms=percentile(decode, 50),
            )
        )  # fmt: skip
    return rows


# ------------------------------------------------------------------ worker processes
@dataclass
class Spawned:
    process: subprocess.Popen[bytes]
    name: str
    launched: float
    log_path: str


def launch_worker(env: dict[str, str], plan: Plan, *, batching: bool, log_dir: str) -> Spawned:
    """A fresh `torchfleet worker` process on the infer queue (timed from this call)."""
    name = f"bench-{uuid.uuid4().hex[:8]}@localhost"
    log_path = os.path.join(log_dir, f"{name.split('@')[0]}.log")
    command = [
        sys.executable, "-m", "producers.cli", "worker", "--name", name, "--queues", "infer",
        "--concurrency", str(plan.concurrency), "--device", plan.device, "--loglevel", "WARNING",
        "--batching" if batching else "--no-batching",
    ]  # fmt: skip
    launched = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    return Spawned(process, name, launched, log_path)


def wait_ready(client: Any, worker: Spawned) -> None:
    """Until the worker answers a broadcast ping (the broker round trip is the wait)."""
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.process.returncode}: {_tail(worker)}")
        if client.app.control.ping(destination=[worker.name], timeout=0.5):
            return
    raise TimeoutError(f"worker {worker.name} did not answer within {WORKER_READY_TIMEOUT_S} s")


def stop_worker(worker: Spawned) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL if it hangs."""
    if worker.process.poll() is None:
        worker.process.send_signal(signal.SIGTERM)
    try:
        worker.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait(timeout=30)


def _tail(worker: Spawned) -> str:
    with open(worker.log_path, errors="replace") as f:
        return f.read()[-2000:]


@contextmanager
def bench_environment(spawn: bool) -> Iterator[tuple[Any, dict[str, str]]]:
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


# ------------------------------------------------------------------ the run
def run_bench(plan: Plan, *, spawn: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Measure every arm of the plan; the JSON document `torchfleet bench --json` prints."""
    from producers.client import Client

    with bench_environment(spawn) as (settings, env), tempfile.TemporaryDirectory() as logs:
        env["TORCHFLEET_TORCH_THREADS"] = str(plan.threads)
        for key in ("TORCHFLEET_METRICS_PORT", "TORCHFLEET_PRELOAD"):
            env.pop(key, None)
        models = {arch: register_model(settings, arch) for arch in plan.models}
        rows: list[Row] = []
        client = Client(settings)
        try:
            for index, (arch, (ref, digest)) in enumerate(models.items()):
                # The floor right before the model's fleet arms: a busy host drifts less between.
                log(f"floor: {arch}")
                rows += floor_rows(settings, arch, digest, plan)
                rows += _fleet_arms(client, env, plan, arch, ref, spawn, index == 0, logs, log)
        finally:
            client.close()
    figures = {arch: ratios(rows, arch) for arch in plan.models}
    headline = SEED_MODEL if SEED_MODEL in figures else plan.models[0]
    return {
        "machine": machine(plan.device, plan.threads),
        "plan": asdict(plan) | {"spawn": spawn},
        "results": [asdict(r) for r in rows],
        "ratios": figures,
        "bars": {"model": headline, **bars(figures[headline])},
    }


def _fleet_arms(
    client: Any,
    env: dict[str, str],
    plan: Plan,
    arch: str,
    ref: str,
    spawn: bool,
    with_noop: bool,
    logs: str,
    log: Callable[[str], None],
) -> list[Row]:
    """Every queue-borne arm for one model; with ``spawn``, on workers launched here."""
    from producers.encoding import encode_array
    from shared.jobs import InferJob
    from shared.names import TASK_NAIVE_INFER, TASK_NOOP

    # The fleet arms hand arrays to the client, as a user would: it picks the transport
    # (inline base64 or stored raw bytes). The naive task gets the job inline.
    single = sample_inputs(1, list(INPUT_SHAPE))
    big = sample_inputs(BIG_JOB, list(INPUT_SHAPE))
    inline = encode_array(single)
    naive = [InferJob(model=ref, inputs=inline).model_dump(mode="json", exclude_none=True)]
    rows: list[Row] = []
    worker = None
    if spawn:
        log(f"fleet_cold: {arch}")
        worker, cold = cold_start(client, env, plan, arch, ref, single, logs)
        rows.append(cold)
    try:
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
        rows += _fleet_sweep("fleet_batched", client, plan, arch, ref, single, log)
        for p in sorted({1, min(4, max(plan.producers))}):
            log(f"fleet_batched: {arch}, {p} producers of {BIG_JOB}-input jobs")
            lat, wall = drive(
                p, plan.big_jobs, infer_call(client, ref, big), budget_s=plan.budget_s
            )
            rows.append(summarise("fleet_batched", arch, p, BIG_JOB, lat, wall))
    finally:
        if worker is not None:
            stop_worker(worker)
    if not spawn:
        return rows
    worker = launch_worker(env, plan, batching=False, log_dir=logs)
    try:
        wait_ready(client, worker)
        rows += _fleet_sweep("fleet_unbatched", client, plan, arch, ref, single, log)
    finally:
        stop_worker(worker)
    return rows


def _fleet_sweep(
    arm: str, client: Any, plan: Plan, arch: str, ref: str, payload: Any, log: Callable[[str], None]
) -> list[Row]:
    rows = []
    for p in plan.producers:
        log(f"{arm}: {arch}, {p} producers")
        call = infer_call(client, ref, payload)
        lat, wall = drive(p, max(plan.jobs, 4 * p), call, budget_s=plan.budget_s)
        rows.append(summarise(arm, arch, p, 1, lat, wall))
    return rows


def cold_start(
    client: Any, env: dict[str, str], plan: Plan, arch: str, ref: str, inputs: Any, logs: str
) -> tuple[Spawned, Row]:
    """Launch fresh workers and time launch -> first answer; the last one keeps running."""
    times: list[float] = []
    worker: Spawned | None = None
    for attempt in range(plan.cold_launches):
        worker = launch_worker(env, plan, batching=True, log_dir=logs)
        try:
            client.wait(client.submit_infer(ref, inputs), timeout=WORKER_READY_TIMEOUT_S)
        except BaseException:
            stop_worker(worker)
            raise
        times.append((time.perf_counter() - worker.launched) * 1000)
        if attempt < plan.cold_launches - 1:
            stop_worker(worker)
    if worker is None:
        raise ValueError("cold_launches must be at least 1")
    return worker, summarise("fleet_cold", arch, 1, 1, times, sum(times) / 1000)


# ------------------------------------------------------------------ output
def print_report(console: Console, report: dict[str, Any]) -> None:
    """The results as a rich table, then the bars."""
    m = report["machine"]
    table = Table(
        "arm", "model", "producers", "inputs/job", "jobs", "p50 ms", "p95 ms", "p99 ms",
        "inputs/s", expand=False,
        title=f"torchfleet bench: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
        f"celery {m['celery']}, {m['device']}, {m['torch_threads']} thread(s)",
    )  # fmt: skip
    for r in report["results"]:
        table.add_row(
            r["arm"], r["model"], str(r["producers"]), str(r["inputs_per_job"]), str(r["jobs"]),
            f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['p99_ms']:.2f}",
            f"{r['throughput']:.0f}",
        )  # fmt: skip
    console.print(table)
    verdicts = Table("bar", "value", "target", "passed", title=f"bars ({report['bars']['model']})")
    for name, bar in report["bars"].items():
        if name == "model":
            continue
        value = "-" if bar["value"] is None else f"{bar['value']:.3f}"
        passed = {None: "not measured", True: "yes", False: "NO"}[bar["passed"]]
        verdicts.add_row(name, value, bar["bar"], passed)
    console.print(verdicts)
    ceiling = report["ratios"][report["bars"]["model"]].get("noop_vs_naive_16")
    if ceiling is not None:
        console.print(
            f"A no-op task reaches {ceiling:.2f}x the naive task's throughput at the same load "
            "here: the most any one-message-per-job fleet can show against it on this host."
        )


def _csv(text: str, cast: Callable[[str], Any]) -> tuple[Any, ...]:
    try:
        values = tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list: {e}") from None
    if not values:
        raise typer.BadParameter(f"{text!r} names nothing")
    return values


def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="The seed CNN at 1 and 16 producers (< 1 min).")
    ] = False,
    spawn: Annotated[
        bool,
        typer.Option(
            "--spawn",
            help="Start an embedded Redis and worker processes of its own (needed for "
            "fleet_unbatched and fleet_cold); otherwise drive the running fleet.",
        ),
    ] = False,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated architectures (mlp,cifar_cnn,resnet18).")
    ] = None,
    producers: Annotated[
        str | None, typer.Option(help="Comma-separated producer counts (1,4,16).")
    ] = None,
    jobs: Annotated[int | None, typer.Option(help="Jobs per measurement.")] = None,
    threads: Annotated[int, typer.Option(help="torch threads: floor and workers alike.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N (spawned workers).")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Benchmark the fleet's inference path against the in-process floor, a no-op task
    and a naive task. Imports torch for the floor: run it where the worker extra is
    installed."""
    options: dict[str, Any] = {"threads": threads, "device": device}
    plan = Plan.quick(**options) if quick else Plan(**options)
    if models:
        unknown = set(_csv(models, str)) - set(MODELS)
        if unknown:
            raise typer.BadParameter(f"unknown model(s) {sorted(unknown)}; known: {MODELS}")
        plan.models = _csv(models, str)
    if producers:
        plan.producers = _csv(producers, int)
        if min(plan.producers) < 1:
            raise typer.BadParameter("producer counts must be at least 1")
    if jobs:
        plan.jobs = jobs
    console = Console(stderr=True)
    report = run_bench(plan, spawn=spawn, log=lambda text: console.print(f"[dim]{text}[/]"))
    if as_json:
        print(json.dumps(report))
    else:
        print_report(Console(width=max(120, shutil.get_terminal_size().columns)), report)
