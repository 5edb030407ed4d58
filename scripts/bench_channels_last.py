"""Channels-last vs NCHW for the zoo's CNNs on this machine, through the worker's loader.

    .venv/bin/python scripts/bench_channels_last.py            # a table
    .venv/bin/python scripts/bench_channels_last.py --json     # one JSON object

The figures behind the `channels_last` setting (on by default): p50 of ``--iters`` forward
calls after five warm-ups, interleaved per model and batch size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from shared.manifest import Manifest
from workers.artifacts import ArtifactStore
from workers.cache import load_model
from workers.zoo import create_model


def p50_ms(forward: object, batch: torch.Tensor, iters: int) -> float:
    times = []
    for i in range(iters + 5):
        start = time.perf_counter()
        forward(batch)  # type: ignore[operator]
        if i >= 5:
            times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cifar_cnn,resnet18")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = ArtifactStore(folder)
        for arch in args.models.split(","):
            module = create_model(arch).eval()
            manifest = Manifest(arch=arch, input_shape=[3, 32, 32], num_classes=10)
            digest = store.put_model(module.state_dict(), manifest).sha256
            plain = load_model(store, digest, torch.device("cpu"), channels_last=False)
            fast = load_model(store, digest, torch.device("cpu"), channels_last=True)
            for size in (int(b) for b in args.batches.split(",")):
                batch = torch.randn(size, 3, 32, 32)
                iters = args.iters if size == 1 else max(5, args.iters // 3)
                nchw, cl = p50_ms(plain.forward, batch, iters), p50_ms(fast.forward, batch, iters)
                rows.append({"model": arch, "batch": size, "nchw_ms": nchw, "channels_last_ms": cl})
    if args.json:
        print(json.dumps({"threads": args.threads, "results": rows}))
        return
    for r in rows:
        speedup = r["nchw_ms"] / r["channels_last_ms"]
        print(
            f"{r['model']:10} batch {r['batch']:3}: NCHW {r['nchw_ms']:8.2f} ms, "
            f"channels-last {r['channels_last_ms']:8.2f} ms ({speedup:.2f}x)"
        )


if __name__ == "__main__":
    main()
