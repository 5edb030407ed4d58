"""The hostile-spec check of the chaos report: a batch of hostile jobs against a live worker.

A private fleet (its own redis-server, one chaos worker whose only data root is a fresh
folder) gets, straight on its queues as a producer that skips validation would send them,
jobs whose dataset paths lie outside ``TORCHFLEET_DATA_ROOTS`` (an existing folder with
hidden entries, a missing one, ``/sys/class``), escape through ``..`` or a link, or loop
(a link to itself, class folders that link back to their parent); an image bomb (a PNG of a
few KiB that declares 169 megapixels, made here) in a training folder and as an inference
input; a folder with more entries than the worker may scan; and absurd sizes (synthetic
sample counts and values, epochs, architecture arguments). Every job must end in a clear
FAILURE: the input error expected for it, never retried, its message naming none of the
entries planted in the folders it points at, and a path outside the roots refused the same
way whether it exists or not. Then the worker must still answer a normal inference job, and
its memory growth is reported.
"""

from __future__ import annotations

import base64
import io
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from shared.deadletter import delivery_counts
from shared.names import TASK_INFER, TASK_TRAIN, job_key
from workers.bench.chaos_effects import outcomes
from workers.bench.chaos_soak import rss_mb
from workers.bench.chaosfleet import (
    ChaosFleet,
    ClientFactory,
    chaos_input,
    drain,
    open_fleet,
    register_chaos,
)

BOMB_SIDE = 13_000  # 169 megapixels: under PIL's own bomb error, over the worker's limit
DRAIN_S = 240.0
HOSTILE_FIGURES = (
    "cases",
    "clear_failures",
    "retried",
    "listed_a_directory",
    "existence_revealed",
    "served_after",
    "rss_before_mb",
    "rss_after_mb",
    "rss_growth_mb",
    "batch_s",
    "elapsed_s",
)
MISSING = "nothing-here"
OUTSIDE_PAIR = ("outside_root", "outside_missing")  # refused alike: existence is not revealed
FLOOD_LIMIT = 200  # the worker's TORCHFLEET_MAX_DATASET_FILES in this check
NOT_ALLOWED, INVALID = "path_not_allowed", "invalid_job"


def bomb_png() -> bytes:
    """A 1-bit PNG of BOMB_SIDE x BOMB_SIDE black pixels (a few KiB compressed)."""
    out = io.BytesIO()
    Image.new("1", (BOMB_SIDE, BOMB_SIDE)).save(out, format="PNG")
    return out.getvalue()


def small_png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8), color=shade).save(out, format="PNG")
    return out.getvalue()


def plant(data: Path, outside: Path, bomb: bytes) -> list[str]:
    """The folders the cases point at; returns the names planted where no error may list them."""
    secrets = [".ssh", f"sentinel-{uuid.uuid4().hex[:8]}", f".hidden-{uuid.uuid4().hex[:8]}"]
    for name in secrets:
        (outside / name).mkdir(parents=True)
        (data / name).mkdir(parents=True)
    (data / "escape").symlink_to(outside, target_is_directory=True)
    (data / "self").symlink_to(data / "self")
    for cls in ("a", "b"):
        (data / "ring" / cls).parent.mkdir(exist_ok=True)
        (data / "ring" / cls).symlink_to(data / "ring", target_is_directory=True)
        (data / "bomb" / cls).mkdir(parents=True)
        for i in range(4):
            (data / "bomb" / cls / f"{i}.png").write_bytes(small_png(40 + 160 * (cls == "b")))
    (data / "bomb" / "b" / "big.png").write_bytes(bomb)
    for cls in ("a", "b"):
        (data / "flood" / cls).mkdir(parents=True)
    for i in range(FLOOD_LIMIT + 1):
        (data / "flood" / "a" / f"{i}.png").touch()
    return secrets


class Case(NamedTuple):
    """A hostile job and how it must end: an input error's code and a phrase of its message."""

    task: str
    payload: dict[str, Any]
    code: str
    says: str


def train(**fields: Any) -> dict[str, Any]:
    spec = {"kind": "train", "model_name": "hostile", "arch": "chaos_net", "epochs": 1}
    return {**spec, "batch_size": 2, **fields}


def folder(path: Path | str) -> dict[str, Any]:
    """A training job on an image folder (one that would train, were it not hostile)."""
    return train(dataset={"name": "imagefolder", "path": str(path), "image_size": 8})


