"""The host side: Debian packages, a Docker daemon of the test's own, and undoing its changes.

dockerd changes the host it runs on (see ../shared/notes/containers.md): a ``docker0`` bridge
(and ``br-*`` bridges and ``veth*`` pairs for compose networks), DOCKER chains and rules in
iptables with the FORWARD policy set to DROP, ``net.ipv4.ip_forward=1``, and a mount at
``/run/docker/netns/default``. :func:`snapshot` records the host before the test starts a
daemon; :func:`restore` removes what was added since and puts the rest back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deploy.compose_test.proc import run, say

PACKAGES = ("docker.io", "docker-compose", "debootstrap")
# Debian's docker CLI: another `docker` earlier on PATH may need buildx to build.
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
NETFILTER = ("iptables", "ip6tables")
TABLES = ("filter", "nat")
DOCKER_RUNTIME = "/run/docker"
ADDED_LINK_PREFIXES = ("docker0", "br-", "veth")


def docker() -> str:
    """The docker CLI to call (Debian's once installed)."""
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else DOCKER


def missing_packages() -> list[str]:
    """The packages of :data:`PACKAGES` that dpkg does not list as installed."""
    missing = []
    for package in PACKAGES:
        status = run(["dpkg-query", "-W", "-f=${Status}", package], check=False, quiet=True)
        if status.returncode != 0 or "install ok installed" not in status.stdout:
            missing.append(package)
    return missing


def install_packages() -> None:
    """apt-get update and install the test's packages, unless all are there already."""
    missing = missing_packages()
    if not missing:
        say(f"packages present: {' '.join(PACKAGES)}")
        return
    say(f"installing {' '.join(missing)}")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update"], env=env, timeout=600)
    run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], env=env, timeout=900)


# ------------------------------------------------------------------------------ host state
@dataclass
class HostState:
    """What dockerd may change, as it was before the test started one."""

    links: list[str] = field(default_factory=list)
    rules: dict[str, list[str]] = field(default_factory=dict)  # "iptables/nat" -> `-S` lines
    ip_forward: str = "0"
    mounts: list[str] = field(default_factory=list)


