"""The compose test's steps on a running stack: scale, train, compress, serve and check.

Every job goes through the producer container. Each step records what it sent and what was
answered in :class:`Tally`; a step raises :class:`CheckFailed` when an answer is missing or
wrong, and the test stops there (and still cleans up).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.compose_test import commands as cmd
from deploy.compose_test.compose import Compose
from deploy.compose_test.proc import Steps, say

JOBS_SCRIPT = (
    'docker compose run --rm -v "$PWD/jobs:/jobs:ro" -v "$PWD/checks:/checks:ro" producer '
    "python /checks/jobs.py"
)
WORKERS = 3
MIN_ACCURACY = 0.8


class CheckFailed(AssertionError):
    """An answer was missing or wrong, or the stack did not do what the step expects."""


@dataclass
class Tally:
    """Jobs sent and answered over the whole test (Celery jobs; online requests apart)."""

    sent: int = 0
    answered: int = 0
    failed: int = 0
    online_sent: int = 0
    online_answered: int = 0

    @property
    def lost(self) -> int:
        return self.sent - self.answered


@dataclass
class Run:
    """What the steps share: the project, the work folder, timings, counts and findings."""

    compose: Compose
    work: Path
    run_id: str
    labels: dict[str, list[int]]
    steps: Steps = field(default_factory=Steps)
    tally: Tally = field(default_factory=Tally)
    facts: dict[str, Any] = field(default_factory=dict)

    def prefix(self, phase: str) -> str:
        return f"{self.run_id}-{phase}"


def last_json(stdout: str) -> Any:
    """The JSON document a command printed last (one line, or the whole output)."""
    text = stdout.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(text.splitlines()[-1])


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def producer(run: Run, command: str, *extra: str, timeout: float = 900) -> Any:
    """Run a README producer command with ``extra`` arguments; its JSON output."""
    done = run.compose(command, *extra, timeout=timeout, check=False, quiet=True)
    if done.returncode != 0:
        raise CheckFailed(f"exit {done.returncode}: {command} {' '.join(extra)}\n"
                          f"{done.stdout[-2000:]}{done.stderr[-2000:]}")  # fmt: skip
    return last_json(done.stdout)


def jobs_script(run: Run, *args: str, timeout: float = 900) -> dict[str, Any]:
    """``jobs.py`` in the producer container; its report, whatever its exit status."""
    done = run.compose(JOBS_SCRIPT, *args, timeout=timeout, check=False, quiet=True)
    try:
        report: dict[str, Any] = last_json(done.stdout)
    except (json.JSONDecodeError, IndexError):
        raise CheckFailed(f"jobs.py {args[0]} printed no report:\n{done.stderr[-3000:]}") from None
    report["exit"] = done.returncode
    return report


def send(run: Run, phase: str, count: int, model: str = "digits") -> None:
    report = jobs_script(run, "send", "--prefix", run.prefix(phase), "--count", str(count),
                         "--model", model)  # fmt: skip
    run.tally.sent += report["sent"]
    expect(report["exit"] == 0 and report["sent"] == count, f"{phase}: sent {report}")


def check(run: Run, phase: str, count: int, *, again: bool = False) -> dict[str, Any]:
    """Wait for every job of ``phase`` and check each answer (``again``: already counted)."""
    report = jobs_script(run, "check", "--prefix", run.prefix(phase), "--count", str(count),
                         "--model-name", "digits", "--min-accuracy", str(MIN_ACCURACY))  # fmt: skip
    if not again:
        run.tally.answered += report["answered"]
        run.tally.failed += report["failed"]
    say(
        f"{phase}: {report['answered']}/{count} answered, {report['lost']} lost, "
        f"{report['failed']} failed, accuracy {report['accuracy']}, hosts {report['hosts']}"
    )
    expect(report["exit"] == 0, f"{phase}: {report}")
    return report


def cli_job(run: Run, command: str, *extra: str, timeout: float = 900) -> dict[str, Any]:
    """One job through the CLI, counted; its result (the CLI exits 1 on a failed job)."""
    run.tally.sent += 1
    result: dict[str, Any] = producer(run, command, *extra, "--json", timeout=timeout)
    run.tally.answered += 1
    return result


# ------------------------------------------------------------------------------ steps
def workers_seen(run: Run, expected: int = WORKERS, timeout_s: float = 60) -> int:
    """Live workers in ``torchfleet status`` on the running cpu-worker containers."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        status = producer(run, cmd.STATUS, "--json")
        hosts = {c["Config"]["Hostname"] for c in run.compose.running("cpu-worker")}
        live = [w for w in status["workers"] if str(w.get("name", "")).split("@")[-1] in hosts]
        if len(live) == expected or time.monotonic() > deadline:
            break
        time.sleep(2)  # a new worker's first heartbeat is at most 5 s away
    names = sorted(str(w["name"]) for w in live)
    say(f"torchfleet status: {len(live)} workers on {len(hosts)} containers: {names}")
    expect(len(live) == expected, f"status shows {len(live)} workers, not {expected}")
    expect(status["deadletter"] == 0, f"dead letters: {status['deadletter']}")
    return len(live)


def scale(run: Run) -> None:
    run.compose(cmd.SCALE)
    run.compose.wait_healthy({"redis": 1, "cpu-worker": WORKERS, "flower": 1})
    run.facts["healthy"] = f"redis, cpu-worker x{WORKERS}, flower"
    run.facts["workers_seen"] = workers_seen(run)


def train_and_compress(run: Run) -> str:
    """The README's training job, then a compression of it; the variant's reference."""
    trained = cli_job(run, cmd.TRAIN)
    expect(trained.get("kind") == "train" and trained["model"] == "digits", f"train: {trained}")
    say(f"trained digits v{trained['version']}: val accuracy {trained['best_val_accuracy']:.3f}")
    compressed = cli_job(run, cmd.COMPRESS)
    registered = [v for v in compressed["variants"] if v["registered"]]
    expect(bool(registered), f"compress registered no variant: {compressed}")
    variant = registered[0]["variant"]
    say(f"compressed digits v{compressed['version']}: variant {variant}, "
        f"accuracy delta {registered[0]['accuracy_delta']:+.2f} points")  # fmt: skip
    return f"digits:{compressed['version']}:{variant}"


def serve(run: Run, variant: str, count: int) -> None:
    """The CLI's inputs (.npy, images), then ``count`` jobs on the model and its variant."""
    batch = cli_job(run, cmd.INFER_NPY)
    top = [p[0]["label"] for p in batch["predictions"]]
    hits = sum(p == y for p, y in zip(top, run.labels["batch"], strict=False))
    expect(len(top) == len(run.labels["batch"]), f".npy: {len(top)} predictions")
    expect(hits / len(top) >= MIN_ACCURACY, f".npy: {hits}/{len(top)} right")
    images = cli_job(run, cmd.INFER_IMAGES)
    top = [p[0]["label"] for p in images["predictions"]]
    expect(top == run.labels["png"], f"PNG images: predicted {top}, labels {run.labels['png']}")
    say(f"CLI: .npy batch {hits}/{len(run.labels['batch'])} right, PNG images {top}")
    base = count * 5 // 6
    send(run, "serve", base)
    send(run, "variant", count - base, model=variant)
    check(run, "serve", base)
    check(run, "variant", count - base)
