"""Breaking the stack: a worker killed mid-training, Redis restarted, workers stopped warm.

Each fault runs with inference jobs in flight and ends with every one of them checked, so
"nothing lost" is counted job by job. The killed worker's training job must come back by
itself (visibility timeout) and resume from its last checkpoint; the warm stop must let the
running training job finish and leave the queued jobs for the workers that come back.
"""

from __future__ import annotations

import json
import time

from deploy.compose_test import commands as cmd
from deploy.compose_test.host import docker
from deploy.compose_test.proc import run as run_command
from deploy.compose_test.proc import say
from deploy.compose_test.scenario import (
    WORKERS,
    Run,
    check,
    expect,
    jobs_script,
    producer,
    send,
)


def submit_training(run: Run, spec: str, job: str) -> None:
    submitted = producer(run, cmd.SUBMIT_FILE, f"/jobs/{spec}", "--job-id", job, "--json")
    expect(submitted.get("job_id") == job, f"submit {spec}: {submitted}")
    run.tally.sent += 1


def training_result(run: Run, job: str, timeout_s: float) -> dict[str, object]:
    result = producer(run, cmd.WAIT, job, "--json", "--timeout", str(timeout_s))
    expect(result.get("kind") == "train", f"training {job}: {json.dumps(result)[:500]}")
    run.tally.answered += 1
    return dict(result)


def running_on(run: Run, job: str, min_epoch: int) -> str:
    """The container hostname of the worker training ``job`` at ``min_epoch`` or later."""
    where = jobs_script(run, "running", "--job", job, "--min-epoch", str(min_epoch))
    expect(where["exit"] == 0, f"training {job} never reached epoch {min_epoch}: {where}")
    say(f"training {job} at epoch {where['epoch']} on {where['node']}")
    return str(where["host"])


def container_of(run: Run, host: str) -> str:
    for container in run.compose.running("cpu-worker"):
        if container["Config"]["Hostname"] == host:
            return str(container["Id"])
    raise AssertionError(f"no running cpu-worker container has hostname {host}")


def kill_worker(run: Run, count: int) -> None:
    """``docker kill`` the worker training a job (in its second epoch or later, so the first
    is checkpointed), with ``count`` inference jobs sent just before."""
    job = run.prefix("train-kill")
    send(run, "kill", count)
    submit_training(run, "train-kill.json", job)
    host = running_on(run, job, min_epoch=2)
    run_command([docker(), "kill", container_of(run, host)])
    killed_at = time.monotonic()
    say(f"killed the worker on {host}")
    check(run, "kill", count)
    result = training_result(run, job, timeout_s=900)
    resumed = result.get("resumed_from_epoch")
    say(f"training {job}: resumed from epoch {resumed} on {result.get('worker')}, "
        f"{time.monotonic() - killed_at:.0f}s after the kill")  # fmt: skip
    expect(isinstance(resumed, int) and resumed >= 1, f"training did not resume: {result}")
    run.facts["resumed_from_epoch"] = resumed
    run.compose(cmd.SCALE)  # back to three, whether or not Docker restarted the killed one
    run.compose.wait_healthy({"redis": 1, "cpu-worker": WORKERS, "flower": 1})


def restart_redis(run: Run, count: int, earlier: tuple[str, int]) -> None:
    """``docker compose restart redis`` with jobs queued and running; the jobs, and the
    answers stored before the restart, must all be there after it (AOF on the volume)."""
    send(run, "redis", count)
    run.compose(cmd.RESTART_REDIS)
    run.compose.wait_healthy({"redis": 1, "cpu-worker": WORKERS, "flower": 1})
    check(run, "redis", count)
    phase, earlier_count = earlier
    check(run, phase, earlier_count, again=True)


def stop_warm(run: Run, count: int) -> None:
    """``docker compose stop cpu-worker`` during a training job: it finishes, the workers
    exit cleanly; jobs sent while they are stopped wait in Redis for the workers that come
    back."""
    job = run.prefix("train-stop")
    half = count // 2
    send(run, "stop", half)
    submit_training(run, "train-stop.json", job)
    running_on(run, job, min_epoch=1)
    started = time.monotonic()
    run.compose(cmd.STOP_WORKERS)
    say(f"docker compose stop cpu-worker took {time.monotonic() - started:.0f}s")
    states = [c["State"] for c in run.compose.containers("cpu-worker")]
    codes = sorted(s["ExitCode"] for s in states)
    expect(not any(s["Running"] for s in states), "a worker still runs after stop")
    expect(all(code == 0 for code in codes), f"workers exit codes {codes} (137: killed)")
    result = training_result(run, job, timeout_s=30)  # finished before its worker exited
    expect(result.get("resumed_from_epoch") is None, f"training was redone: {result}")
    send(run, "stopped", count - half)
    depth = producer(run, cmd.STATUS, "--json")["queues"]["infer"]["depth"]
    say(f"with the workers stopped, {depth} inference jobs wait in Redis")
    # At least those: a job of the first batch still queued at the stop stays queued too.
    expect(depth >= count - half, f"{depth} jobs queued, {count - half} sent")
    run.compose(cmd.SCALE)
    run.compose.wait_healthy({"redis": 1, "cpu-worker": WORKERS, "flower": 1})
    check(run, "stop", half)
    check(run, "stopped", count - half)
