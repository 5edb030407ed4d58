"""Container healthcheck: does a Celery worker on this host answer a ping through Redis?

Run inside a worker container (the image's HEALTHCHECK and docker-compose.yml do)::

    python /app/deploy/healthcheck.py [--node 'GLOB'] [--timeout 10]

It builds the fleet's Celery app from the TORCHFLEET_* settings (password and TLS included)
without importing torch, and pings only the workers whose node name matches ``--node``
(default ``*@$HOSTNAME``: whatever name ``torchfleet worker`` chose, on this container). It
exits 0 on the first reply and 1 otherwise, with the reason on stderr.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from fnmatch import fnmatchcase

import redis
from kombu.exceptions import OperationalError
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from shared.celery_app import create_app
from shared.connection import redis_url, ssl_options
from shared.settings import Settings, get_settings

DEFAULT_TIMEOUT_S = 10.0


def this_host_pattern() -> str:
    """A glob for every Celery node on this host (a compose container's hostname is its id)."""
    return f"*@{socket.gethostname()}"


def redis_problem(settings: Settings) -> str | None:
    """Why Redis cannot be used (unreachable, wrong password...), or None. One try, no retry."""
    client = redis.Redis.from_url(
        redis_url(settings),
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=5,
        **(ssl_options(settings) or {}),
    )
    try:
        client.ping()
    except RedisError as error:
        return f"{type(error).__name__}: {error}"
    finally:
        client.close()
    return None


def ping(pattern: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Names of the workers matching the glob ``pattern`` that answered within ``timeout_s``."""
    app = create_app()
    # The fleet's app retries the broker forever; a health probe must answer, not wait.
    app.conf.broker_connection_max_retries = 1
    try:
        replies = app.control.ping(pattern=pattern, matcher="glob", limit=1, timeout=timeout_s)
    finally:
        app.close()
    return [node for reply in replies for node in reply if fnmatchcase(node, pattern)]


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status for Docker: 0 healthy, 1 unhealthy."""
    parser = argparse.ArgumentParser(prog="healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--node", default=this_host_pattern(), help="glob of node names")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    args = parser.parse_args(argv)
    problem = redis_problem(get_settings())
    if problem is not None:
        print(f"redis unusable: {problem}", file=sys.stderr)
        return 1
    try:
        nodes = ping(args.node, args.timeout)
    except (OperationalError, RedisError, OSError) as error:
        print(f"{args.node}: broker unreachable: {error}", file=sys.stderr)
        return 1
    if not nodes:
        print(f"{args.node}: no worker answered within {args.timeout:g}s", file=sys.stderr)
        return 1
    print(f"{', '.join(nodes)}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
