"""Requirement lines from pyproject.toml, so an image installs its dependencies before its code.

The Dockerfile runs it in a stage that holds only pyproject.toml, so the dependency layers
of the images are rebuilt when the dependencies change, not when the code does::

    python requirements.py pyproject.toml --extra worker          # the worker image
    python requirements.py pyproject.toml --pick numpy --pick pybase64   # the producer image

Standard library only: it runs on the image's bare Python.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def requirement_name(line: str) -> str:
    """The normalised project name of a requirement line (``celery[redis]>=5`` -> celery)."""
    match = _NAME.match(line.strip())
    if match is None:
        raise ValueError(f"not a requirement: {line!r}")
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def requirements(
    pyproject: Path, extras: Sequence[str] = (), pick: Sequence[str] = ()
) -> list[str]:
    """The project's dependencies, plus every line of ``extras``, plus the lines of any
    extra that name a project in ``pick`` (with the version range pyproject gives it)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise ValueError(f"no such extra in {pyproject}: {', '.join(unknown)}")
    lines = list(project.get("dependencies", []))
    for extra in extras:
        lines += optional[extra]
    wanted = {requirement_name(name) for name in pick}
    picked = [line for group in optional.values() for line in group]
    picked = [line for line in picked if requirement_name(line) in wanted]
    missing = wanted - {requirement_name(line) for line in picked}
    if missing:
        raise ValueError(f"no extra of {pyproject} names {', '.join(sorted(missing))}")
    return list(dict.fromkeys(lines + picked))


def main(argv: Sequence[str] | None = None) -> int:
    """Print the requirement lines, one a line."""
    parser = argparse.ArgumentParser(prog="requirements", description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="an extra, whole")
    parser.add_argument("--pick", action="append", default=[], help="a project from an extra")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, args.extra, args.pick)
    except (ValueError, KeyError, OSError) as error:
        print(f"requirements: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
