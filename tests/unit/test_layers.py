"""The import contract (issue 11): layers hold, no cycles, small modules.

``shared/`` (wire contracts) imports neither side; ``workers/`` never imports ``producers/``;
``producers/`` reaches ``workers/`` only from the CLI modules that launch a worker or measure
the in-process floor, and only inside a function (the client never imports torch). No import
cycles among package modules, late (function-level) imports included, and no module over
the size limit but the declarative job models.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "workers", "producers")
MAX_LINES = 350
DECLARATIVE = ("shared.jobs",)  # job models: one field a line, longer is fine
# Where the CLI may start a worker or run the torch floor (lazily, inside a function).
PRODUCERS_MAY_REACH_WORKERS = frozenset({"producers.cli.worker", "producers.cli.bench"})


def module_files() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


MODULES = module_files()


def imports(name: str) -> Iterator[tuple[str, bool]]:
    """Every package module ``name`` imports, and whether the import is at module level."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for target in _targets(name, path, node):
            if target != name and not name.startswith(target + "."):
                yield target, id(node) in top_level


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        found = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = name.split(".")
            if path.name != "__init__.py":
                parts = parts[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        found = [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return [t for t in found if t in MODULES]


EDGES = {name: dict(imports(name)) for name in MODULES}


def layer(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_upward_import(name: str) -> None:
    for target, at_top in EDGES[name].items():
        low, high = layer(name), layer(target)
        assert not (low == "shared" and high != "shared"), f"{name} imports {target}"
        assert not (low == "workers" and high == "producers"), f"{name} imports {target}"
        if low == "producers" and high == "workers":
            assert name in PRODUCERS_MAY_REACH_WORKERS, f"{name} imports {target} (torch side)"
            assert not at_top, f"{name} imports {target} at module level; import it lazily"


def test_no_import_cycles() -> None:
    cycles = [c for c in strongly_connected(EDGES) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name: str) -> None:
    if name.startswith(DECLARATIVE):
        return
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines (limit {MAX_LINES})"


def strongly_connected(edges: dict[str, dict[str, bool]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component))
    return found


def test_checker_sees_a_cycle() -> None:
    """The cycle finder itself: a two-module loop is found, a chain is not."""
    assert [c for c in strongly_connected({"a": {"b": True}, "b": {"a": False}}) if len(c) > 1]
    assert not [c for c in strongly_connected({"a": {"b": True}, "b": {}}) if len(c) > 1]


IMPORT_EVERYTHING = """
import importlib, json, sys
from celery import signals
from celery.worker.control import Panel
names = json.loads(sys.argv[1])
before = set(Panel.data)
for name in names:
    importlib.import_module(name)
hooks = [s for s in dir(signals) if isinstance(getattr(signals, s), signals.Signal)]
connected = {s: len(getattr(signals, s).receivers) for s in hooks if getattr(signals, s).receivers}
print(json.dumps({"signals": connected, "commands": sorted(set(Panel.data) - before)}))
"""


def test_importing_a_module_has_no_side_effect() -> None:
    """No Celery signal handler or control command is connected by an import: the worker
    connects them when it starts (workers.signals.connect_signals)."""
    import json
    import subprocess
    import sys

    names = [n for n in MODULES if not n.startswith("producers.cli")] + ["producers.cli"]
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING, json.dumps(sorted(names))],
        capture_output=True, text=True, timeout=300, check=True, cwd=ROOT,
    )  # fmt: skip
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == {"signals": {}, "commands": []}, found