def cases(data: Path, outside: Path, model: str, bomb: bytes) -> dict[str, Case]:
    """Every hostile job of the batch, by name."""
    synthetic = {"name": "synthetic", "image_size": 8}
    image = {"format": "png", "data": base64.b64encode(bomb).decode()}
    outside_roots = "outside this worker's data roots"
    return {
        "outside_root": Case(TASK_TRAIN, folder(outside), NOT_ALLOWED, outside_roots),
        "outside_missing": Case(TASK_TRAIN, folder(outside / MISSING), NOT_ALLOWED, outside_roots),
        "system_folder": Case(TASK_TRAIN, folder("/sys/class"), NOT_ALLOWED, outside_roots),
        "dotdot_escape": Case(
            TASK_TRAIN, folder(f"{data}/ring/../../outside"), NOT_ALLOWED, "may not contain '..'"
        ),
        "symlink_escape": Case(TASK_TRAIN, folder(data / "escape"), NOT_ALLOWED, "through a link"),
        "symlink_loop": Case(TASK_TRAIN, folder(data / "self"), INVALID, "cannot be resolved"),
        "symlink_ring": Case(TASK_TRAIN, folder(data / "ring"), INVALID, "holds no images"),
        "entry_flood": Case(
            TASK_TRAIN, folder(data / "flood"), INVALID, "TORCHFLEET_MAX_DATASET_FILES"
        ),
        "image_bomb_train": Case(
            TASK_TRAIN, folder(data / "bomb"), INVALID, "TORCHFLEET_MAX_IMAGE_PIXELS"
        ),
        "image_bomb_infer": Case(
            TASK_INFER,
            {"kind": "infer", "model": model, "inputs": [image]},
            "bad_tensor",
            "TORCHFLEET_MAX_IMAGE_PIXELS",
        ),
        "synthetic_samples": Case(
            TASK_TRAIN, train(dataset={**synthetic, "samples": 10**7}), INVALID, "samples"
        ),
        "synthetic_values": Case(
            TASK_TRAIN,
            train(dataset={**synthetic, "samples": 1_000_000, "image_size": 1024}),
            INVALID,
            "synthetic data of",
        ),
        "epochs": Case(TASK_TRAIN, train(dataset=synthetic, epochs=10**6), INVALID, "epochs"),
        "arch_kwargs": Case(
            TASK_TRAIN,
            train(dataset=synthetic, arch="mlp", arch_kwargs={"hidden": 10**9}),
            INVALID,
            "hidden",
        ),
    }


def send_unchecked(fleet: ChaosFleet, task: str, payload: dict[str, Any], job_id: str) -> None:
    """Straight onto the queue, recorded as submitted (as a client that skips validation)."""
    fleet.client.redis.set(job_key(job_id), payload["kind"], ex=3600)
    fleet.client.app.send_task(task, args=[payload], task_id=job_id)


def judge(
    fleet: ChaosFleet, job_id: str, state: Any, case: Case, secrets: list[str]
) -> dict[str, Any]:
    """One case's figures: clear (the expected input error, saying why), retried, listed."""
    error = state.error or ""
    retried = delivery_counts(fleet.client.redis, job_id)["delivered"] > 1 or any(
        r.get("outcome") == "retry" for r in outcomes(fleet.client, job_id)
    )
    return {
        "status": state.status,
        "code": state.error_code,
        "clear": (state.status, state.error_code) == ("FAILURE", case.code)
        and case.says.lower() in error.lower()
        and not retried,
        "retried": retried,
        "listed": [s for s in secrets if s in error],
        "error": error[:200],
    }


def run_hostile(root: Path, client: ClientFactory) -> dict[str, Any]:
    """The hostile-spec check on a fresh private fleet under ``root``; its figures."""
    started = time.monotonic()
    base = root / "hostile"
    fleet = open_fleet(base, client=client)
    try:
        data, outside = base / "data", base / "outside"
        bomb = bomb_png()
        secrets = plant(data, outside, bomb)
        worker = fleet.worker(
            concurrency=2,
            TORCHFLEET_DATA_ROOTS=str(data),
            TORCHFLEET_MAX_DATASET_FILES=str(FLOOD_LIMIT),
        )
        assert worker.pid is not None
        model = register_chaos(fleet.settings)
        drain(fleet.client, [fleet.client.submit_infer(model, chaos_input())], DRAIN_S)
        rss_before = rss_mb(worker.pid)
        sent = time.monotonic()
        batch = cases(data, outside, model, bomb)
        ids = {name: f"hostile-{name}-{uuid.uuid4().hex[:6]}" for name in batch}
        for name, case in batch.items():
            send_unchecked(fleet, case.task, case.payload, ids[name])
        states = drain(fleet.client, ids.values(), DRAIN_S)
        batch_s = time.monotonic() - sent
        rss_after = rss_mb(worker.pid)
        after = drain(fleet.client, [fleet.client.submit_infer(model, chaos_input())], DRAIN_S)
        per_case = [
            {"case": name, **judge(fleet, ids[name], states[ids[name]], case, secrets)}
            for name, case in batch.items()
        ]
        outside_root, outside_missing = (states[ids[c]].error or "" for c in OUTSIDE_PAIR)
        return {
            "cases": len(per_case),
            "clear_failures": sum(1 for c in per_case if c["clear"]),
            "retried": sum(1 for c in per_case if c["retried"]),
            "listed_a_directory": sum(1 for c in per_case if c["listed"]),
            "existence_revealed": outside_root.replace(str(outside), "")
            != outside_missing.replace(str(outside / MISSING), ""),
            "served_after": worker.alive() and all(s.status == "SUCCESS" for s in after.values()),
            "rss_before_mb": round(rss_before, 1),
            "rss_after_mb": round(rss_after, 1),
            "rss_growth_mb": round(rss_after - rss_before, 1),
            "bomb_bytes": len(bomb),
            "batch_s": round(batch_s, 1),
            "elapsed_s": round(time.monotonic() - started, 1),
            "per_case": per_case,
        }
    finally:
        fleet.close()


def hostile_failed(report: dict[str, Any]) -> bool:
    """Whether the report of :func:`run_hostile` shows a job that did not fail clearly, or a
    worker hurt by the batch (the RSS growth is reported, not judged)."""
    return bool(
        report["clear_failures"] < report["cases"]
        or report["listed_a_directory"]
        or report["existence_revealed"]
        or not report["served_after"]
    )
