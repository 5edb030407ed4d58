"""The client against a real Redis with no worker: unknown ids, no worker, finite waits,
images by path, and the CLI's answers to each (issue 13 items 7, 8, 9, 12, 13, 14)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producers import Client, NoWorker, UnknownJob, encode_images
from shared.embedded import EmbeddedRedis
from shared.errors import JobFailed, JobTimeout, ModelNotFound
from shared.names import worker_key
from shared.registry import ModelRegistry, VariantRecord
from shared.settings import Settings
from tests.unit.test_user_traps import PNG_1PX

# The integration tests' worker (same redis-server) heartbeats in db 0; test_ops queues its
# backlog in db 7 and test_limits runs in db 8, so jobs left here must not be seen there.
ISOLATED_DB = 9


@pytest.fixture
def settings(redis_server: EmbeddedRedis, tmp_path: Path) -> Settings:
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{ISOLATED_DB}"
    return Settings(redis_url=url, artifacts=str(tmp_path / "artifacts"))


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def registry(redis_client: redis.Redis) -> ModelRegistry:
    return ModelRegistry(redis_client)


@pytest.fixture
def client(settings: Settings, redis_client: redis.Redis) -> Iterator[Client]:
    fast = settings.model_copy(update={"no_worker_grace_s": 0.5, "wait_timeout_s": 30.0})
    with Client(fast) as c:
        yield c


def fake_heartbeat(r: redis.Redis, queues: list[str]) -> None:
    """The record a live worker keeps in Redis (what `status` and the waits read)."""
    r.set(worker_key("w@test"), json.dumps({"name": "w@test", "queues": queues}), ex=30)


def test_unknown_ids_are_told_from_queued_ones(client: Client) -> None:
    queued = client.submit_train(model_name="digits", epochs=1)
    assert client.state(queued).status == "PENDING"
    with pytest.raises(UnknownJob, match="no job 'no-such-id' was submitted"):
        client.state("no-such-id")
    with pytest.raises(UnknownJob):
        client.wait("no-such-id", timeout=5)
    with pytest.raises(UnknownJob, match="no-such-id"):
        client.wait_many([queued, "no-such-id"], timeout=5)


def test_a_wait_with_no_worker_fails_early_and_says_so(client: Client) -> None:
    job_id = client.submit_train(model_name="digits", epochs=1)
    assert client.unserved_queues({"kind": "train"}) == ["train"]
    started = time.monotonic()
    with pytest.raises(NoWorker, match="no live worker has consumed queue 'train'"):
        client.wait(job_id)  # no timeout: the grace (0.5 s, checked every 2 s) ends it
    with pytest.raises(NoWorker):
        client.wait(job_id, on_progress=lambda state: None)
    with pytest.raises(NoWorker):
        list(client.as_completed([job_id]))
    assert time.monotonic() - started < 15


def test_a_live_worker_keeps_the_wait_going_until_its_timeout(
    client: Client, redis_client: redis.Redis
) -> None:
    job_id = client.submit_train(model_name="digits", epochs=1)
    fake_heartbeat(redis_client, ["train", "compress", "infer"])
    assert client.unserved_queues({"kind": "pipeline", "train": {}}) == []
    assert client.unserved_queues({"kind": "infer", "device": "cuda"}) == ["infer.cuda"]
    with pytest.raises(JobTimeout) as raised:
        client.wait(job_id, timeout=2.5)
    assert not isinstance(raised.value, NoWorker) and "within 2.5 s" in str(raised.value)


def test_wait_has_a_finite_default_timeout(settings: Settings, redis_client: redis.Redis) -> None:
    fake_heartbeat(redis_client, ["train"])
    with Client(settings.model_copy(update={"wait_timeout_s": 1.0})) as c:
        job_id = c.submit_train(model_name="digits", epochs=1)
        with pytest.raises(JobTimeout, match="within 1 s"):
            c.wait(job_id)


def test_as_completed_and_wait_many_return_finished_states(client: Client) -> None:
    ids = [client.submit_train(model_name="digits", epochs=1) for _ in range(3)]
    backend = client.app.backend
    for i, job_id in enumerate(reversed(ids)):  # finish them the way a worker records results
        backend.store_result(job_id, {"kind": "train", "n": i}, "SUCCESS")
    assert {s.job_id for s in client.as_completed(ids, timeout=5)} == set(ids)
    states = client.wait_many(ids, timeout=5)
    assert [s.job_id for s in states] == ids and all(s.status == "SUCCESS" for s in states)


def test_a_job_sent_again_is_not_answered_with_its_old_runs_answer(
    client: Client, redis_client: redis.Redis
) -> None:
    """A process that waited on a job, requeued it (same id, result forgotten) and waits
    again must wait for the new run, even when Celery still holds the old answer."""
    job_id = client.submit_train(model_name="digits", epochs=1)
    fake_heartbeat(redis_client, ["train"])
    backend = client.app.backend
    backend.mark_as_failure(job_id, RuntimeError("the first run failed"))
    with pytest.raises(JobFailed, match="the first run failed"):
        client.wait(job_id, timeout=5)
    old = backend.get_task_meta(job_id, cache=False)
    backend.forget(job_id)  # what a dead-letter requeue does before it sends the job again
    # The old run's pub/sub answer, as Celery keeps one that arrives after its waiter left
    # (celery.backends.asynchronous.BaseResultConsumer.on_state_change) for the next waiter.
    backend._pending_messages.put(job_id, old)
    with pytest.raises(JobTimeout, match="within 1 s"):
        client.wait(job_id, timeout=1.0)
    backend.store_result(job_id, {"kind": "train", "run": 2}, "SUCCESS")
    assert client.wait(job_id, timeout=5) == {"kind": "train", "run": 2}


def test_infer_takes_image_paths_and_bytes(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(PNG_1PX)
    for inputs in ([str(path)], [path], str(path), [PNG_1PX], PNG_1PX):
        job_id = client.submit_infer("digits", inputs)
        assert client.state(job_id).status == "PENDING"
    assert encode_images([path]) == encode_images([PNG_1PX])


def test_a_compress_job_of_an_unknown_model_is_refused_at_submit(
    client: Client, registry: ModelRegistry
) -> None:
    registry.register("digits", registry.new_version("digits"), "base",
                      VariantRecord(digest="a" * 64, arch="mlp"))  # fmt: skip
    with pytest.raises(ModelNotFound, match="'nope' is not registered"):
        client.submit_compress(source="nope", steps=[{"method": "quantize_dynamic"}])
    with pytest.raises(ModelNotFound, match="no version 7"):
        client.submit_compress(source="digits:7", steps=[{"method": "quantize_dynamic"}])


def test_a_timed_out_wait_leaves_no_traceback_at_exit(
    settings: Settings, redis_client: redis.Redis
) -> None:
    script = (
        "import sys\n"
        "from producers import Client\n"
        "from shared.settings import Settings\n"
        f"c = Client(Settings(redis_url={settings.redis_url!r}))\n"
        "job = c.submit_train(model_name='digits', epochs=1)\n"
        "try:\n"
        "    c.wait(job, timeout=0.2)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__)\n"
        "c.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "JobTimeout", done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------ the CLI, no worker
def torchfleet(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHFLEET_")}
    env.update(
        TORCHFLEET_REDIS_URL=settings.redis_url,
        TORCHFLEET_ARTIFACTS=settings.artifacts,
        TORCHFLEET_NO_WORKER_GRACE_S="0.5",
    )
    command = [sys.executable, "-m", "producers.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_cli_unknown_ids_exit_2(settings: Settings, redis_client: redis.Redis) -> None:
    for args in (["results", "no-such-id"], ["wait", "no-such-id"], ["pipeline", "show", "x"]):
        done = torchfleet(settings, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "was submitted" in done.stderr and "PENDING" not in done.stdout


def test_cli_worker_names_the_flag_for_the_bench_queue(settings: Settings) -> None:
    done = torchfleet(settings, "worker", "--queues", "infer,bench")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "unknown queue(s) ['bench']" in done.stderr and "pass --bench" in done.stderr


def test_cli_warns_without_a_worker_and_the_wait_ends_with_exit_3(
    settings: Settings, redis_client: redis.Redis
) -> None:
    args = ("submit", "train", "--model-name", "digits", "--epochs", "1")
    done = torchfleet(settings, *args, "--wait", "--json")
    assert done.returncode == 3, done.stderr
    assert "warning: no live worker consumes queue 'train'" in done.stderr
    assert "no live worker has consumed queue 'train'" in done.stderr
    job_line = next(line for line in done.stderr.splitlines() if line.startswith("job "))
    job_id = job_line.split()[1]
    assert len(job_id) == 32 and done.stdout == ""  # the whole id, on stderr with --json
    assert torchfleet(settings, "results", job_id, "--json").returncode == 0


def test_cli_takes_several_inputs_and_refuses_an_unknown_model(
    settings: Settings, registry: ModelRegistry, tmp_path: Path
) -> None:
    registry.register("digits", registry.new_version("digits"), "base",
                      VariantRecord(digest="a" * 64, arch="mlp"))  # fmt: skip
    images = []
    for name in ("a.png", "b.png"):
        images.append(tmp_path / name)
        images[-1].write_bytes(PNG_1PX)
    paths = [str(p) for p in images]
    done = torchfleet(settings, "submit", "infer", "--model", "digits", "--input", *paths)
    assert done.returncode == 0, done.stderr
    assert "warning: no live worker consumes queue 'infer'" in done.stderr
    done = torchfleet(settings, "submit", "infer", "--model", "nope", "--input", str(images[0]))
    assert done.returncode == 2 and "'nope' is not registered" in done.stderr
    done = torchfleet(settings, "submit", "infer", "--model", "digits:7", "--input", str(images[0]))
    assert done.returncode == 2 and "no version 7" in done.stderr
