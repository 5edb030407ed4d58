"""Jobs of one worker process run side by side, or one runs alone.

When a worker dies under several jobs at once, nobody can tell which of them killed it. Each
of them comes back as a *suspect* and runs alone on its next worker (no other fleet job
starts beside it there), so that a second death under it is its own. :class:`Gate` is that
rule inside one process: a readers-writer lock in which the writer (a suspect) is preferred,
so that a steady stream of new jobs cannot keep it waiting, and waits at most a bounded time
for the jobs already running to end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Gate:
    """Shared holds for ordinary jobs, an exclusive hold for a suspect."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # suspects waiting to run alone: new shared holds queue behind them

    def contended(self) -> bool:
        """A suspect runs alone here now, or waits to: a new job would wait to start."""
        with self._cond:
            return self._exclusive or self._waiting > 0

    @contextmanager
    def hold(self, *, alone: bool, wait_s: float) -> Iterator[bool]:
        """Hold the gate for one job; yields whether the job runs alone.

        ``alone``: wait (at most ``wait_s``) until no other job runs, and keep new ones from
        starting until this one ends. If the worker never goes quiet within ``wait_s`` the
        job runs beside the others after all (and the gate yields False).
        """
        exclusive = alone and self._acquire_exclusive(wait_s)
        if not exclusive:
            self._acquire_shared()
        try:
            yield exclusive
        finally:
            with self._cond:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._cond.notify_all()

    def _acquire_exclusive(self, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._shared:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
                self._exclusive = True
                return True
            finally:
                self._waiting -= 1
                self._cond.notify_all()  # shared holds that queued behind this wait may go

    def _acquire_shared(self) -> None:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
