"""The checkpoint sweeper's decisions against a real Redis and a real store (workers/sweeper.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
import torch

from shared.names import KOMBU_UNACKED, deliveries_key, job_key, result_key
from workers import sweeper
from workers.artifacts import ArtifactStore
from workers.sweeper import owners, sweep_orphans

DAY_S = 24 * 3600


def checkpoint(store: ArtifactStore, job_id: str) -> str:
    store.put_checkpoint(job_id, {"w": torch.zeros(1)}, {"epoch": 1})
    return job_id


def result(client: redis.Redis, task_id: str, status: str) -> None:
    client.set(result_key(task_id), json.dumps({"status": status, "task_id": task_id}))


def held(client: redis.Redis, task_id: str) -> None:
    """A delivered, unacknowledged message, as kombu's Redis transport keeps it."""
    message = {"body": "", "headers": {"id": task_id, "task": "torchfleet.train"}}
    client.hset(KOMBU_UNACKED, f"tag-{task_id}", json.dumps([message, "train", "train"]))


def test_owners_include_the_pipeline_stage_a_checkpoint_may_belong_to() -> None:
    assert owners("job1") == ["job1"]
    assert owners("p-1-train") == ["p-1-train", "p-1:train"]


def test_only_checkpoints_nobody_will_resume_are_removed(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    store = ArtifactStore(str(tmp_path))
    ids = {name: checkpoint(store, name) for name in (
        "failed", "revoked", "forgotten", "queued", "counted", "running", "held", "p1-train",
        "stale",
    )}  # fmt: skip
    result(redis_client, "failed", "FAILURE")  # dead-lettered jobs end so too
    result(redis_client, "revoked", "REVOKED")
    redis_client.set(job_key("queued"), "train")  # submitted, waiting for a worker
    redis_client.hset(deliveries_key("counted"), "delivered", 1)  # a dead worker's, restored
    result(redis_client, "running", "PROGRESS")
    result(redis_client, "held", "FAILURE")  # stored, then its worker died before the ack
    held(redis_client, "held")
    held(redis_client, "p1:train")  # a pipeline's train stage, running
    redis_client.set(job_key("stale"), "train")  # known, but not saved for over the TTL
    stale = tmp_path / "checkpoints" / "stale" / "meta.json"
    meta = json.loads(stale.read_text())
    stale.write_text(json.dumps({**meta, "saved_at": meta["saved_at"] - 2 * DAY_S}))

    removed, _ = sweep_orphans(store, redis_client, max_age_s=DAY_S)
    assert removed == ["failed", "forgotten", "revoked", "stale"]
    assert sorted(store.checkpoint_ids()) == sorted(
        set(ids.values()) - {"failed", "forgotten", "revoked", "stale"}
    )


def test_a_pass_looks_at_a_bounded_batch_and_the_next_takes_up_after_it(
    redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweeper, "SWEEP_BATCH", 2)
    store = ArtifactStore(str(tmp_path))
    for name in ("a", "b", "c"):
        checkpoint(store, name)
    redis_client.set(job_key("b"), "train")  # kept: the cursor must still move past it
    removed, after = sweep_orphans(store, redis_client, max_age_s=DAY_S)
    assert (removed, after) == (["a"], "b")
    removed, after = sweep_orphans(store, redis_client, max_age_s=DAY_S, after=after)
    assert (removed, after) == (["c"], "c")
    assert sweep_orphans(store, redis_client, max_age_s=DAY_S, after=after) == ([], "b")  # again
    assert store.checkpoint_ids() == ["b"]
