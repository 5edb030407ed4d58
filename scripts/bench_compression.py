"""Compression bars, measured side by side in one run on this machine's CPU.

    .venv/bin/python scripts/bench_compression.py            # full run
    .venv/bin/python scripts/bench_compression.py --quick    # fewer epochs and timed runs
    .venv/bin/python scripts/bench_compression.py --json     # one JSON document on stdout

Every model is trained here on scikit-learn's digits with a small loop (nothing is
downloaded), then compressed with the same step handlers a compress job runs, and timed
against its float source in one interleaved loop (see workers/compression/evaluation.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from shared.jobs import (
    DatasetSpec,
    DistillStep,
    FinetuneStep,
    PruneStructuredStep,
    QuantizeDynamicStep,
    QuantizeStaticStep,
)
from shared.manifest import Manifest
from workers.artifacts import ArtifactStore, from_safetensors, to_safetensors
from workers.compression import METHODS
from workers.compression.distillation import (
    cross_entropy,
    distill,
    train_epochs,
)
from workers.compression.evaluation import (
    accuracy,
    batch_of,
    candidate,
    count_weights,
    flips,
    latencies,
    predictions,
    stored_tensors,
)
from workers.compression.steps import ModelState, Sample, StepEnv
from workers.modelio import build_module
from workers.zoo.datasets import load_dataset
from workers.zoo.models import MODELS, create_model

CPU = torch.device("cpu")
TRAINED: dict[tuple[Any, ...], torch.nn.Module] = {}
DIGITS: dict[tuple[int, int], tuple[Dataset[Sample], Dataset[Sample]]] = {}


@dataclass(frozen=True)
class Setup:
    quick: bool
    iters: int
    warmup: int
    seeds: tuple[int, ...]
    store: ArtifactStore


def env_for(train: Dataset[Sample], val: Dataset[Sample], store: ArtifactStore) -> StepEnv:
    return StepEnv(train=train, val=val, num_classes=10, device=CPU, store=store)


def digits(channels: int, size: int) -> tuple[Dataset[Sample], Dataset[Sample]]:
    if (channels, size) not in DIGITS:
        spec = DatasetSpec(name="digits", channels=channels, image_size=size)  # type: ignore[arg-type]
        bundle = load_dataset(spec)
        DIGITS[channels, size] = (bundle.train, bundle.val)
    return DIGITS[channels, size]


def two_channel(data: Dataset[Sample]) -> Dataset[Sample]:
    """Digits at 1x16x16, doubled to 2x16x16 = 512 features (the bar's MLP input width)."""
    images = torch.stack([data[i][0] for i in range(len(data))])  # type: ignore[arg-type]
    labels = torch.stack([data[i][1] for i in range(len(data))])  # type: ignore[arg-type]
    return TensorDataset(images.repeat(1, 2, 1, 1), labels)  # type: ignore[return-value]


def train(
    arch: str, kwargs: dict[str, Any], data: Dataset[Sample], epochs: int, lr: float, seed: int = 0
) -> torch.nn.Module:
    """A small Adam loop: enough for digits, which is all the bars need (cached per run)."""
    key = (arch, tuple(sorted(kwargs.items())), id(data), epochs, lr, seed)
    if key not in TRAINED:
        TRAINED[key] = fit(arch, kwargs, data, epochs, lr, seed)
    return TRAINED[key]


def fit(
    arch: str, kwargs: dict[str, Any], data: Dataset[Sample], epochs: int, lr: float, seed: int
) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = create_model(arch, **kwargs)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    train_epochs(
        module,
        data,
        cross_entropy,
        optimizer,
        epochs=epochs,
        batch_size=64,
        device=CPU,
        seed=seed,
    )
    return module.eval()


def source(
    module: torch.nn.Module, arch: str, kwargs: dict[str, Any], shape: list[int]
) -> ModelState:
    manifest = Manifest(arch=arch, arch_kwargs=kwargs, input_shape=shape, num_classes=10)
    return ModelState(module=module, manifest=manifest)


def measure(
    states: dict[str, ModelState], val: Dataset[Sample], batch: int, setup: Setup
) -> dict[str, dict[str, Any]]:
    """Accuracy, size, parameters and p50/p95 latency of each state, timed side by side."""
    models = {name: candidate(state, CPU) for name, state in states.items()}
    timing = latencies(models, batch_of(val, batch), iters=setup.iters, warmup=setup.warmup)
    rows = {}
    answers = {name: predictions(model, val) for name, model in models.items()}
    for name, state in states.items():
        tensors, size = stored_tensors(state.module, state.manifest)
        rebuilt = build_module(state.manifest, from_safetensors_roundtrip(tensors))
        sample = batch_of(val, 8)
        with torch.inference_mode():
            same = bool(torch.allclose(rebuilt(sample), state.module(sample), atol=1e-4))
        predicted, labels = answers[name]
        rows[name] = {
            "accuracy": round(100.0 * int((predicted == labels).sum()) / len(labels), 2),
            "wrong": int((predicted != labels).sum()),
            "val_images": len(labels),
            "size_bytes": size,
            "parameters": count_weights(state.module),
            "p50_ms": round(timing[name].p50_ms, 3),
            "p95_ms": round(timing[name].p95_ms, 3),
            "min_ms": round(timing[name].min_ms, 3),
            "rebuilds_from_safetensors": same,
        }
        if name != "float" and "float" in answers:
            rows[name]["vs_float"] = paired(answers["float"][0], predicted, labels)
    return rows


def paired(source: torch.Tensor, other: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Images the compressed model fixed and broke against its float source, and the exact
    two-sided sign-test p-value of that split (McNemar): a one-image gain is noise."""
    from scipy.stats import binomtest

    change = flips(source, other, labels)
    changed = change.fixed + change.broken
    p_value = binomtest(change.fixed, changed, 0.5).pvalue if changed else 1.0
    return {
        "fixed": change.fixed,
        "broken": change.broken,
        "net_images": change.net,
        "images": change.total,
        "p_value": round(float(p_value), 3),
    }


def from_safetensors_roundtrip(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return from_safetensors(to_safetensors(tensors), what="bench")


def compare(
    name: str, rows: dict[str, dict[str, Any]], batch: int, targets: dict[str, float]
) -> dict[str, Any]:
    base, var = rows["float"], rows["compressed"]
    speedup = base["p50_ms"] / var["p50_ms"]
    smaller = base["size_bytes"] / var["size_bytes"]
    drop = base["accuracy"] - var["accuracy"]
    checks = [speedup >= targets.get("speedup", 0), drop <= targets.get("max_drop", 100)]
    if "smaller" in targets:
        checks.append(smaller >= targets["smaller"])
    return {
        "bar": name,
        "batch": batch,
        "float": base,
        "compressed": var,
        "speedup": round(speedup, 2),
        "speedup_min": round(base["min_ms"] / var["min_ms"], 2),
        "size_ratio": round(smaller, 2),
        "accuracy_drop_pt": round(drop, 2),
        "vs_float": var["vs_float"],
        "targets": targets,
        "passed": all(checks),
    }


# ------------------------------------------------------------------ the bars
def cnn_epochs(setup: Setup) -> int:
    return 4 if setup.quick else 10


def bar_dynamic(setup: Setup) -> dict[str, Any]:
    train_set, val = digits(1, 16)
    train_set, val = two_channel(train_set), two_channel(val)
    kwargs = {"num_classes": 10, "in_channels": 2, "image_size": 16, "hidden": 1024, "depth": 2}
    module = train("mlp", kwargs, train_set, epochs=3 if setup.quick else 8, lr=1e-3)
    float_state = source(module, "mlp", kwargs, [2, 16, 16])
    env = env_for(train_set, val, setup.store)
    int8 = METHODS.apply(QuantizeDynamicStep(), float_state, env)
    rows = measure({"float": float_state, "compressed": int8}, val, 64, setup)
    targets = {"speedup": 2.5, "smaller": 3.5, "max_drop": 0.5}
    return compare("dynamic int8, MLP 512-1024-1024-10", rows, 64, targets)


def bar_static(arch: str, size: int, epochs: int, setup: Setup) -> dict[str, Any]:
    train_set, val = digits(3, size)
    kwargs = {"num_classes": 10, "in_channels": 3, "image_size": size}
    module = train(arch, kwargs, train_set, epochs=epochs, lr=1e-3)
    float_state = source(module, arch, kwargs, [3, size, size])
    env = env_for(train_set, val, setup.store)
    step = QuantizeStaticStep(calibration_samples=256)
    int8 = METHODS.apply(step, float_state, env)
    rows = measure({"float": float_state, "compressed": int8}, val, 32, setup)
    label = f"static int8, {arch} 3x{size}x{size}"
    return compare(label, rows, 32, {"speedup": 2.0, "max_drop": 1.0})


def bar_structured(setup: Setup) -> dict[str, Any]:
    train_set, val = digits(3, 32)
    kwargs = {"num_classes": 10, "in_channels": 3, "image_size": 32}
    module = train("cifar_cnn", kwargs, train_set, epochs=cnn_epochs(setup), lr=1e-3)
    float_state = source(module, "cifar_cnn", kwargs, [3, 32, 32])
    env = env_for(train_set, val, setup.store)
    pruned = METHODS.apply(PruneStructuredStep(amount=0.5), float_state, env)
    tuned = METHODS.apply(FinetuneStep(epochs=2 if setup.quick else 4, lr=0.01), pruned, env)
    rows = measure({"float": float_state, "compressed": tuned}, val, 32, setup)
    return compare(
        "structured 50% channels + fine-tune, cifar_cnn",
        rows,
        32,
        {"speedup": 1.8, "max_drop": 2.0},
    )


def bar_distill(setup: Setup) -> dict[str, Any]:
    """Teacher cifar_cnn at 1x8x8; student mlp(hidden=72, depth=1), about 25% of it."""
    train_set, val = digits(1, 8)
    kwargs = {"num_classes": 10, "in_channels": 1, "image_size": 8}
    teacher = train("cifar_cnn", kwargs, train_set, epochs=15 if setup.quick else 20, lr=3e-3)
    student_kwargs = {**kwargs, "hidden": 72, "depth": 1}
    epochs = 15 if setup.quick else 30
    distilled: list[float] = []
    scratch: list[float] = []
    for seed in setup.seeds:
        for alpha, bucket in ((0.7, distilled), (0.0, scratch)):
            torch.manual_seed(seed)
            student = create_model("mlp", **student_kwargs)
            step = DistillStep(
                student_kwargs={"hidden": 72, "depth": 1},
                temperature=4.0,
                alpha=alpha,
                epochs=epochs,
                lr=3e-3,
                seed=seed,
            )
            distill(teacher, student, train_set, step, CPU)
            state = source(student.eval(), "mlp", student_kwargs, [1, 8, 8])
            bucket.append(accuracy(candidate(state, CPU), val))
    teacher_acc = accuracy(candidate(source(teacher, "cifar_cnn", kwargs, [1, 8, 8]), CPU), val)
    mean_kd = statistics.mean(distilled)
    return {
        "bar": "distilled student (mlp hidden=72) vs teacher cifar_cnn, 1x8x8",
        "teacher_accuracy": round(teacher_acc, 2),
        "teacher_parameters": count_weights(teacher),
        "student_parameters": count_weights(create_model("mlp", **student_kwargs)),
        "seeds": list(setup.seeds),
        "distilled_accuracy": [round(a, 2) for a in distilled],
        "scratch_accuracy": [round(a, 2) for a in scratch],
        "distilled_mean": round(mean_kd, 2),
        "scratch_mean": round(statistics.mean(scratch), 2),
        "gap_to_teacher_pt": round(teacher_acc - mean_kd, 2),
        "targets": {"max_gap_pt": 1.5},
        "passed": teacher_acc - mean_kd <= 1.5,
    }


# ------------------------------------------------------------------ output
def machine() -> dict[str, Any]:
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "quantized_engine": torch.backends.quantized.engine,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"# {m['cpu']}, {m['cores']} cores, torch {m['torch']}, engine {m['quantized_engine']}")
    print(
        f"# torch threads {m['torch_threads']}, {report['iters']} timed runs per model, "
        f"load average at start {m['load_average_at_start']}, at end {m['load_average_at_end']}, "
        f"{report['seconds']:.0f} s"
    )
    print("# speed-up = float p50 / compressed p50 (min: the same ratio of the fastest runs)")
    print(
        "# fixed/broken: validation images the compressed model gets right where the float "
        "one was wrong, and the reverse; p: exact sign test of that split (p > 0.05: no "
        "measurable accuracy change)"
    )
    header = (
        f"{'bar':<48} {'batch':>5} {'float p50':>10} {'cmp p50':>9} {'speedup':>8} "
        f"{'(min)':>7} {'size x':>7} {'acc f':>6} {'acc c':>6} {'drop':>6} "
        f"{'fixed/broken':>12} {'p':>5}  pass"
    )
    print(header)
    print("-" * len(header))
    for bar in report["bars"]:
        if "float" not in bar:
            continue
        f, c = bar["float"], bar["compressed"]
        print(
            f"{bar['bar']:<48} {bar['batch']:>5} {f['p50_ms']:>8.2f}ms {c['p50_ms']:>7.2f}ms "
            f"{bar['speedup']:>7.2f}x {bar['speedup_min']:>6.2f}x {bar['size_ratio']:>6.2f}x "
            f"{f['accuracy']:>6.2f} "
            f"{c['accuracy']:>6.2f} {bar['accuracy_drop_pt']:>6.2f} "
            f"{bar['vs_float']['fixed']:>5}/{bar['vs_float']['broken']:<6} "
            f"{bar['vs_float']['p_value']:>5.2f}  "
            f"{'yes' if bar['passed'] else 'NO'}  (targets {bar['targets']})"
        )
    for bar in report["bars"]:
        if "teacher_accuracy" in bar:
            print(
                f"\n{bar['bar']}: teacher {bar['teacher_accuracy']}% "
                f"({bar['teacher_parameters']} params), student {bar['student_parameters']} params"
                f"\n  distilled {bar['distilled_accuracy']} mean {bar['distilled_mean']}"
                f"\n  scratch   {bar['scratch_accuracy']} mean {bar['scratch_mean']}"
                f"\n  gap to teacher {bar['gap_to_teacher_pt']} pt "
                f"(target <= 1.5): {'yes' if bar['passed'] else 'NO'}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and timed runs")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--iters", type=int, default=None, help="timed runs per model")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument("--skip-resnet", action="store_true", help="leave out resnet18")
    parser.add_argument(
        "--only", choices=["dynamic", "static", "structured", "distill"], action="append"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    iters = args.iters or (30 if args.quick else 100)
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(
            quick=args.quick,
            iters=iters,
            warmup=max(3, iters // 10),
            seeds=(0, 1, 2),
            store=ArtifactStore(tmp),
        )
        report: dict[str, Any] = {"machine": machine(), "quick": args.quick, "iters": iters}
        only = set(args.only or ["dynamic", "static", "structured", "distill"])
        bars = []
        if "dynamic" in only:
            bars.append(bar_dynamic(setup))
        if "static" in only:
            bars.append(bar_static("cifar_cnn", 32, cnn_epochs(setup), setup))
            if not args.skip_resnet and "resnet18" in MODELS:
                bars.append(bar_static("resnet18", 16, 1 if args.quick else 3, setup))
        if "structured" in only:
            bars.append(bar_structured(setup))
        if "distill" in only:
            bars.append(bar_distill(setup))
        report["bars"] = bars
        report["seconds"] = round(time.perf_counter() - started, 1)
        report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
