"""`torchfleet demo` from start to finish: its own embedded Redis, its own worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_trains_quantizes_serves_and_reports(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHFLEET_")}
    env["TORCHFLEET_ARTIFACTS"] = str(tmp_path / "artifacts")
    command = [
        sys.executable, "-m", "producers.cli", "demo",
        "--embedded", "--epochs", "1", "--requests", "12", "--json",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    variants = {row["ref"].rsplit(":", 1)[-1]: row for row in summary["variants"]}
    assert "base" in variants and len(variants) >= 2
    for row in variants.values():
        assert row["jobs"] == 12 and 0 <= row["accuracy"] <= 1
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["cache_hits"] >= row["jobs"] - 1 and row["throughput"] > 0
    assert min(r["size_bytes"] for r in variants.values()) < variants["base"]["size_bytes"]
    assert "embedded" in done.stderr
