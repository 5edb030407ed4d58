"""The compose commands the test runs, word for word as README.md and docs/operations.md give
them (tests/unit/test_compose.py checks that each one is there, so they cannot drift).

The test may append arguments that change only the output (``--json``, a timeout) or the
job id. ``$PWD`` stands for the test's work folder. Compose v2's ``up --wait`` is not used:
v1 does not know it (it prints its usage and exits 0), so the test polls the containers'
health instead, as ``docker compose ps`` shows it.
"""

from __future__ import annotations

BUILD = "docker compose build cpu-worker producer"
UP = "docker compose up -d"
PS = "docker compose ps"
SCALE = "docker compose up -d --scale cpu-worker=3"
STATUS = "docker compose run --rm producer torchfleet status"
TRAIN = (
    "docker compose run --rm producer torchfleet submit train --model-name digits --arch mlp "
    "--epochs 3 --wait"
)
COMPRESS = "docker compose run --rm producer torchfleet submit compress --source digits --wait"
WITH_JOBS = 'docker compose run --rm -v "$PWD/jobs:/jobs:ro" producer'
SUBMIT_FILE = f"{WITH_JOBS} torchfleet submit"
INFER_NPY = f"{WITH_JOBS} torchfleet submit infer --model digits --input /jobs/batch.npy --wait"
INFER_IMAGES = (
    f"{WITH_JOBS} torchfleet submit infer --model digits --input /jobs/0.png --input /jobs/1.png "
    "--wait"
)
WAIT = "docker compose run --rm producer torchfleet wait"
RESTART_REDIS = "docker compose restart redis"
STOP_WORKERS = "docker compose stop cpu-worker"
DOWN = "docker compose down -v"

README_COMMANDS = (
    BUILD, UP, PS, SCALE, STATUS, TRAIN, COMPRESS, SUBMIT_FILE, INFER_NPY, INFER_IMAGES, WAIT,
    RESTART_REDIS, STOP_WORKERS, DOWN,
)  # fmt: skip
