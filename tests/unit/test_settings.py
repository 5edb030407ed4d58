"""Settings and the start-up security check."""

from __future__ import annotations

import pytest

from shared.connection import redis_url, ssl_options
from shared.errors import InvalidJob
from shared.settings import Settings
from workers.main import check_security

STRONG = "0123456789abcdef0123456789abcdef"


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHFLEET_MAX_BATCH", "7")
    monkeypatch.setenv("TORCHFLEET_ARTIFACTS", "s3://bucket/models")
    settings = Settings()
    assert settings.max_batch == 7 and settings.artifacts == "s3://bucket/models"


def test_remote_redis_without_password_is_refused() -> None:
    check_security(Settings(redis_url="redis://127.0.0.1:6379/0"))
    check_security(Settings(redis_url=f"redis://:{STRONG}@redis.internal:6379/0"))
    check_security(Settings(redis_url="redis://redis.internal:6379/0", redis_password=STRONG))
    check_security(Settings(redis_url="redis://redis.internal:6379/0", allow_insecure_redis=True))
    with pytest.raises(InvalidJob, match="no password"):
        check_security(Settings(redis_url="redis://redis.internal:6379/0"))


@pytest.mark.parametrize(
    ("url", "password", "setting"),
    [
        ("redis://redis.internal:6379/0", "x", "TORCHFLEET_REDIS_PASSWORD"),
        ("redis://:x@10.0.0.5:6379/0", None, "TORCHFLEET_REDIS_URL"),
        ("rediss://redis.internal:6380/0", "short", "TORCHFLEET_REDIS_PASSWORD"),
    ],
)
def test_a_weak_password_for_a_remote_redis_is_refused(
    url: str, password: str | None, setting: str
) -> None:
    with pytest.raises(InvalidJob, match=f"{setting} has .* at least 16"):
        check_security(Settings(redis_url=url, redis_password=password))


def test_a_weak_password_is_fine_on_loopback_or_when_insecure_is_allowed() -> None:
    check_security(Settings(redis_url="redis://:x@127.0.0.1:6379/0"))
    check_security(Settings(redis_url="redis://[::1]:6379/0", redis_password="x"))
    check_security(
        Settings(redis_url="redis://:x@redis.internal:6379/0", allow_insecure_redis=True)
    )


@pytest.mark.parametrize(
    ("url", "username", "expected"),
    [
        ("redis://[fd00::5]:6379/0", None, f"redis://:{STRONG}@[fd00::5]:6379/0"),
        ("rediss://[::1]/2", "fleet", f"rediss://fleet:{STRONG}@[::1]:6379/2"),
        (
            "redis://alice@redis.internal:6379/0",
            None,
            f"redis://alice:{STRONG}@redis.internal:6379/0",
        ),
        # the URL's user beats the setting, as the URL's password does
        ("redis://alice@redis.internal/0", "bob", f"redis://alice:{STRONG}@redis.internal:6379/0"),
    ],
)
def test_ipv6_hosts_are_bracketed_and_the_urls_user_is_kept(
    url: str, username: str | None, expected: str
) -> None:
    settings = Settings(redis_url=url, redis_username=username, redis_password=STRONG)
    assert redis_url(settings) == expected


def test_password_user_and_tls_are_folded_in() -> None:
    settings = Settings(
        redis_url="rediss://redis.internal:6380/1", redis_username="fleet", redis_password="p@ss"
    )
    assert redis_url(settings) == "rediss://fleet:p%40ss@redis.internal:6380/1"
    options = ssl_options(settings)
    assert options is not None and options["ssl_cert_reqs"].name == "CERT_REQUIRED"
    assert ssl_options(Settings()) is None


def test_bad_device_setting_is_refused() -> None:
    with pytest.raises(ValueError):
        Settings(device="tpu")
