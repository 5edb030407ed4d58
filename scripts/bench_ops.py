"""What the operations commands cost: `stats` over a full stream, `status`, group summaries.

    .venv/bin/python scripts/bench_ops.py                 # 100k records (the stream's cap)
    .venv/bin/python scripts/bench_ops.py --records 20000 --json

Fills a private, embedded redis-server with synthetic stats records (8 workers x 4 models x
2 variants, realistic latency fields) and times what the producer does: read the stream with
XRANGE and aggregate it (`torchfleet stats`), the same for a `--since` window and one model,
`torchfleet status` (heartbeats, queue lanes, dead letters), and a 1000-member group summary
from result metas. No worker and no torch are needed.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from producers.client import Client
from shared.embedded import EmbeddedRedis
from shared.names import KEY_STATS, KEY_WORKER
from shared.settings import Settings
from shared.stats import member_from_meta, summarize_group


def fill(client: Client, records: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    now = time.time()
    with client.redis.pipeline(transaction=False) as pipe:
        for i in range(records):
            total = rng.lognormvariate(0.5, 0.6)
            entry = {
                "kind": "infer",
                "job_id": f"j{i}",
                "outcome": "success" if rng.random() > 0.01 else "bad_tensor",
                "ts": f"{now - (records - i) * 0.01:.6f}",
                "model": f"model-{i % 4}",
                "variant": "base" if i % 2 else "int8",
                "device": "cpu",
                "worker": f"w{i % 8}@host",
                "batch_size": "8",
                "inputs": "4",
                "queued_ms": f"{rng.expovariate(1.0):.3f}",
                "batch_wait_ms": f"{rng.random():.3f}",
                "load_ms": "0.0",
                "preprocess_ms": f"{total * 0.1:.3f}",
                "compute_ms": f"{total * 0.7:.3f}",
                "postprocess_ms": f"{total * 0.05:.3f}",
                "total_worker_ms": f"{total:.3f}",
                "wall_ms": f"{total * 1.2:.3f}",
            }
            # The entry id carries the record's time, as it does when workers append live.
            stamp = f"{int(float(entry['ts']) * 1000)}-{i}"
            pipe.xadd(KEY_STATS, entry, id=stamp)  # type: ignore[arg-type]
            if i % 5000 == 4999:
                pipe.execute()
        for w in range(8):
            record = {"name": f"w{w}@host", "device": "cpu", "queues": ["infer"], "cached": []}
            pipe.set(f"{KEY_WORKER}w{w}@host", json.dumps(record), ex=600)
        pipe.execute()


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "min_ms": round(min(times), 2)}


def group_metas(members: int) -> list[dict[str, Any]]:
    result = {
        "model": "m",
        "version": 1,
        "variant": "base",
        "worker": "w",
        "accuracy": 0.75,
        "predictions": [[{"label": 1, "score": 0.9}]] * 4,
        "latency": {"total_worker_ms": 1.5, "compute_ms": 1.0},
    }
    return [{"status": "SUCCESS", "result": result} for _ in range(members)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with EmbeddedRedis() as server:
        settings = Settings(redis_url=server.url, artifacts="/tmp/tf-bench-ops")
        with Client(settings) as client:
            fill(client, args.records)
            metas = group_metas(1000)
            figures = {
                "stats_all": timed(lambda: client.stats(), args.repeat),
                "stats_since_60s": timed(lambda: client.stats(since_s=60), args.repeat),
                "stats_one_model": timed(lambda: client.stats(model="model-1"), args.repeat),
                "status": timed(client.status, args.repeat * 10),
                "group_summary_1000": timed(
                    lambda: summarize_group("g", [member_from_meta(m) for m in metas]),
                    args.repeat * 10,
                ),
            }
    report = {
        "records": args.records,
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "figures": figures,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.records} stats records, {report['machine']}, Python {report['python']}")
    for name, value in figures.items():
        print(f"  {name:<20} median {value['median_ms']:>9.2f} ms   min {value['min_ms']:>9.2f} ms")


if __name__ == "__main__":
    main()
