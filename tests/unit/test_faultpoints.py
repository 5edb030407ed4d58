"""The test-only stop point: off unless the setting names it, and then a real SIGSTOP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import Settings
from workers.faultpoints import REGISTERED, stop_point

CHILD = """
from shared.settings import Settings
from workers.faultpoints import stop_point
print("before", flush=True)
stop_point({point!r}, Settings(fault_stop_at="registered", _env_file=None))
print("after", flush=True)
"""


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_an_unset_or_other_point_does_not_stop() -> None:
    stop_point(REGISTERED, Settings(_env_file=None))  # type: ignore[call-arg]
    stop_point("elsewhere", Settings(fault_stop_at=REGISTERED, _env_file=None))  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Settings(fault_stop_at="anywhere", _env_file=None)  # type: ignore[call-arg]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_named_point_stops_the_process_until_it_is_continued() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(point=REGISTERED)],
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("TORCHFLEET_")},
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "before\n"
        deadline = time.monotonic() + 30
        while process_state(child.pid) != "T":
            assert time.monotonic() < deadline, "the child never stopped"
            time.sleep(0.01)  # the child's process state is the thing waited on
        os.kill(child.pid, signal.SIGCONT)
        assert child.stdout.readline() == "after\n"
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()
