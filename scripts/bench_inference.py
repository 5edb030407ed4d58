"""Real-time inference bars: the same run as `torchfleet bench`, from a script.

    .venv/bin/python scripts/bench_inference.py --spawn            # full sweep, rich table
    .venv/bin/python scripts/bench_inference.py --spawn --json     # one JSON document
    .venv/bin/python scripts/bench_inference.py --spawn --quick    # the seed CNN, < 1 min

Every option of `torchfleet bench --help` passes through. ``--spawn`` starts a private
redis-server and worker processes; without it the running fleet is measured.
"""

from __future__ import annotations

import sys

from producers.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]])
