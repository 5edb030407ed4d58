"""``make compose-test``: build the images, bring the stack up, scale it, break it, tear it down.

    python -m deploy.compose_test [--cache DIR] [--jobs 300] [--fault-jobs 150]

Needs root on a Debian host (apt-get, dockerd, iptables). The steps, timed one by one:
install (Debian's docker.io, docker-compose, debootstrap, if missing), dockerd (started
when none answers, remembered by pid), wheels, images, up, scale (3 cpu-workers), train
(+ compress), serve (the CLI's inputs and a few hundred checked jobs), online (the online
lane's hook), kill (a worker mid-training), redis (restart), stop (warm), status, down,
cleanup (the dockerd it started stopped by pid, its host changes undone: see host.py). Down
and cleanup run whatever happened, Ctrl-C and SIGTERM included. Images and the wheelhouse
stay in the cache (and Docker's storage) so that the next run rebuilds only what changed.
The last line is the summary; the full log is ``DIR/compose-test.log``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from deploy.compose_test import commands as cmd
from deploy.compose_test import host, images
from deploy.compose_test.compose import Compose, ComposeFailed, say_ps
from deploy.compose_test.faults import kill_worker, restart_redis, stop_warm
from deploy.compose_test.inputs import write_inputs
from deploy.compose_test.online import online
from deploy.compose_test.proc import CommandFailed, Steps, open_log, say
from deploy.compose_test.scenario import CheckFailed, Run, scale, serve, train_and_compress
from deploy.compose_test.scenario import workers_seen as count_workers

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "torchfleet-compose-test"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
SERVICES = {"redis": 1, "cpu-worker": 1, "flower": 1}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="compose_test", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE / "torchfleet/compose-test")
    parser.add_argument("--index-port", type=int, default=47631, help="fixed: build cache key")
    parser.add_argument("--jobs", type=int, default=300, help="inference jobs when healthy")
    parser.add_argument("--fault-jobs", type=int, default=150, help="jobs in flight per fault")
    parser.add_argument("--online-requests", type=int, default=100)
    parser.add_argument("--kill-epochs", type=int, default=8)
    parser.add_argument("--stop-epochs", type=int, default=6)
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stack_values(index_url: str) -> dict[str, str]:
    """The test's .env: local images, the loopback index, small workers, quick probes."""
    return {
        "COMPOSE_PROJECT_NAME": PROJECT,
        "REDIS_PASSWORD": secrets.token_hex(32),
        "REDIS_IMAGE": images.REDIS_IMAGE,
        "FLOWER_IMAGE": images.FLOWER_IMAGE,
        "PYTHON_IMAGE": images.PYTHON_IMAGE,
        "PIP_INDEX_URL": index_url,
        "CPU_TORCH_INDEX_URL": index_url,
        "TORCHFLEET_IMAGE": PROJECT,
        "CPU_WORKER_THREADS": "1",  # 3 replicas on 2 cores
        "CPU_WORKER_CONCURRENCY": "4",
        "HEALTHCHECK_INTERVAL": "3s",
        "TORCHFLEET_VISIBILITY_TIMEOUT_S": "20",  # a killed worker's jobs back in ~30 s
        "FLOWER_HOST_PORT": str(free_port()),
    }


def write_env_file(work: Path, values: dict[str, str]) -> None:
    """``cp .env.example .env``, the password and project set as the README says, and the
    test's other values appended."""
    live = ("REDIS_PASSWORD", "COMPOSE_PROJECT_NAME")
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        key = line.split("=", 1)[0]
        lines.append(f"{key}={values[key]}" if key in live else line)
    lines += [f"{key}={value}" for key, value in values.items() if key not in live]
    env_file = work / ".env"
    env_file.touch(mode=0o600)
    env_file.write_text("\n".join(lines) + "\n")


def build(args: argparse.Namespace, compose_work: Path, steps: Steps) -> Compose:
    """The stand-ins and the project's images, with the wheel index served meanwhile."""
    with steps.step("wheels"):
        count = images.fill_wheelhouse(args.cache / "wheelhouse", images.wheel_requirements(ROOT))
        say(f"{count} wheels")
    with images.serve_index(args.cache / "wheelhouse", args.index_port) as index_url:
        values = stack_values(index_url)
        write_env_file(compose_work, values)
        compose = Compose(ROOT, compose_work, values)
        with steps.step("images"):
            images.build_stand_ins(args.cache, index_url)
            compose(cmd.BUILD, timeout=2400, stream=True)
    return compose


