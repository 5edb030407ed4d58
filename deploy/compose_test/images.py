"""Images without an image registry: a Debian base by debootstrap, stand-ins, a wheelhouse.

Nothing is pulled. The base is ``debootstrap --variant=minbase`` imported with
``docker import``; Python comes from Debian; Redis and Flower stand-ins are built on that
base; every Python package comes from a wheelhouse that the host's pip fills (it finds
torch on this machine's disk) and that is served as a PEP 503 index on a fixed loopback
port, so the project's own Dockerfile builds with nothing but build arguments changed.
Images and the wheelhouse are kept between runs; a second run rebuilds nothing that did not
change (the port is fixed because a build argument's value is part of the build cache key).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from deploy.compose_test.host import docker
from deploy.compose_test.proc import output, run, say
from deploy.requirements import requirements

HERE = Path(__file__).resolve().parent
DOCKERFILES = HERE / "images"
BASE_IMAGE = "local/debian:bookworm"
PYTHON_IMAGE = "local/torchfleet-python:bookworm"
REDIS_IMAGE = "local/torchfleet-redis:7"
FLOWER_IMAGE = "local/torchfleet-flower:2"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Beyond the project's own requirements: the wheel build's backend, the Flower stand-in, and
# async-timeout, which redis-py needs on Debian's Python 3.11.2 (a marker for < 3.11.3 that
# the host's newer 3.11 does not select when it resolves).
EXTRA_WHEELS = ("setuptools>=68", "wheel", "flower", "async-timeout")
LEGACY_BUILDER = {"DOCKER_BUILDKIT": "0"}


def image_exists(name: str) -> bool:
    return run([docker(), "image", "inspect", name], check=False, quiet=True).returncode == 0


def image_size_mb(name: str) -> float:
    return int(output([docker(), "image", "inspect", "-f", "{{.Size}}", name])) / 1e6


def debian_mirror() -> str:
    """The Debian mirror this host's apt uses (the deb822 sources file, then sources.list)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        match = re.search(r"^deb\s+(\S+)\s+bookworm\s", legacy.read_text(), re.M)
        if match:
            return match.group(1)
    return DEFAULT_MIRROR


def build_debian_base(work: Path) -> bool:
    """``local/debian:bookworm`` from debootstrap, unless it exists. True when built."""
    if image_exists(BASE_IMAGE):
        return False
    rootfs = work / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    run(
        ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror()],
        timeout=900,
        stream=True,
    )
    for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / leftovers).glob("*"):
            if path.is_file():
                path.unlink()
    pipeline = f"tar -C {rootfs} -c . | {docker()} import --change 'CMD [\"bash\"]' - {BASE_IMAGE}"
    run(["bash", "-o", "pipefail", "-c", pipeline], timeout=600)
    shutil.rmtree(rootfs, ignore_errors=True)
    return True


def build_local(name: str, dockerfile: str, context: Path, **args: str) -> None:
    """``docker build`` of a stand-in (legacy builder, host network for apt and the index)."""
    build_args = [f"--build-arg={key}={value}" for key, value in args.items()]
    run(
        [docker(), "build", "--network", "host", "-t", name, "-f", str(DOCKERFILES / dockerfile),
         *build_args, str(context)],
        env=LEGACY_BUILDER, timeout=1200, stream=True,
    )  # fmt: skip


def build_stand_ins(work: Path, index_url: str) -> list[str]:
    """The Debian base, the Python base, and the Redis and Flower stand-ins."""
    context = work / "empty-context"
    context.mkdir(parents=True, exist_ok=True)
    built = [BASE_IMAGE] if build_debian_base(work) else []
    build_local(PYTHON_IMAGE, "python.Dockerfile", context, BASE_IMAGE=BASE_IMAGE)
    build_local(REDIS_IMAGE, "redis.Dockerfile", context, BASE_IMAGE=BASE_IMAGE)
    build_local(
        FLOWER_IMAGE, "flower.Dockerfile", context, PYTHON_IMAGE=PYTHON_IMAGE,
        PIP_INDEX_URL=index_url,
    )  # fmt: skip
    return [*built, PYTHON_IMAGE, REDIS_IMAGE, FLOWER_IMAGE]


# ------------------------------------------------------------------------------ wheelhouse
def wheel_requirements(root: Path) -> list[str]:
    """Every requirement the images install: the worker's, the producer's, the extras."""
    pyproject = root / "pyproject.toml"
    worker = requirements(pyproject, extras=["worker"])
    producer = requirements(pyproject, pick=["numpy", "pybase64"])
    return sorted({*worker, *producer, *EXTRA_WHEELS})


def normalized(project: str) -> str:
    """PEP 503 name: lowercase, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", project).lower()


def fill_wheelhouse(cache: Path, lines: list[str]) -> int:
    """``pip download`` the wheels (kept between runs), then lay out ``simple/<name>/``.
    Returns the number of wheels."""
    files, stamp = cache / "files", cache / "requirements.txt"
    wanted = "\n".join(lines) + "\n"
    if not stamp.exists() or stamp.read_text() != wanted:
        files.mkdir(parents=True, exist_ok=True)
        pending = cache / "requirements.pending.txt"
        pending.write_text(wanted)
        run(
            [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest",
             str(files), "-r", str(pending)],
            timeout=1800, stream=True,
        )  # fmt: skip
        pending.replace(stamp)
    simple = cache / "simple"
    shutil.rmtree(simple, ignore_errors=True)
    wheels = sorted(files.glob("*.whl"))
    for wheel in wheels:
        folder = simple / normalized(wheel.name.split("-")[0])
        folder.mkdir(parents=True, exist_ok=True)
        os.link(wheel, folder / wheel.name)
    return len(wheels)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_index(cache: Path, port: int) -> Iterator[str]:
    """Serve ``cache`` on 127.0.0.1:``port``; yields the index URL (``.../simple``)."""
    handler = functools.partial(_QuietHandler, directory=str(cache))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, name="wheel-index", daemon=True)
    thread.start()
    say(f"wheel index on http://127.0.0.1:{port}/simple")
    try:
        yield f"http://127.0.0.1:{port}/simple"
    finally:
        server.shutdown()
        server.server_close()
