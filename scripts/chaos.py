"""The chaos report (see :mod:`workers.bench.chaos_report`), with the producers' Client.

Run:   .venv/bin/python scripts/chaos.py [queue|lane|soak|all] [--jobs N] [--producers P]
                         [--lane-requests N] [--lane-producers P] [--seed S] [--json]
"""

import sys

from producers.client import Client
from workers.bench.chaos_report import main

if __name__ == "__main__":
    sys.exit(main(Client))
