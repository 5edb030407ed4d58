"""The online lane against the floor and Celery, on the seed CNN: the five bars of issue 12.

    .venv/bin/python scripts/bench_lane.py            # quick: ~2 minutes on 2 cores
    .venv/bin/python scripts/bench_lane.py --json

On a private redis-server it measures, in this order: the in-process floor (batch 1 and
32), then on one spawned worker (batching on) the Celery no-op round trip, Celery
``fleet_batched`` and ``naive`` at 16 producers, the lane at 1 and 16 producers and the
drain (N single-input requests added while the consumer is paused, then the worker alone
empties the lane: its own busy time from resume to its last batch), with the batch-32
floor measured again right before and right after it (``drain_vs_floor`` divides by the
faster of those two: on a shared host the speed drifts between the first floor and the
drain); then on a worker whose lane reads one request at a time, the lane at 16 producers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producers.client import Client
from producers.commands.bench import (
    INPUT_SHAPE,
    SEED_MODEL,
    Plan,
    Row,
    bench_environment,
    drive,
    floor_rows,
    infer_call,
    launch_worker,
    machine,
    register_model,
    sample_inputs,
    stop_worker,
    summarise,
    task_call,
    wait_ready,
)
from producers.encoding import encode_array, tensor_bytes
from producers.lane import SEND_SCRIPT
from shared.jobs import InferJob
from shared.lane import encode_request
from shared.names import CONTROL_LANE, TASK_NAIVE_INFER, TASK_NOOP, lane_reply_key, lane_streams

BARS = {
    "lane_overhead_vs_noop": ("<=", 0.6),
    "lane_vs_celery_16": (">=", 6.0),
    "lane_vs_naive_16": (">=", 8.0),
    "lane_batched_vs_unbatched_16": (">=", 2.0),
    "drain_vs_floor": (">=", 0.85),
}
FILL_CHUNK = 200


def lane_call(client: Client, ref: str, array: Any) -> Callable[[], float]:
    """One lane request, sent and awaited as any producer does."""

    def one() -> float:
        start = time.perf_counter()
        client.infer(ref, array, timeout=300)
        return (time.perf_counter() - start) * 1000

    return one


def lane_control(client: Client, worker: str, action: str) -> dict[str, Any]:
    """Pause, resume or ask the worker's lane consumer for its status."""
    replies = client.app.control.broadcast(
        CONTROL_LANE, arguments={"action": action}, destination=[worker], reply=True, timeout=20
    )
    if not replies:
        raise RuntimeError(f"worker {worker} did not answer {CONTROL_LANE} {action}")
    answer: dict[str, Any] = next(iter(replies[0].values()))
    if "error" in answer or "skipped" in answer:
        raise RuntimeError(f"{CONTROL_LANE} {action}: {answer}")
    return answer


def fill(client: Client, ref: str, array: Any, n: int, reply_key: str) -> None:
    """``n`` requests added to the cpu lane (chunks of pipelined adds), replies to a key
    nobody reads: no listener shares the cores while the worker drains."""
    raw, dtype, shape = tensor_bytes(array)
    script = client.redis.register_script(SEND_SCRIPT)
    keys = list(lane_streams("cpu"))[::-1]  # the normal stream first
    for start in range(0, n, FILL_CHUNK):
        with client.redis.pipeline(transaction=False) as pipe:
            for _ in range(min(FILL_CHUNK, n - start)):
                fields = encode_request(
                    request_id=uuid.uuid4().hex, reply_to=reply_key, model=ref, data=raw,
                    dtype=dtype, shape=shape, submitted_at=time.time(),
                )  # fmt: skip
                args: list[Any] = [10**9]
                for name, value in fields.items():
                    args += [name, value]
                script(keys=keys, args=args, client=pipe)
            pipe.execute()


def drain(client: Client, worker: str, ref: str, array: Any, n: int) -> Row:
    """Fill the lane while the consumer is paused, resume, and take the worker's busy time."""
    reply_key = lane_reply_key(f"drain-{uuid.uuid4().hex}")
    lane_control(client, worker, "pause")
    fill(client, ref, array, n, reply_key)
    lane_control(client, worker, "resume")
    deadline = time.monotonic() + 600
    while int(client.redis.llen(reply_key)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError("the drain did not finish in 10 minutes")
        time.sleep(0.05)  # poll interval of a reader of Redis state (costs the worker nothing)
    status = lane_control(client, worker, "status")
    busy = float(status["busy_s_since_resume"])
    client.redis.delete(reply_key)
    mean_ms = busy * 1000 / n  # the drain has no per-request latency: its mean cost instead
    return summarise("lane_drain", SEED_MODEL, 1, 1, [mean_ms] * n, busy, busy_s=busy)


def run(plan: Plan, drain_n: int, log: Callable[[str], None]) -> dict[str, Any]:
    rows: list[Row] = []
    single = sample_inputs(1, list(INPUT_SHAPE))
    with bench_environment(spawn=True) as (settings, env):
        env["TORCHFLEET_TORCH_THREADS"] = str(plan.threads)
        ref, digest = register_model(settings, SEED_MODEL)
        log("floor")
        rows += floor_rows(settings, SEED_MODEL, digest, plan)
        client = Client(settings)
        logs = tempfile_dir()
        try:
            worker = launch_worker(env, plan, batching=True, log_dir=logs)
            try:
                wait_ready(client, worker)
                rows += celery_arms(client, plan, ref, single, log)
                rows += lane_arms("lane_batched", client, plan, ref, single, log, (1, 16))
                log(f"lane_drain: {drain_n} requests, the floor right before and after")
                rows.append(beside_drain(settings, digest, plan))
                rows.append(drain(client, worker.name, ref, single, drain_n))
                rows.append(beside_drain(settings, digest, plan))
            finally:
                stop_worker(worker)
            one_at_a_time = {**env, "TORCHFLEET_LANE_MAX_BATCH": "1"}
            worker = launch_worker(one_at_a_time, plan, batching=True, log_dir=logs)
            try:
                wait_ready(client, worker)
                rows += lane_arms("lane_unbatched", client, plan, ref, single, log, (16,))
            finally:
                stop_worker(worker)
        finally:
            client.close()
    figures = ratios(rows)
    return {
        "machine": machine(plan.device, plan.threads),
        "results": [asdict(r) for r in rows],
        "ratios": figures,
        "bars": bars(figures),
    }


def beside_drain(settings: Any, digest: str, plan: Plan) -> Row:
    """The batch-32 floor again, next to the drain: a shared host's speed drifts in seconds."""
    row = floor_rows(settings, SEED_MODEL, digest, plan)[1]
    return replace(row, arm="floor_beside_drain")


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="tf-bench-lane-")


