"""Redis connections built from settings (password, ACL user and TLS included)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlparse, urlunparse

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.errors import RedisFull
from shared.settings import Settings

DEFAULT_PORT = 6379


def redis_url(settings: Settings) -> str:
    """The Redis URL with the user and password from settings folded in, if the URL lacks
    them (a user named in the URL is kept: it is an ACL user)."""
    parts = urlparse(settings.redis_url)
    if parts.password or not settings.redis_password:
        return settings.redis_url
    user = parts.username or quote(settings.redis_username or "", safe="")  # URL's: quoted
    auth = f"{user}:{quote(settings.redis_password, safe='')}@"
    host = parts.hostname or "127.0.0.1"
    if ":" in host:  # an IPv6 address: urlparse took its brackets off
        host = f"[{host}]"
    netloc = f"{auth}{host}:{parts.port or DEFAULT_PORT}"
    return urlunparse(parts._replace(netloc=netloc))


def ssl_options(settings: Settings) -> dict[str, Any] | None:
    """Certificate-checking TLS options for rediss:// URLs, or None for plain redis://."""
    if not settings.redis_url.startswith("rediss://"):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_tls_ca:
        options["ssl_ca_certs"] = settings.redis_tls_ca
    return options


def redis_client(settings: Settings, *, retry: bool = True) -> redis.Redis:
    """A redis-py client that retries briefly on connection errors.

    ``retry=False``: a lost connection raises at once instead of the command being sent
    again. A reader whose commands change state (``XREADGROUP``, ``XAUTOCLAIM``) needs to
    know: a command that ran but whose answer was lost, sent again, would leave what it
    read pending where the reader never looks."""
    kwargs: dict[str, Any] = {
        "decode_responses": False,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
        "retry_on_timeout": True,
    }
    if not retry:
        kwargs.update(retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
    kwargs.update(ssl_options(settings) or {})
    return redis.Redis.from_url(redis_url(settings), **kwargs)


OOM_REPLY = "command not allowed when used memory > 'maxmemory'"


def is_redis_full(error: BaseException) -> bool:
    """Redis at ``maxmemory`` (``noeviction``) refused a write: the error itself or one it was
    raised from. A script's refusal reaches redis-py as a plain ``ResponseError``."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, redis.OutOfMemoryError) or (
            isinstance(seen, redis.ResponseError) and OOM_REPLY in str(seen)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def refused_when_full(what: str) -> Iterator[None]:
    """Turn Redis's out-of-memory refusal of ``what`` into :class:`RedisFull`, which says
    what to do about it."""
    try:
        yield
    except Exception as e:
        if not is_redis_full(e):
            raise
        raise RedisFull(
            f"Redis is full (maxmemory reached, policy noeviction) and refused {what}: nothing "
            "was queued. Submit it again (under the same id) once memory frees; to make room, "
            "lower TORCHFLEET_RESULT_TTL_S or TORCHFLEET_FAILURE_TTL_S, or give Redis more "
            "maxmemory"
        ) from e
