"""Integration fixtures: one real redis-server and one real worker process per test session,
and a private chaos fleet per test for the tests that kill workers or Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from producers.client import Client
from shared.embedded import EmbeddedRedis
from shared.settings import Settings
from tests.fleet import WorkerProcess
from tests.integration.chaos_harness import ChaosFleet, open_fleet

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleet")


@pytest.fixture(scope="session")
def fleet_env(redis_server: EmbeddedRedis, fleet_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHFLEET_")}
    env.update(
        TORCHFLEET_REDIS_URL=redis_server.url,
        TORCHFLEET_ARTIFACTS=str(fleet_dir / "artifacts"),
        TORCHFLEET_TORCH_THREADS="1",
        TORCHFLEET_DATA_ROOTS=str(fleet_dir / "data"),
    )
    return env


@pytest.fixture(scope="session")
def fleet_settings(fleet_env: dict[str, str]) -> Settings:
    return Settings(
        redis_url=fleet_env["TORCHFLEET_REDIS_URL"], artifacts=fleet_env["TORCHFLEET_ARTIFACTS"]
    )


@pytest.fixture(scope="session")
def client(fleet_settings: Settings) -> Iterator[Client]:
    with Client(fleet_settings) as c:
        yield c


@pytest.fixture(scope="session")
def worker(fleet_env: dict[str, str], fleet_dir: Path, client: Client) -> Iterator[WorkerProcess]:
    process = WorkerProcess(env=fleet_env, log_dir=fleet_dir).start()
    try:
        process.wait_ready(client)
        yield process
    finally:
        process.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[ChaosFleet]:
    """A private chaos fleet: its own redis-server, workers started on demand (a module that
    needs other options defines its own ``fleet``)."""
    with open_fleet(tmp_path / "fleet") as chaos:
        yield chaos
