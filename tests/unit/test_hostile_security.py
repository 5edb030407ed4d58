"""Security settings: no pickle, safe torch.load, JSON-only Celery, TTLs, Redis ACL users."""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.celery_app import create_app
from shared.connection import redis_client
from shared.embedded import find_redis_server, free_port
from shared.names import QUEUE_INFER, TASK_INFER, queue_keys
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("shared", "workers", "producers", "scripts", "tests")
PICKLE_MODULES = frozenset(
    {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal"}
)
# Tests that build pickle payloads on purpose, to prove the fleet never runs them.
HOSTILE_TESTS = frozenset({
    "tests/unit/test_artifacts.py",
    "tests/integration/test_chaos_hostile.py",
    "tests/unit/test_data_confinement.py",
    "tests/integration/test_hostile_data.py",
})  # fmt: skip
ACL_USER, ACL_PASSWORD = "fleet", "s3cret-pass"


@lru_cache(maxsize=1)
def python_files() -> tuple[tuple[str, ast.Module], ...]:
    """Every project source file, parsed once."""
    return tuple(
        (str(path.relative_to(ROOT)), ast.parse(path.read_text(), str(path)))
        for folder in SOURCE_DIRS
        for path in sorted((ROOT / folder).rglob("*.py"))
    )


def test_the_source_is_found() -> None:
    names = [name for name, _ in python_files()]
    assert "workers/artifacts.py" in names and "shared/celery_app.py" in names


def test_torch_load_is_only_ever_called_with_weights_only_true() -> None:
    offenders = []
    for name, tree in python_files():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "load":
                owner = func.value
                if isinstance(owner, ast.Name) and owner.id == "torch":
                    safe = any(
                        k.arg == "weights_only"
                        and isinstance(k.value, ast.Constant)
                        and k.value.value is True
                        for k in node.keywords
                    )
                    if not safe:
                        offenders.append(f"{name}:{node.lineno}")
    assert offenders == [], f"torch.load without weights_only=True: {offenders}"


def test_no_module_imports_pickle_outside_the_hostile_tests() -> None:
    offenders = []
    for name, tree in python_files():
        if name in HOSTILE_TESTS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                found = [module] if module.split(".")[0] in PICKLE_MODULES else []
            else:
                continue
            offenders += [f"{name}:{node.lineno} imports {m}" for m in found]
    assert offenders == []


def test_celery_speaks_json_only_and_results_expire() -> None:
    settings = Settings(result_ttl_s=1234)
    conf = create_app(settings).conf
    assert conf.task_serializer == conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert list(conf.result_accept_content) == ["json"]
    assert conf.event_serializer == "json"
    assert conf.result_expires == 1234
    assert conf.task_acks_late and conf.task_reject_on_worker_lost


def test_stored_results_carry_the_ttl(redis_server: object, redis_client: redis.Redis) -> None:
    url = redis_client.connection_pool.connection_kwargs
    settings = Settings(redis_url=f"redis://127.0.0.1:{url['port']}/0", result_ttl_s=600)
    app = create_app(settings)
    app.backend.store_result("ttl-job", {"ok": True}, "SUCCESS")
    ttl = redis_client.ttl("celery-task-meta-ttl-job")
    assert 0 < ttl <= 600
    app.close()


def test_rediss_urls_check_certificates_for_broker_and_backend() -> None:
    settings = Settings(redis_url="rediss://redis.internal:6380/0", redis_tls_ca="/ca.pem")
    conf = create_app(settings).conf
    for options in (conf.broker_use_ssl, conf.redis_backend_use_ssl):
        assert options["ssl_cert_reqs"].name == "CERT_REQUIRED"
        assert options["ssl_ca_certs"] == "/ca.pem"


# ----------------------------------------------------------------- Redis ACL
@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server whose default user is off and whose fleet user needs a password."""
    port = free_port()
    folder = tmp_path_factory.mktemp("acl")
    command = [
        find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
        "--save", "", "--appendonly", "no",
        "--user", "default", "off",
        "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all", "-@dangerous",
        "+info", "+keys",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe = redis.Redis(
            port=port, username=ACL_USER, password=ACL_PASSWORD, socket_connect_timeout=0.5
        )
        for _ in range(200):
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None:
                    pytest.fail("redis-server with an ACL did not start")
                subprocess.run(["sleep", "0.02"], check=True)  # server start-up, bounded
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_acl_user_and_password_from_settings_open_redis(acl_redis: int) -> None:
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{acl_redis}/0",
        redis_username=ACL_USER,
        redis_password=ACL_PASSWORD,
    )
    client = redis_client(settings)
    assert client.ping()
    app = create_app(settings)
    app.send_task(TASK_INFER, args=[{}], task_id="acl-job")
    assert sum(int(client.llen(key)) for key in queue_keys(QUEUE_INFER)) == 1
    app.backend.store_result("acl-job", {"ok": True}, "SUCCESS")
    assert app.backend.get_task_meta("acl-job")["status"] == "SUCCESS"
    app.close()
    client.close()


def test_an_acl_user_named_in_the_url_is_kept_beside_the_password_setting(
    acl_redis: int,
) -> None:
    settings = Settings(
        redis_url=f"redis://{ACL_USER}@127.0.0.1:{acl_redis}/0", redis_password=ACL_PASSWORD
    )
    assert redis_client(settings).ping()  # as the ACL user: the default user is off


def test_redis_refuses_no_password_and_a_wrong_one(acl_redis: int) -> None:
    with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
        redis.Redis(port=acl_redis, retry=Retry(NoBackoff(), 0)).ping()
    wrong = Settings(
        redis_url=f"redis://127.0.0.1:{acl_redis}/0", redis_username=ACL_USER, redis_password="no"
    )
    with pytest.raises(redis.AuthenticationError):
        redis_client(wrong).ping()


def test_the_acl_user_cannot_run_dangerous_commands(acl_redis: int) -> None:
    client = redis.Redis(port=acl_redis, username=ACL_USER, password=ACL_PASSWORD)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.config_set("dir", "/tmp")