def scenario(run: Run, args: argparse.Namespace) -> None:
    steps, compose = run.steps, run.compose
    with steps.step("up"):
        compose(cmd.DOWN, "--remove-orphans")  # whatever an interrupted run left
        compose(cmd.UP)
        compose.wait_healthy(SERVICES)
        say_ps(compose)
    with steps.step("scale"):
        scale(run)
    with steps.step("train"):
        variant = train_and_compress(run)
    with steps.step("serve"):
        serve(run, variant, args.jobs)
    with steps.step("online"):
        run.facts["online"] = online(run, args.online_requests)
    with steps.step("kill"):
        kill_worker(run, args.fault_jobs)
    with steps.step("redis"):
        restart_redis(run, args.fault_jobs, ("serve", args.jobs * 5 // 6))
    with steps.step("stop"):
        stop_warm(run, args.fault_jobs)
    with steps.step("status"):
        run.facts["workers_after"] = count_workers(run)


def image_sizes() -> str:
    names = [f"{PROJECT}:cpu", f"{PROJECT}:producer", images.REDIS_IMAGE, images.FLOWER_IMAGE]
    found = [n for n in names if images.image_exists(n)]
    return ", ".join(f"{name} {images.image_size_mb(name):.0f} MB" for name in found)


def summary(run: Run | None, steps: Steps, ok: bool, started: float, sizes: str) -> str:
    facts = run.facts if run else {}
    tally = run.tally if run else None
    jobs = (
        f"jobs sent {tally.sent} answered {tally.answered} lost {tally.lost} failed {tally.failed}"
        if tally else "jobs none"
    )  # fmt: skip
    return (
        f"compose-test {'PASS' if ok else 'FAIL'} | images: {sizes or 'none'} | healthy: "
        f"{facts.get('healthy', '-')} | workers seen: {facts.get('workers_seen', 0)} | {jobs} | "
        f"online: {facts.get('online', '-')} | training resumed from epoch "
        f"{facts.get('resumed_from_epoch', '-')} | seconds: {steps.line()} "
        f"total={time.monotonic() - started:.0f}"
    )


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds into the cleanup below


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    args.cache.mkdir(parents=True, exist_ok=True)
    open_log(args.cache / "compose-test.log")
    work = args.cache / "work"
    work.mkdir(exist_ok=True)
    steps, daemon, run, ok, sizes = Steps(), None, None, False, ""
    try:
        with steps.step("install"):
            host.install_packages()
        with steps.step("dockerd"):
            daemon = host.start_daemon(args.cache)
        compose = build(args, work, steps)
        sizes = image_sizes()
        labels = write_inputs(work, args.kill_epochs, args.stop_epochs)
        run = Run(compose, work, f"r{secrets.token_hex(3)}", labels, steps=steps)
        scenario(run, args)
        ok = True
    except (CheckFailed, ComposeFailed, CommandFailed, RuntimeError, AssertionError) as error:
        say(f"FAILED: {error}")
    except (KeyboardInterrupt, SystemExit):
        say("interrupted: cleaning up")
    finally:
        ok = cleanup(run, daemon, steps) and ok
        say(f"log: {args.cache / 'compose-test.log'}")
        print(summary(run, steps, ok, started, sizes), flush=True)
    return 0 if ok else 1


def cleanup(run: Run | None, daemon: host.Daemon | None, steps: Steps) -> bool:
    """``docker compose down -v``, then stop the daemon this test started and undo its
    changes to the host. False when something of the test is left behind."""
    clean = True
    if run is not None:
        with steps.step("down"):
            run.compose(cmd.DOWN, "--remove-orphans", check=False)
            left = run.compose.leftovers()
            if left:
                say(f"left after down: {left}")
                clean = False
    if daemon is not None and daemon.pid is not None:
        with steps.step("cleanup"):
            undone = host.stop_daemon(daemon)
            say(f"stopped dockerd pid {daemon.pid}; undone: {len(undone)} host changes")
            for change in undone:
                say(f"  {change}")
            if not host.host_is_clean(daemon.pid):
                clean = False
    return clean


if __name__ == "__main__":
    sys.exit(main())