def celery_arms(
    client: Client, plan: Plan, ref: str, single: Any, log: Callable[[str], None]
) -> list[Row]:
    rows = []
    log("celery_noop: 1 producer")
    lat, wall = drive(1, plan.jobs, task_call(client, TASK_NOOP, [None]), budget_s=plan.budget_s)
    rows.append(summarise("celery_noop", "-", 1, 1, lat, wall))
    log("fleet_batched: 16 producers")
    call = infer_call(client, ref, single)
    lat, wall = drive(16, max(plan.jobs, 64), call, budget_s=plan.budget_s)
    rows.append(summarise("fleet_batched", SEED_MODEL, 16, 1, lat, wall))
    log("naive: 16 producers")
    job = InferJob(model=ref, inputs=encode_array(single))
    naive = [job.model_dump(mode="json", exclude_none=True)]
    lat, wall = drive(16, 32, task_call(client, TASK_NAIVE_INFER, naive), budget_s=plan.budget_s)
    rows.append(summarise("naive", SEED_MODEL, 16, 1, lat, wall))
    return rows


def lane_arms(
    arm: str,
    client: Client,
    plan: Plan,
    ref: str,
    single: Any,
    log: Callable[[str], None],
    producers: tuple[int, ...],
) -> list[Row]:
    rows = []
    for p in producers:
        log(f"{arm}: {p} producers")
        jobs = max(plan.jobs * (8 if p > 1 else 2), 4 * p)
        lat, wall = drive(p, jobs, lane_call(client, ref, single), warmup=5, budget_s=plan.budget_s)
        rows.append(summarise(arm, SEED_MODEL, p, 1, lat, wall))
    return rows


def find(rows: list[Row], arm: str, producers: int = 1, inputs: int = 1) -> Row:
    return next(
        r for r in rows if (r.arm, r.producers, r.inputs_per_job) == (arm, producers, inputs)
    )


def ratios(rows: list[Row]) -> dict[str, float]:
    floor1, floor32 = find(rows, "floor"), find(rows, "floor", 1, 32)
    noop, lane1 = find(rows, "celery_noop"), find(rows, "lane_batched")
    lane16, unbatched16 = find(rows, "lane_batched", 16), find(rows, "lane_unbatched", 16)
    celery16, naive16 = find(rows, "fleet_batched", 16), find(rows, "naive", 16)
    drained = find(rows, "lane_drain")
    # The faster of the floors taken right before and right after the drain (conservative).
    beside = max(r.throughput for r in rows if r.arm == "floor_beside_drain")
    return {
        "floor_b1_p50_ms": floor1.p50_ms,
        "lane_p50_ms": lane1.p50_ms,
        "noop_p50_ms": noop.p50_ms,
        "lane_overhead_vs_noop": round((lane1.p50_ms - floor1.p50_ms) / noop.p50_ms, 3),
        "lane_vs_celery_16": round(lane16.throughput / celery16.throughput, 3),
        "lane_vs_naive_16": round(lane16.throughput / naive16.throughput, 3),
        "lane_batched_vs_unbatched_16": round(lane16.throughput / unbatched16.throughput, 3),
        "drain_vs_floor": round(drained.throughput / beside, 3),
        "drain_vs_first_floor": round(drained.throughput / floor32.throughput, 3),
    }


def bars(figures: dict[str, float]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (op, limit) in BARS.items():
        value = figures[name]
        passed = value <= limit if op == "<=" else value >= limit
        out[name] = {"value": value, "bar": f"{op} {limit}", "passed": passed}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="Requests per measurement.")
    parser.add_argument("--drain", type=int, default=3000, help="Requests the drain empties.")
    parser.add_argument("--budget-s", type=float, default=6.0, help="Seconds per measurement.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args()
    plan = Plan(models=(SEED_MODEL,), producers=(1, 16), jobs=args.jobs, budget_s=args.budget_s)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    report = run(plan, args.drain, log)
    if args.json:
        print(json.dumps(report))
        return
    for r in report["results"]:
        print(
            f"{r['arm']:15} p={r['producers']:2} in={r['inputs_per_job']:2} n={r['jobs']:5} "
            f"p50={r['p50_ms']:8.3f} ms p99={r['p99_ms']:8.3f} ms {r['throughput']:9.1f} inputs/s"
        )
    for name, value in report["ratios"].items():
        print(f"{name:30} {value}")
    for name, bar in report["bars"].items():
        print(f"{name:30} {bar['value']:8.3f} {bar['bar']:8} {'yes' if bar['passed'] else 'NO'}")


if __name__ == "__main__":
    main()
