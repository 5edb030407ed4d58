"""Running commands for the compose test: every command and its output go to one log file."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_log: IO[str] | None = None
_log_path: Path | None = None


class CommandFailed(RuntimeError):
    """A command exited non-zero; the message holds the tail of its output."""


def open_log(path: Path) -> None:
    """Send every command's output to ``path`` (appended: a second run keeps the first's)."""
    global _log, _log_path
    path.parent.mkdir(parents=True, exist_ok=True)
    _log_path = path
    _log = path.open("a", buffering=1)
    _log.write(f"\n===== compose test {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")


def say(message: str) -> None:
    """A progress line on stdout (and in the log)."""
    print(f"[compose-test] {message}", flush=True)
    if _log is not None:
        _log.write(f"[compose-test] {message}\n")


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 600,
    cwd: Path | None = None,
    quiet: bool = False,
    inherit: bool = True,
    stream: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with stdin from /dev/null (so compose never allocates a TTY); stdout and
    stderr are captured, logged, and returned. ``check`` raises :class:`CommandFailed`.
    ``env`` is added to this process's environment, or replaces it when not ``inherit``.
    ``stream`` writes the output to the log as it comes (long builds) and returns none."""
    line = shlex.join(cmd)
    environment = {**(os.environ if inherit else {}), **(env or {})}
    if _log is not None:
        _log.write(f"$ {line}\n")
    if stream and _log is not None:
        return _streamed(cmd, line, check=check, env=environment, timeout=timeout, cwd=cwd)
    started = time.monotonic()
    try:
        done = subprocess.run(
            list(cmd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=environment,
            timeout=timeout,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as error:
        raise CommandFailed(f"timed out after {timeout}s: {line}") from error
    if _log is not None:
        _log.write(done.stdout + done.stderr)
        _log.write(f"# exit {done.returncode} in {time.monotonic() - started:.1f}s\n")
    if check and done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise CommandFailed(f"exit {done.returncode}: {line}\n{tail}")
    if not quiet and done.returncode != 0:
        print(f"[compose-test] (exit {done.returncode}) {line}", file=sys.stderr)
    return done


def _streamed(
    cmd: Sequence[str],
    line: str,
    *,
    check: bool,
    env: Mapping[str, str],
    timeout: float | None,
    cwd: Path | None,
) -> subprocess.CompletedProcess[str]:
    assert _log is not None and _log_path is not None
    _log.flush()
    try:
        done = subprocess.run(
            list(cmd), stdin=subprocess.DEVNULL, stdout=_log, stderr=subprocess.STDOUT,
            env=env, timeout=timeout, cwd=cwd,
        )  # fmt: skip
    except subprocess.TimeoutExpired as error:
        raise CommandFailed(f"timed out after {timeout}s: {line}") from error
    _log.write(f"# exit {done.returncode}\n")
    if check and done.returncode != 0:
        tail = "\n".join(_log_path.read_text().splitlines()[-25:])
        raise CommandFailed(f"exit {done.returncode}: {line}\n{tail}")
    return subprocess.CompletedProcess(list(cmd), done.returncode, "", "")


def output(cmd: Sequence[str], **kwargs: object) -> str:
    """stdout of a command that must succeed, stripped."""
    return run(cmd, **kwargs).stdout.strip()  # type: ignore[arg-type]


class Steps:
    """Seconds per step, in order, for the summary line."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        say(f"{name} ...")
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = time.monotonic() - started
            say(f"{name} took {self.seconds[name]:.0f}s")

    def line(self) -> str:
        return " ".join(f"{name}={value:.0f}" for name, value in self.seconds.items())
