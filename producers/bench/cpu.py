"""CPU time per request, from ``/proc``: the steady figure on a shared, loaded host.

Wall-clock figures move with whatever else the host runs; the CPU seconds the producers,
the worker and Redis spend on a measurement move much less. A process that is not on this
host (a fleet driven without ``--spawn``, Redis elsewhere) is left out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (None if it cannot be read)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


@dataclass
class CpuMeter:
    """CPU seconds of named processes between :meth:`start` and :meth:`per_request`."""

    pids: Mapping[str, int | None]
    _start: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._start = {name: s for name, s in self._read().items() if s is not None}

    def per_request(self, requests: int) -> dict[str, float]:
        """``{name}_cpu_us`` per request for every process read at both ends."""
        out = {}
        for name, seconds in self._read().items():
            before = self._start.get(name)
            if seconds is not None and before is not None:
                out[f"{name}_cpu_us"] = (seconds - before) * 1e6 / max(1, requests)
        return out

    def _read(self) -> dict[str, float | None]:
        return {name: cpu_seconds(pid) if pid else None for name, pid in self.pids.items()}