def _links() -> list[str]:
    out = run(["ip", "-o", "link", "show"], quiet=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _rules(tool: str, table: str) -> list[str] | None:
    if shutil.which(tool) is None:
        return None
    done = run([tool, "-w", "-t", table, "-S"], check=False, quiet=True)
    return done.stdout.splitlines() if done.returncode == 0 else None


def _docker_mounts() -> list[str]:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    points = [line.split()[1] for line in mounts if len(line.split()) > 1]
    return [p for p in points if p.startswith(DOCKER_RUNTIME + "/")]


def snapshot() -> HostState:
    """The host's links, iptables rules, ip_forward and docker mounts, now."""
    rules = {}
    for tool in NETFILTER:
        for table in TABLES:
            found = _rules(tool, table)
            if found is not None:
                rules[f"{tool}/{table}"] = found
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    return HostState(_links(), rules, forward, _docker_mounts())


def restore(before: HostState) -> list[str]:
    """Undo what appeared since ``before``; returns what was undone, for the log."""
    undone = []
    for point in sorted(set(_docker_mounts()) - set(before.mounts), reverse=True):
        if run(["umount", "-l", point], check=False, quiet=True).returncode == 0:
            undone.append(f"umount {point}")
    for link in sorted(set(_links()) - set(before.links)):
        if link.startswith(ADDED_LINK_PREFIXES):
            run(["ip", "link", "delete", link], check=False, quiet=True)
            undone.append(f"ip link delete {link}")
    for key, old in before.rules.items():
        tool, table = key.split("/")
        undone += _restore_rules(tool, table, old)
    if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != before.ip_forward:
        run(["sysctl", "-w", f"net.ipv4.ip_forward={before.ip_forward}"], quiet=True)
        undone.append(f"net.ipv4.ip_forward={before.ip_forward}")
    return undone


def _restore_rules(tool: str, table: str, old: list[str]) -> list[str]:
    now = _rules(tool, table) or []
    undone = []
    # Rules first (in reverse, so jumps go before the chains they jump to), then chains.
    for line in reversed([r for r in now if r.startswith("-A ") and r not in old]):
        args = shlex.split(line)
        run([tool, "-w", "-t", table, "-D", *args[1:]], check=False, quiet=True)
        undone.append(f"{tool} -t {table} -D {' '.join(args[1:])}")
    for line in [r for r in now if r.startswith("-N ") and r not in old]:
        chain = line.split()[1]
        run([tool, "-w", "-t", table, "-F", chain], check=False, quiet=True)
        run([tool, "-w", "-t", table, "-X", chain], check=False, quiet=True)
        undone.append(f"{tool} -t {table} -X {chain}")
    for line in old:
        if line.startswith("-P ") and line not in now:
            _, chain, policy = line.split()
            run([tool, "-w", "-t", table, "-P", chain, policy], check=False, quiet=True)
            undone.append(f"{tool} -t {table} -P {chain} {policy}")
    return undone


# ------------------------------------------------------------------------------ the daemon
def docker_answers() -> bool:
    """Does a Docker daemon answer on the default socket?"""
    done = run(
        [docker(), "version", "-f", "{{.Server.Version}}"], check=False, quiet=True, timeout=30
    )
    return done.returncode == 0


@dataclass
class Daemon:
    """The dockerd this test started (``pid``), or one that was already running (``None``)."""

    pid: int | None
    before: HostState | None
    state_file: Path

    def save(self) -> None:
        record = {"pid": self.pid, "before": asdict(self.before) if self.before else None}
        self.state_file.write_text(json.dumps(record))


def _is_dockerd(pid: int) -> bool:
    """A live dockerd (not a zombie waiting to be reaped) has this pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
    return name == "dockerd" and state != "Z"


def start_daemon(state_dir: Path, timeout_s: float = 90) -> Daemon:
    """Use the daemon that answers, or start one and remember its pid and the host before it.

    A daemon this test started in a run that was killed before its cleanup (its pid is in
    ``dockerd.json``) is adopted: this run stops it and restores the host recorded then.
    """
    state_file = state_dir / "dockerd.json"
    if docker_answers():
        if state_file.exists():
            record = json.loads(state_file.read_text())
            pid = record.get("pid")
            if pid and _is_dockerd(pid) and record.get("before"):
                say(f"adopting dockerd pid {pid} left by an interrupted run")
                return Daemon(pid, HostState(**record["before"]), state_file)
        say("using the Docker daemon that is already running (it is left running)")
        return Daemon(None, None, state_file)
    before = snapshot()
    log = (state_dir / "dockerd.log").open("a")
    process = subprocess.Popen(
        ["dockerd"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C reaches the test, which stops dockerd in order
    )  # fmt: skip
    daemon = Daemon(process.pid, before, state_file)
    daemon.save()
    deadline = time.monotonic() + timeout_s
    while not docker_answers():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_daemon(daemon)
            tail = (state_dir / "dockerd.log").read_text().splitlines()[-20:]
            raise RuntimeError("dockerd did not start:\n" + "\n".join(tail))
        time.sleep(0.5)  # dockerd is opening its socket
    say(f"started dockerd pid {process.pid}")
    return daemon


def stop_daemon(daemon: Daemon, timeout_s: float = 60) -> list[str]:
    """Stop the daemon this test started (by its pid) and undo its changes to the host."""
    if daemon.pid is None or daemon.before is None:
        return []
    pid = daemon.pid
    if _is_dockerd(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _is_dockerd(pid) and time.monotonic() < deadline:
            time.sleep(0.2)  # dockerd stops its containerd and cleans its networks
        if _is_dockerd(pid):
            say(f"dockerd pid {pid} ignored SIGTERM for {timeout_s:.0f}s: SIGKILL")
            os.kill(pid, signal.SIGKILL)
    _reap(pid)
    undone = restore(daemon.before)
    daemon.state_file.unlink(missing_ok=True)
    return undone


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # adopted from an earlier run: not a child
        os.waitpid(pid, 0)


def host_is_clean(pid: int) -> bool:
    """No dockerd ``pid``, containerd shim, docker0 bridge or docker mount is left."""
    problems = []
    if _is_dockerd(pid):
        problems.append(f"dockerd pid {pid} still runs")
    processes = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
    shims = [p.name for p in processes if _comm(p).startswith("containerd-shim")]
    if shims:
        problems.append(f"containerd shims still run: {shims}")
    if "docker0" in _links():
        problems.append("the docker0 bridge is still there")
    if _docker_mounts():
        problems.append(f"mounts left: {_docker_mounts()}")
    for problem in problems:
        say(f"host not clean: {problem}")
    return not problems


def _comm(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:
        return ""
