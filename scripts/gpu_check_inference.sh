#!/usr/bin/env bash
# Real-time inference checks on a CUDA host, as one script (issues 5 and 12, "On a GPU").
#   scripts/gpu_check_inference.sh [OUT_DIR]
# Runs the GPU-only unit tests (autocast, CUDA-event compute_ms, GPU lease by UUID, pinned
# copies, the lane consumer's batches) and `torchfleet bench` on resnet18 and the seed CNN
# with spawned CUDA workers: the Celery arms and the online lane's (lane_batched,
# lane_unbatched, the drain). Writes JSON and logs to OUT_DIR, then prints every model's
# bars (issue 12's: lane_overhead_vs_noop, lane_vs_celery_16, lane_vs_naive_16,
# lane_batched_vs_unbatched_16, drain_vs_floor) with the lane's and the floor's p50.
# A dry run of the same commands on a CPU host (a smaller sweep):
#   DEVICE=cpu MODELS=cifar_cnn PRODUCERS=1,16 DRAIN=500 THREADS=1 scripts/gpu_check_inference.sh
set -euo pipefail
out="${1:-${OUT:-gpu-out}}"
mkdir -p "$out"
py="${PYTHON:-.venv/bin/python}"
device="${DEVICE:-cuda}"
if [ "$device" = cuda ]; then
  "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(0))" \
    | tee "$out/device.txt"
fi
"$py" -m pytest -q tests/unit/test_cache.py tests/unit/test_devices.py tests/unit/test_batching.py \
  tests/unit/test_hostile_gpu.py tests/unit/test_lane_worker.py tests/unit/test_metrics.py \
  -p no:cacheprovider 2>&1 | tee "$out/pytest.txt"
# The drain empties 20,000 requests: a GPU runs resnet18 at thousands of inputs a second,
# and a drain of a few thousand would last less than the clock's noise.
"$py" -m producers.cli bench --spawn --json --device "$device" --threads "${THREADS:-4}" \
  --models "${MODELS:-resnet18,cifar_cnn}" --producers "${PRODUCERS:-1,4,16}" \
  --drain "${DRAIN:-20000}" > "$out/bench_$device.json" 2> "$out/bench_$device.log"
"$py" - "$out/bench_$device.json" <<'EOF' | tee "$out/bars.txt"
import json
import sys

from producers.bench.ratios import bars

report = json.load(open(sys.argv[1]))
print(f"{report['machine']['device']}, torch {report['machine']['torch']}")
for model, figures in report["ratios"].items():
    print(
        f"{model}: lane p50 {figures['lane_p50_ms']} ms at 1 producer, floor p50 "
        f"{figures['floor_b1_p50_ms']} ms at batch 1, Celery job p50 {figures['fleet_warm_p50_ms']} ms"
    )
    for name, bar in bars(figures).items():
        verdict = {None: "not measured", True: "passed", False: "MISSED"}[bar["passed"]]
        print(f"  {name:30} {bar['value']!s:>10}  {bar['bar']:>7}  {verdict}")
EOF
