"""Settings and the start-up security check."""

from __future__ import annotations

import pytest

from shared.connection import redis_url, ssl_options
from shared.errors import InvalidJob
from shared.settings import Settings
from workers.main import check_security


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHFLEET_MAX_BATCH", "7")
    monkeypatch.setenv("TORCHFLEET_ARTIFACTS", "s3://bucket/models")
    settings = Settings()
    assert settings.max_batch == 7 and settings.artifacts == "s3://bucket/models"


def test_remote_redis_without_password_is_refused() -> None:
    check_security(Settings(redis_url="redis://127.0.0.1:6379/0"))
    check_security(Settings(redis_url="redis://:secret@redis.internal:6379/0"))
    check_security(Settings(redis_url="redis://redis.internal:6379/0", redis_password="x"))
    check_security(Settings(redis_url="redis://redis.internal:6379/0", allow_insecure_redis=True))
    with pytest.raises(InvalidJob, match="no password"):
        check_security(Settings(redis_url="redis://redis.internal:6379/0"))


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
