"""`torchfleet deadletter list|requeue` against the session's real Redis and worker."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from producers.client import Client
from producers.encoding import encode_array
from shared.deadletter import DeadLetter, dead_letter, delivery_counts, list_dead_letters
from shared.settings import Settings
from tests.fleet import WorkerProcess
from tests.integration.test_cli import torchfleet
from tests.integration.test_infer import register_cnn

pytestmark = pytest.mark.integration


def test_deadletter_list_and_requeue_run_the_job_again_under_its_id(
    fleet_env: dict[str, str], fleet_settings: Settings, client: Client, worker: WorkerProcess
) -> None:
    model = register_cnn(fleet_settings).name
    job_id = f"dl-{uuid.uuid4().hex[:8]}"
    inputs = encode_array(np.zeros((1, 3, 32, 32), np.float32)).model_dump(mode="json")
    payload = {"kind": "infer", "model": model, "inputs": inputs}
    reason = "delivered 3 times without finishing (max_deliveries=3)"
    dead_letter(
        client.redis,
        DeadLetter(
            job_id=job_id, task="torchfleet.infer", args=[payload], reason=reason, deliveries=4
        ),
    )
    listed = torchfleet(fleet_env, "deadletter", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = [e for e in json.loads(listed.stdout) if e["job_id"] == job_id]
    assert entry["reason"] == reason and entry["deliveries"] == 4
    assert client.status()["deadletter"] >= 1

    requeued = torchfleet(fleet_env, "deadletter", "requeue", job_id, "--json")
    assert requeued.returncode == 0, requeued.stderr
    assert json.loads(requeued.stdout) == {"requeued": [job_id], "refused": {}, "not_found": []}
    result = client.wait(job_id, timeout=120)
    assert result["model"] == model and result["worker"] == worker.name
    assert all(e.job_id != job_id for e in list_dead_letters(client.redis))
    assert delivery_counts(client.redis, job_id)["delivered"] == 1  # the count restarted


def test_deadletter_requeue_of_an_unknown_id_says_so(fleet_env: dict[str, str]) -> None:
    done = torchfleet(fleet_env, "deadletter", "requeue", "no-such-job", "--json")
    assert done.returncode == 2
    assert json.loads(done.stdout) == {"requeued": [], "refused": {}, "not_found": ["no-such-job"]}


def test_deadletter_requeue_needs_ids_or_all(fleet_env: dict[str, str]) -> None:
    done = torchfleet(fleet_env, "deadletter", "requeue")
    assert done.returncode == 2 and "--all" in done.stderr + done.stdout
