"""Every example in README.md and docs/*.md runs, as a new user would run it (issue 13).

A fenced block is an example when it is ``bash``, ``console`` or unlabelled and holds a
``torchfleet`` or ``python`` command, or when it is ``python``. Examples run in document
order, one folder per document, against the session's real redis-server and worker, with
``torchfleet`` and ``python`` on PATH; each must exit 0 (a ``console`` command whose output
says ``# exit N`` must exit N). A block is left out only by a marker on the line before its
fence, which the rendered page hides and the reader of the source sees:

* ``<!-- docs-test: skip: REASON -->``: not run here (Docker Compose, a GPU, S3, a
  fragment of a larger program); the reason is shown in the test report.
* ``<!-- docs-test: file NAME -->``: a ``yaml``/``json`` block the examples use as a file.
  A ``yaml`` block whose first line is ``# NAME.yaml`` is written as that file too.

New examples are picked up by themselves: the test ids are ``document:line``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fleet import WorkerProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!--\s*docs-test:\s*(skip|file)\s*:?\s*(.*?)\s*-->\s*$")  # a whole line
FENCE = re.compile(r"^```(\w*)\s*$")
COMMAND = re.compile(r"^(\$ )?(torchfleet|python)\b")
EXPECTED_EXIT = re.compile(r"#\s*exit (\d+)")
SHELL = {"", "bash", "console", "sh"}
EXAMPLE_TIMEOUT_S = 600


@dataclass
class Block:
    document: Path
    line: int
    language: str
    text: str
    marker: tuple[str, str] | None

    @property
    def id(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"

    @property
    def file_name(self) -> str | None:
        if self.marker is not None and self.marker[0] == "file":
            return self.marker[1]
        first = self.text.splitlines()[0] if self.text else ""
        named = re.match(r"#\s*(\S+\.(?:ya?ml|json))\s*$", first)
        return named.group(1) if named and self.language in ("yaml", "json") else None

    @property
    def is_example(self) -> bool:
        if self.language == "python":
            return True
        lines = self.text.splitlines()
        return self.language in SHELL and any(COMMAND.match(line) for line in lines)


def blocks(document: Path) -> list[Block]:
    """Every fenced block of a Markdown document, with the marker on the line before it."""
    found, lines = [], document.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = MARKER.search(lines[i - 1]) if i else None
        found.append(
            Block(
                document, i + 1, fence.group(1), "\n".join(lines[i + 1 : end]),
                (marker.group(1), marker.group(2)) if marker else None,
            )
        )  # fmt: skip
        i = end + 1
    return found


def examples() -> list[Block]:
    return [b for d in DOCUMENTS for b in blocks(d) if b.is_example and not b.file_name]


def console_commands(text: str) -> list[tuple[str, int]]:
    """The ``$`` lines of a console block, each with the exit code its output shows."""
    commands: list[tuple[str, int]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], 0))
        elif commands and (code := EXPECTED_EXIT.search(line)):
            commands[-1] = (commands[-1][0], int(code.group(1)))
    return commands


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    """One working folder per document, holding the document's files: its examples build
    on one another, in order."""
    made = {}
    for document in DOCUMENTS:
        made[document] = folder = tmp_path_factory.mktemp(document.stem.lower())
        for block in blocks(document):
            if block.file_name is not None:
                (folder / block.file_name).write_text(block.text + "\n")
    return made


@pytest.fixture(scope="module")
def shell_env(fleet_env: dict[str, str], worker: WorkerProcess) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**fleet_env, "PATH": f"{bin_dir}{os.pathsep}{fleet_env.get('PATH', '')}"}


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S
    )


@pytest.mark.parametrize("block", examples(), ids=lambda b: b.id)
def test_example_runs(block: Block, shell_env: dict[str, str], folders: dict[Path, Path]) -> None:
    cwd = folders[block.document]
    if block.marker is not None and block.marker[0] == "skip":
        pytest.skip(f"marked in the doc: {block.marker[1] or 'no reason given'}")
    if block.language == "python":
        done = run([sys.executable, "-c", block.text], shell_env, cwd)
        assert done.returncode == 0, f"{block.id}\n{block.text}\n{done.stdout}\n{done.stderr}"
        return
    if block.language == "console":  # one shell, so a variable set by one line is seen later
        script = "\n".join(
            f'{command}\nrc=$?; [ $rc -eq {code} ] || {{ echo "exit $rc, not {code}: '
            f'{command.replace(chr(34), chr(39))}" >&2; exit 1; }}'
            for command, code in console_commands(block.text)
        )
        done = run(["bash", "-o", "pipefail", "-c", script], shell_env, cwd)
        assert done.returncode == 0, f"{block.id}\n{done.stdout}\n{done.stderr}"
        return
    done = run(["bash", "-e", "-o", "pipefail", "-c", block.text], shell_env, cwd)
    assert done.returncode == 0, f"{block.id}\n{block.text}\n{done.stdout}\n{done.stderr}"


def test_markers_name_a_reason() -> None:
    """A skipped example says why; a stray marker (on no block) is a mistake."""
    for document in DOCUMENTS:
        lines = document.read_text().splitlines()
        for i, line in enumerate(lines):
            marker = MARKER.search(line)
            if marker is None:
                continue
            assert i + 1 < len(lines) and FENCE.match(lines[i + 1]), f"{document}:{i + 1}"
            assert marker.group(2), f"{document}:{i + 1}: a marker needs a reason or a name"
