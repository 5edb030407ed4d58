"""What every `torchfleet` command shares: consoles, exit codes, error reporting, options.

Exit codes: 0 success, 1 the job failed, 2 bad input (spec or arguments), 3 timeout,
4 Redis unreachable, 5 overloaded (the online lane refused the request: retry later).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from rich.console import Console

from producers.client import Client
from shared.errors import InputError, JobTimeout, Overloaded

EXIT_FAILED, EXIT_INPUT, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_OVERLOADED = 1, 2, 3, 4, 5

console = Console()
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
TimeoutOpt = Annotated[float | None, typer.Option(help="Give up waiting after this many seconds.")]


def fail(code: int, message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    err_console.print(f"error: {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn library errors into one-line messages and exit codes."""
    try:
        yield
    except (RedisConnectionError, OperationalError) as e:
        fail(EXIT_UNREACHABLE, f"cannot reach Redis ({e}); is it running? set TORCHFLEET_REDIS_URL")
    except InputError as e:
        fail(EXIT_INPUT, str(e))
    except JobTimeout as e:
        fail(EXIT_TIMEOUT, str(e))
    except Overloaded as e:
        fail(EXIT_OVERLOADED, str(e))


def read_document(path: Path, *, missing: str) -> Any:
    """The JSON or YAML document in ``path`` (exit 2 with ``missing`` when there is none)."""
    if not path.exists():
        fail(EXIT_INPUT, missing)
    text = path.read_text()
    try:
        return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        fail(EXIT_INPUT, f"{path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {e}")


def load_spec(path: Path) -> dict[str, Any]:
    """One job object from a .json or .yaml file (exit 2 when it is missing or malformed)."""
    missing = f"{path} does not exist (and is not train, compress or infer)"
    spec = read_document(path, missing=missing)
    if not isinstance(spec, dict):
        fail(EXIT_INPUT, f"{path} must hold one job object")
    return spec


def emit_submitted(job_id: str, as_json: bool, *, waiting: bool = False) -> None:
    """The id of a job just submitted: the whole output without ``--wait``; with it, the
    first line before the progress and the result (on stderr with ``--json``)."""
    if waiting:
        (err_console if as_json else console).print(f"job {job_id}", highlight=False)
    elif as_json:
        print(json.dumps({"job_id": job_id, "status": "PENDING"}))
    else:
        console.print(job_id, highlight=False)


def warn_unserved(client: Client, job: dict[str, Any]) -> None:
    """Warn on stderr when no live worker consumes a queue the job needs."""
    for queue in client.unserved_queues(job):
        err_console.print(
            f"warning: no live worker consumes queue {queue!r} (no heartbeat in Redis); the "
            f"job waits until one starts (`torchfleet worker --queues {queue.split('.')[0]}`)",
            highlight=False,
            soft_wrap=True,
        )
