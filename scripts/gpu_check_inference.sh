#!/usr/bin/env bash
# Real-time inference checks on a CUDA host, as one script (issue 5, "On a GPU").
#   scripts/gpu_check_inference.sh [OUT_DIR]
# Runs the GPU-only unit tests (autocast, CUDA-event compute_ms, GPU lease by UUID) and
# `torchfleet bench` on resnet18 with spawned CUDA workers; writes JSON and logs to OUT_DIR.
set -euo pipefail
out="${1:-${OUT:-gpu-out}}"
mkdir -p "$out"
py="${PYTHON:-.venv/bin/python}"
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(0))" \
  | tee "$out/device.txt"
"$py" -m pytest -q tests/unit/test_cache.py tests/unit/test_devices.py tests/unit/test_batching.py \
  -p no:cacheprovider 2>&1 | tee "$out/pytest.txt"
"$py" -m producers.cli bench --spawn --json --device cuda --threads 4 \
  --models resnet18,cifar_cnn --producers 1,4,16 > "$out/bench_cuda.json" 2> "$out/bench_cuda.log"
"$py" -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps(r['bars'], indent=1))" \
  "$out/bench_cuda.json"
