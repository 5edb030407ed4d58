"""`torchfleet demo` from start to finish: its own embedded Redis, its own worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
REQUESTS = 12


def check_path(row: dict[str, Any]) -> None:
    """A path's row: every digit answered from the warm cache, figures that fit together."""
    assert row["requests"] == REQUESTS and 0 <= row["accuracy"] <= 1
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert 0 < row["forward_p50_ms"] <= row["worker_p50_ms"]
    assert row["cache_hits"] >= row["requests"] - 1 and row["throughput"] > 0


def test_demo_trains_quantizes_serves_and_reports(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHFLEET_")}
    env["TORCHFLEET_ARTIFACTS"] = str(tmp_path / "artifacts")
    command = [
        sys.executable, "-m", "producers.cli", "demo",
        "--embedded", "--epochs", "1", "--requests", str(REQUESTS), "--json",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    variants = {row["variant"]: row for row in summary["variants"]}
    assert "base" in variants and len(variants) >= 2
    for row in variants.values():
        for path in ("jobs", "lane", "lane_1"):
            check_path(row[path])
        # The lane answers the same digits as the job path does (dynamic int8 quantizes
        # activations per batch, so a near-tie may flip between batch sizes: most, not all).
        assert row["lane"]["agree_with_jobs"] >= 0.75
        assert row["lane_1"]["agree_with_jobs"] >= 0.75
        assert abs(row["lane"]["accuracy"] - row["jobs"]["accuracy"]) <= 0.25
        assert row["lane_1"]["producers"] == 1 and row["lane_1"]["mean_batch"] == 1
    assert variants["base"]["lane"]["agree_with_jobs"] == 1
    assert min(r["size_bytes"] for r in variants.values()) < variants["base"]["size_bytes"]
    assert "embedded" in done.stderr
