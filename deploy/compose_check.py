"""Offline preflight for docker-compose.yml: interpolate, validate, and check the security rules.

Compose itself only runs where a Docker engine does; this check runs anywhere Python does::

    python -m deploy.compose_check                       # docker-compose.yml + .env
    python -m deploy.compose_check -f docker-compose.yml -f docker-compose.override.yml

It interpolates ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` (and their unset-only
forms ``-``, ``?``, ``+``) the way Compose does, merges override files, validates the result
against the Compose Specification's JSON schema, and refuses a fleet whose Redis has no
password or is published on a non-loopback address.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SCHEMA_CANDIDATES = (
    REPO_ROOT.parent / "shared" / "compose-spec.json",
    REPO_ROOT / "tests" / "data" / "compose-spec.json",
)
LOOPBACK_BINDS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
REPLACED_ON_MERGE = frozenset({"command", "entrypoint", "test"})

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class ComposeError(ValueError):
    """A compose project that Compose would refuse, or that breaks the fleet's security rules."""


class InterpolationError(ComposeError):
    """A ``${VAR:?message}`` whose variable is missing, or a malformed ``${...}``."""


def find_schema() -> Path | None:
    """The Compose Specification schema: ../shared first, then the copy under tests/data."""
    return next((path for path in SCHEMA_CANDIDATES if path.is_file()), None)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$VAR`` and ``${VAR...}`` in one string with Compose's rules; ``$$`` is a ``$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_expand(text[i + 2 : end], env))
            i = end + 1
        elif match := _NAME.match(text, i + 1):
            out.append(env.get(match.group(), ""))
            i = match.end()
        else:
            out.append("$")
            i += 1
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    raise InterpolationError(f"invalid interpolation format: unclosed '${{' in {text!r}")


def _expand(body: str, env: Mapping[str, str]) -> str:
    match = _NAME.match(body)
    if match is None:
        raise InterpolationError(f"invalid interpolation format: '${{{body}}}'")
    name, rest = match.group(), body[match.end() :]
    if not rest:
        return env.get(name, "")
    operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
    if operator is None:
        raise InterpolationError(f"invalid interpolation format: '${{{body}}}'")
    argument = rest[len(operator) :]
    is_set = name in env
    has_value = bool(env.get(name))
    present = has_value if operator.startswith(":") else is_set
    if operator.endswith("-"):
        return env[name] if present else interpolate(argument, env)
    if operator.endswith("+"):
        return interpolate(argument, env) if present else ""
    if not present:
        reason = interpolate(argument, env) or "required"
        raise InterpolationError(f"required variable {name} is missing a value: {reason}")
    return env[name]


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value (not the keys) of a loaded YAML document."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    return node


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a Compose ``.env`` file (comments, ``export`` and quotes allowed)."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise ComposeError(f"{path}: not a KEY=VALUE line: {raw!r}")
        value = value.strip()
        if value[:1] in {"'", '"'} and value.endswith(value[0]) and len(value) > 1:
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        env[key.strip()] = value
    return env


def merge(base: Any, override: Any, key: str = "") -> Any:
    """Compose's override merge: mappings merge, command/entrypoint/test replace, lists add."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for name, value in override.items():
            merged[name] = merge(base[name], value, name) if name in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in REPLACED_ON_MERGE:
        return base + [item for item in override if item not in base]
    return override


def load_project(files: Sequence[Path], env: Mapping[str, str]) -> dict[str, Any]:
    """Load, interpolate and merge compose files in order, as ``docker compose -f ... -f`` does."""
    project: dict[str, Any] = {}
    for path in files:
        document = yaml.safe_load(path.read_text()) or {}
        if not isinstance(document, dict):
            raise ComposeError(
                f"{path}: a compose file is a mapping, got {type(document).__name__}"
            )
        try:
            project = merge(project, interpolate_tree(document, env))
        except InterpolationError as error:
            raise InterpolationError(f"{path.name}: {error}") from error
    return project


def schema_errors(project: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Every place where the project breaks the Compose Specification's schema."""
    from jsonschema import Draft7Validator

    validator = Draft7Validator(schema)
    return [
        f"{'/'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(project), key=lambda e: list(e.absolute_path))
    ]


def command_options(command: Any) -> dict[str, str]:
    """``--flag value`` pairs of a command given as a list or as one string."""
    args = command.split() if isinstance(command, str) else [str(arg) for arg in command or []]
    return {
        arg: args[i + 1]
        for i, arg in enumerate(args[:-1])
        if arg.startswith("--") and not args[i + 1].startswith("--")
    }


def published_binds(service: Mapping[str, Any]) -> list[str]:
    """The host address each published port binds to ('' means every interface)."""
    binds = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            binds.append(str(port.get("host_ip", "")))
            continue
        parts = str(port).rsplit(":", 2)
        binds.append(parts[0] if len(parts) == 3 else "")
    return binds


def security_errors(project: Mapping[str, Any]) -> list[str]:
    """The fleet's rules: Redis has a password and nothing is published beyond loopback."""
    services: Mapping[str, Any] = project.get("services") or {}
    errors = []
    redis = services.get("redis")
    if redis is None:
        errors.append("services.redis: missing; the fleet needs its Redis")
    elif not command_options(redis.get("command")).get("--requirepass"):
        errors.append(
            "services.redis: no --requirepass in its command; set REDIS_PASSWORD in .env and "
            "keep '--requirepass ${REDIS_PASSWORD:?...}' in any override of the command"
        )
    for name, service in services.items():
        for bind in published_binds(service):
            if bind not in LOOPBACK_BINDS:
                errors.append(
                    f"services.{name}: port published on {bind or 'every interface'}; publish "
                    "on 127.0.0.1 and reach it through an SSH tunnel, or use rediss:// for a "
                    "remote Redis"
                )
    return errors


def check(
    files: Sequence[Path], env: Mapping[str, str], schema_path: Path | None = None
) -> dict[str, Any]:
    """The interpolated, merged project; raises ComposeError listing every problem found.

    The schema check needs ``jsonschema`` (the dev extra); without it only the rules run.
    """
    project = load_project(files, env)
    schema_path = schema_path or find_schema()
    problems = []
    if schema_path is not None and importlib.util.find_spec("jsonschema") is not None:
        problems += schema_errors(project, json.loads(schema_path.read_text()))
    problems += security_errors(project)
    if problems:
        raise ComposeError("\n".join(problems))
    return project


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: exit 0 when the project would start safely, 1 with the reasons if not."""
    parser = argparse.ArgumentParser(prog="compose_check", description=__doc__.splitlines()[0])
    parser.add_argument("-f", "--file", dest="files", type=Path, action="append")
    parser.add_argument("--env-file", type=Path, default=None, help="default: .env beside -f")
    parser.add_argument("--schema", type=Path, default=None, help="Compose Specification JSON")
    args = parser.parse_args(argv)
    files = args.files or [DEFAULT_COMPOSE_FILE]
    env_file = args.env_file or files[0].parent / ".env"
    # Compose's precedence: the shell's environment wins over the .env file.
    env = {**(read_env_file(env_file) if env_file.is_file() else {}), **os.environ}
    try:
        project = check(files, env, args.schema)
    except ComposeError as error:
        print(f"compose check failed:\n{error}", file=sys.stderr)
        return 1
    print(f"compose check passed: {', '.join(sorted(project.get('services', {})))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
