"""The load-and-soak part of the chaos report: many inference jobs from many producers
against one worker, watching errors, lost results and the worker's memory."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.names import KEY_STATS
from workers.bench.chaosfleet import (
    RESULT_PREFIX,
    ClientFactory,
    drain,
    open_fleet,
    register_cnn,
)

DRAIN_S = 240.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_at(series: list[tuple[int, float]], done: int, default: float) -> float:
    """The worker's RSS at the first sample where it had finished ``done`` jobs."""
    return next((rss for count, rss in series if count >= done), default)


def by_progress(series: list[tuple[int, float]], jobs: int) -> dict[str, float]:
    """RSS when 20, 40, 60, 80 and 100 % of the jobs were done."""
    last = series[-1][1] if series else 0.0
    return {f"{p}%": round(rss_at(series, jobs * p // 100, last), 1) for p in (20, 40, 60, 80, 100)}


def run_soak(jobs: int, producers: int, root: Path, client: ClientFactory) -> dict[str, Any]:
    """The soak on a fresh private fleet under ``root``; its figures."""
    fleet = open_fleet(root / "soak", client=client)
    try:
        worker = fleet.worker(concurrency=8, batching=True)
        model = register_cnn(fleet.settings)
        inputs = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
        warm = [fleet.client.submit_infer(model, inputs, job_id=f"warm-{i}") for i in range(50)]
        drain(fleet.client, warm, DRAIN_S)
        assert worker.pid is not None
        rss_warm = rss_mb(worker.pid)
        rss_peak = rss_warm
        errors: list[str] = []
        finished: dict[str, str] = {}
        lock = threading.Lock()

        def produce(index: int) -> None:
            own = client(fleet.settings)
            try:
                ids = []
                for i in range(index, jobs, producers):
                    try:
                        ids.append(own.submit_infer(model, inputs, job_id=f"soak-{i}"))
                    except Exception as e:
                        with lock:
                            errors.append(f"submit soak-{i}: {type(e).__name__}: {e}")
                for job_id, state in drain(own, ids, DRAIN_S * 2).items():
                    with lock:
                        finished[job_id] = state.status
            finally:
                own.close()

        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        series: list[tuple[int, float]] = []  # (jobs the worker finished, its RSS in MB)
        while any(t.is_alive() for t in threads):
            rss = rss_mb(worker.pid)
            rss_peak = max(rss_peak, rss)
            series.append((int(fleet.client.redis.xlen(KEY_STATS)) - len(warm), rss))
            threads[0].join(0.5)  # sample the worker's memory while the producers run
        elapsed = time.monotonic() - started
        rss_end = rss_mb(worker.pid)
        failed = [j for j, status in finished.items() if status != "SUCCESS"]
        sample = list(finished)[:: max(1, len(finished) // 100)]
        ttls = [int(fleet.client.redis.ttl(RESULT_PREFIX + j)) for j in sample]
        return {
            "jobs": jobs,
            "producers": producers,
            "completed": sum(1 for s in finished.values() if s == "SUCCESS"),
            "errors": len(errors) + len(failed),
            "error_samples": (errors + failed)[:5],
            "lost": jobs - len(finished) - len(errors),
            "elapsed_s": round(elapsed, 2),
            "jobs_per_s": round(jobs / elapsed, 1),
            "rss_after_warmup_mb": round(rss_warm, 1),
            "rss_peak_mb": round(rss_peak, 1),
            "rss_end_mb": round(rss_end, 1),
            "rss_growth_mb": round(rss_end - rss_warm, 1),
            "rss_growth_pct": round(100 * (rss_end - rss_warm) / rss_warm, 1),
            "rss_by_progress_mb": by_progress(series, jobs),
            "rss_growth_after_20pct_mb": round(rss_end - rss_at(series, jobs // 5, rss_warm), 1),
            "result_ttl_s": fleet.settings.result_ttl_s,
            "result_keys_with_ttl": sum(1 for t in ttls if 0 < t <= fleet.settings.result_ttl_s),
            "result_keys_sampled": len(ttls),
        }
    finally:
        fleet.close()
