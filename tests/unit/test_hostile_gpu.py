"""GPU faults on a real GPU (skipped without CUDA; the CPU runs the same logic by fault
injection in tests/integration/test_chaos.py): a real out-of-memory is answered with
smaller batches, a real device-side assert is recognised as fatal."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from workers.batching import forward_with_oom_backoff

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_a_real_cuda_oom_is_answered_with_smaller_batches() -> None:
    free, _ = torch.cuda.mem_get_info()
    per_item = free // 3  # two items fit, four do not
    seen: list[int] = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        seen.append(len(batch))
        scratch = torch.empty(len(batch) * per_item, dtype=torch.uint8, device="cuda")
        del scratch
        return batch * 2

    batch = torch.arange(4.0, device="cuda").view(4, 1)
    out = forward_with_oom_backoff(forward, batch)
    assert out.view(-1).tolist() == [0.0, 2.0, 4.0, 6.0]
    assert seen[0] == 4 and max(seen[1:]) <= 2


def test_a_device_side_assert_is_fatal_for_the_worker() -> None:
    # A device-side assert poisons the CUDA context: run it in a process of its own.
    code = (
        "import torch\n"
        "from workers.faults import is_fatal_device_error\n"
        "x = torch.zeros(2, device='cuda')\n"
        "try:\n"
        "    x[torch.tensor([7], device='cuda')].sum().item()\n"
        "except Exception as e:\n"
        "    print('FATAL' if is_fatal_device_error(e) else f'NOT FATAL: {e!r}')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "FATAL" in done.stdout and "NOT FATAL" not in done.stdout, done.stdout + done.stderr
