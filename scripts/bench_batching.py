"""Micro-batching on vs off, interleaved: the A/B behind `batched_vs_unbatched_16`.

    .venv/bin/python scripts/bench_batching.py                        # resnet18 and the seed CNN
    .venv/bin/python scripts/bench_batching.py --models cifar_cnn --rounds 5 --json

Each round launches a fresh batched worker, then a fresh unbatched one, on a private
redis-server, and drives the same number of 1-input jobs from the same number of producers
through each; medians over rounds damp a busy host's drift better than one long run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from typing import Any

from producers.bench.load import drive, infer_call, sample_inputs
from producers.bench.plan import INPUT_SHAPE, Plan
from producers.bench.run import bench_environment
from producers.client import Client
from producers.encoding import encode_array
from workers.bench.floor import machine
from workers.bench.harness import bench_worker, register_bench_model


def ab(arch: str, *, rounds: int, producers: int, jobs: int, threads: int) -> dict[str, Any]:
    """Inputs/s with batching on and off, round by round, for one architecture."""
    runs: dict[str, list[float]] = {"batched": [], "unbatched": []}
    with bench_environment(True) as (settings, env), tempfile.TemporaryDirectory() as logs:
        env["TORCHFLEET_TORCH_THREADS"] = str(threads)
        ref = register_bench_model(settings, arch).ref
        payload = encode_array(sample_inputs(1, list(INPUT_SHAPE)))
        with Client(settings) as client:
            for _ in range(rounds):
                for arm, batching in (("batched", True), ("unbatched", False)):
                    worker = bench_worker(
                        env,
                        batching=batching,
                        concurrency=Plan().concurrency,
                        device="cpu",
                        log_dir=logs,
                    )
                    try:
                        worker.wait_ready(client)
                        latencies, wall = drive(producers, jobs, infer_call(client, ref, payload))
                    finally:
                        worker.stop()
                    runs[arm].append(round(len(latencies) / wall, 2))
    batched, unbatched = (statistics.median(runs[a]) for a in ("batched", "unbatched"))
    return {
        "model": arch,
        "producers": producers,
        "jobs": jobs,
        "runs": runs,
        "batched_median": batched,
        "unbatched_median": unbatched,
        "ratio": round(batched / unbatched, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet18,cifar_cnn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=240)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args()
    results = [
        ab(arch, rounds=args.rounds, producers=args.producers, jobs=args.jobs, threads=args.threads)
        for arch in args.models.split(",")
    ]
    report = {"machine": machine("cpu", args.threads), "results": results}
    if args.json:
        print(json.dumps(report))
        return
    print(json.dumps(report["machine"]))
    for r in results:
        print(
            f"{r['model']:10} {r['producers']} producers: batched {r['batched_median']:.0f} "
            f"vs unbatched {r['unbatched_median']:.0f} inputs/s -> {r['ratio']:.2f}x "
            f"(rounds {r['runs']['batched']} / {r['runs']['unbatched']})"
        )


if __name__ == "__main__":
    main()
