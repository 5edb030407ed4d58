"""Training jobs end to end in-process: a real Redis registry, a local artifact store, the CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from PIL import Image
from pydantic import ValidationError

from shared.embedded import free_port
from shared.errors import BrokerUnavailable, DatasetNotFound, InvalidJob, TrainingDiverged
from shared.jobs import TrainJob, TrainResult
from shared.registry import ModelRegistry
from shared.settings import Settings
from tests.unit.training_helpers import MakeContext, context_maker, same_weights
from workers.artifacts import ArtifactStore
from workers.jobs.training import execute
from workers.modelio import build_module
from workers.train.optim import lr_factor
from workers.train.run import build_model, seed_everything
from workers.zoo.datasets import load_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY: dict[str, Any] = {
    "model_name": "tiny",
    "arch": "mlp",
    "arch_kwargs": {"hidden": 32, "depth": 1},
    "dataset": {
        "name": "synthetic",
        "samples": 80,
        "image_size": 8,
        "channels": 1,
        "num_classes": 3,
    },
    "epochs": 2,
    "batch_size": 16,
}
DIGITS = {"name": "digits", "image_size": 8, "channels": 1, "limit": 200}


def tiny_job(**overrides: Any) -> TrainJob:
    spec = {**TINY, **overrides}
    return TrainJob.model_validate(spec)


def curve(result: TrainResult) -> list[dict[str, float]]:
    """The history without wall times, which differ from run to run."""
    return [r.model_dump(exclude={"seconds"}) for r in result.history]


@pytest.fixture
def store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.artifacts)


@pytest.fixture
def make_ctx(settings: Settings, registry: ModelRegistry, store: ArtifactStore) -> MakeContext:
    return context_maker(settings, registry, store)


# ------------------------------------------------------------------ the happy path
def test_training_registers_the_best_epoch_with_manifest_and_aliases(
    make_ctx: MakeContext, store: ArtifactStore, registry: ModelRegistry
) -> None:
    messages: list[dict[str, Any]] = []
    job = tiny_job(arch="cifar_cnn", arch_kwargs={}, dataset=DIGITS, epochs=2, aliases=["staging"])
    result = execute(job, make_ctx(progress=messages.append))

    assert [r.epoch for r in result.history] == [1, 2]
    best = max(result.history, key=lambda r: r.val_accuracy)
    assert (result.best_epoch, result.best_val_accuracy) == (best.epoch, best.val_accuracy)
    assert result.best_val_accuracy > 0.5  # real digits: far above the 10% of guessing
    assert result.version == 1 and result.resumed_from_epoch is None

    resolved = registry.resolve("tiny@staging")
    assert resolved.version == 1 and resolved.record.digest == result.model_digest
    assert resolved.record.job_id == "job-1" and resolved.record.method == "train"
    tensors, manifest = store.get_model(result.model_digest)
    assert manifest.arch_kwargs == {"num_classes": 10, "in_channels": 1, "image_size": 8}
    assert manifest.input_shape == [1, 8, 8] and manifest.class_names[3] == "3"
    assert manifest.metrics["val_accuracy"] == result.best_val_accuracy
    assert manifest.lineage["job_id"] == "job-1"
    assert manifest.lineage["dataset"]["name"] == "digits"
    assert manifest.lineage["hyperparameters"]["optimizer"]["lr"] == 0.01

    module = build_module(manifest, tensors)  # the stored weights are the best epoch's
    val = load_dataset(job.dataset).val
    images = torch.stack([val[i][0] for i in range(len(val))])  # type: ignore[arg-type]
    labels = torch.tensor([int(val[i][1]) for i in range(len(val))])  # type: ignore[arg-type]
    with torch.no_grad():
        accuracy = (module(images).argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(result.best_val_accuracy)

    # kept until the task has stored the result (workers.effects.DropsCheckpoint drops it)
    assert store.get_checkpoint("job-1") is not None
    ends = [m for m in messages if "val_loss" in m]
    assert [m["epoch"] for m in ends] == [1, 2]
    assert ends[-1]["eta_s"] == 0.0 and ends[-1]["steps"] == ends[-1]["step"]
    assert all(m["stage"] == "train" for m in messages)
    TrainResult.model_validate_json(result.model_dump_json())


def test_the_same_seed_repeats_the_run_exactly_on_the_cpu(make_ctx: MakeContext) -> None:
    job = tiny_job(augment={"random_crop": True, "hflip": True})
    first = execute(job, make_ctx("run-a"))
    second = execute(job, make_ctx("run-b"))
    other = execute(tiny_job(augment={"random_crop": True, "hflip": True}, seed=1), make_ctx("c"))
    assert curve(first) == curve(second)
    assert same_weights(make_ctx("weights").store, first, second)  # digests cover manifests
    assert curve(other) != curve(first)
    assert second.version == first.version + 1


class WorkerDied(Exception):
    pass


def test_a_redelivered_job_resumes_from_its_checkpoint(
    make_ctx: MakeContext, store: ArtifactStore, registry: ModelRegistry
) -> None:
    job = tiny_job(
        epochs=3,
        optimizer={"name": "adam", "lr": 0.005},
        schedule={"name": "cosine", "warmup_epochs": 1},
        early_stopping={"patience": 5},
    )

    def die_after_epoch_1(message: dict[str, Any]) -> None:
        if "val_loss" in message and message["epoch"] == 1:
            raise WorkerDied

    with pytest.raises(WorkerDied):
        execute(job, make_ctx("job-r", progress=die_after_epoch_1))
    found = store.get_checkpoint("job-r")
    assert found is not None and found[1]["epoch"] == 1
    assert registry.names() == []  # nothing registered by the dead worker

    resumed = execute(job, make_ctx("job-r"))
    assert resumed.resumed_from_epoch == 1
    assert [r.epoch for r in resumed.history] == [1, 2, 3]
    uninterrupted = execute(job, make_ctx("job-u"))
    assert curve(resumed) == curve(uninterrupted)
    assert same_weights(make_ctx("weights").store, resumed, uninterrupted)


def test_a_job_redelivered_after_registration_keeps_its_version(
    make_ctx: MakeContext, store: ArtifactStore, registry: ModelRegistry, monkeypatch: Any
) -> None:
    job = tiny_job(epochs=1)
    monkeypatch.setattr(store, "drop_checkpoint", lambda job_id: None)  # died before dropping
    first = execute(job, make_ctx("job-v"))
    monkeypatch.undo()
    again = execute(job, make_ctx("job-v"))
    assert again.version == first.version == 1
    assert again.resumed_from_epoch == 1 and same_weights(make_ctx("weights").store, again, first)
    assert list(registry.describe("tiny")["versions"]) == ["1"]
    assert registry.resolve("tiny:1").record.digest == again.model_digest  # what it answered


def test_a_registry_outage_is_transient_and_the_retry_resumes(
    make_ctx: MakeContext, store: ArtifactStore
) -> None:
    job = tiny_job(epochs=1)
    unreachable = ModelRegistry(redis.Redis(port=free_port(), socket_connect_timeout=0.2))
    with pytest.raises(BrokerUnavailable, match="resumes from its checkpoint"):
        execute(job, dataclasses.replace(make_ctx("job-o"), registry=unreachable))
    assert store.get_checkpoint("job-o") is not None
    retried = execute(job, make_ctx("job-o"))
    assert retried.resumed_from_epoch == 1 and retried.version == 1


def test_early_stopping_stops_when_validation_loss_stops_falling(make_ctx: MakeContext) -> None:
    job = tiny_job(  # random labels: the validation loss soon rises
        epochs=30,
        optimizer={"name": "adam", "lr": 0.01},
        early_stopping={"patience": 2},
    )
    result = execute(job, make_ctx())
    assert result.stopped_early and len(result.history) < 30
    losses = [r.val_loss for r in result.history]
    best_before = min(losses[:-2])
    assert all(loss >= best_before for loss in losses[-2:])


OPTIONS: list[dict[str, Any]] = [
    {"optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}},
    {"optimizer": {"name": "adam", "lr": 0.001}},
    {"optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.05}},
    {"loss": {"name": "cross_entropy", "label_smoothing": 0.1}},
    {"loss": {"name": "bce"}},
    {"loss": {"name": "mse", "label_smoothing": 0.05}},
    {"schedule": {"name": "onecycle"}},
    {"init": "source", "arch": "cifar_cnn", "arch_kwargs": {}},
    {"init": "source", "arch": "mobilenet_v3_small", "arch_kwargs": {}, "batch_size": 32},
    {"grad_clip": 1.0, "amp": True},
    {"augment": {"random_crop": True, "crop_padding": 2, "hflip": True}},
]


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "-".join(map(str, o.values()))[:40])
def test_each_option_trains_and_registers(
    option: dict[str, Any], make_ctx: MakeContext, registry: ModelRegistry
) -> None:
    result = execute(tiny_job(**option), make_ctx())
    assert len(result.history) == 2
    assert all(np.isfinite(r.train_loss) and np.isfinite(r.val_loss) for r in result.history)
    assert registry.resolve("tiny:1").record.digest == result.model_digest


def test_the_history_records_the_scheduled_learning_rate(make_ctx: MakeContext) -> None:
    job = tiny_job(epochs=3, schedule={"name": "step", "step_size": 1, "gamma": 0.5})
    result = execute(job, make_ctx())
    assert [r.lr for r in result.history] == pytest.approx([0.01, 0.005, 0.0025])
    warm = tiny_job(epochs=3, schedule={"name": "cosine", "warmup_epochs": 1})
    steps = 4  # 64 training samples in batches of 16
    expected = [0.01 * lr_factor(e * steps - 1, warm.schedule, steps, 3) for e in (1, 2, 3)]
    assert [r.lr for r in execute(warm, make_ctx("w")).history] == pytest.approx(expected)


def initial_and_trained(job: TrainJob, result: TrainResult, store: ArtifactStore) -> float:
    """Distance between the weights a run started from and the ones it registered."""
    seed_everything(job.seed)
    initial, _ = build_model(job, load_dataset(job.dataset))
    trained, _ = store.get_model(result.model_digest)
    return float(
        torch.sqrt(
            sum(((trained[k] - v) ** 2).sum() for k, v in initial.state_dict().items())  # type: ignore[arg-type]
        )
    )


def test_gradient_clipping_bounds_each_step(make_ctx: MakeContext, store: ArtifactStore) -> None:
    job = tiny_job(epochs=1, grad_clip=1e-3, optimizer={"name": "sgd", "lr": 0.5, "momentum": 0})
    result = execute(job, make_ctx())
    steps = 4
    assert 0 < initial_and_trained(job, result, store) <= steps * 0.5 * 1e-3 * 1.0001


def test_the_l2_penalty_shrinks_the_weights(make_ctx: MakeContext, store: ArtifactStore) -> None:
    def weight_norm(l2: float, job_id: str) -> float:
        job = tiny_job(epochs=2, optimizer={"name": "sgd", "lr": 0.05, "l2_penalty": l2})
        tensors, _ = store.get_model(execute(job, make_ctx(job_id)).model_digest)
        return float(sum((t.float() ** 2).sum() for t in tensors.values()))  # type: ignore[arg-type]

    assert weight_norm(0.2, "l2") < 0.9 * weight_norm(0.0, "plain")


def test_training_on_an_image_folder(make_ctx: MakeContext, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, shade in [("dark", 40), ("light", 215)]:
        (tmp_path / name).mkdir()
        for i in range(12):
            pixels = np.clip(rng.normal(shade, 20, (10, 10, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    dataset = {"name": "imagefolder", "path": str(tmp_path), "image_size": 8}
    job = tiny_job(dataset=dataset, batch_size=8, optimizer={"name": "adam", "lr": 0.01}, epochs=3)
    result = execute(job, make_ctx())
    assert result.best_val_accuracy == 1.0  # dark vs light is easy


# ------------------------------------------------------------------ bad input
def test_a_diverging_loss_stops_the_job_and_registers_nothing(
    make_ctx: MakeContext, registry: ModelRegistry, store: ArtifactStore
) -> None:
    job = tiny_job(epochs=5, loss={"name": "mse"}, optimizer={"name": "sgd", "lr": 10})
    with pytest.raises(TrainingDiverged, match=r"at epoch \d+, step \d+") as caught:
        execute(job, make_ctx())
    assert "lower the learning rate" in str(caught.value)
    assert registry.names() == []
    assert not Path(store.root, "models").exists()


def test_a_batch_larger_than_the_training_set_is_refused(make_ctx: MakeContext) -> None:
    with pytest.raises(InvalidJob, match="batch_size 65 is larger than the training set"):
        execute(tiny_job(batch_size=65), make_ctx())


def test_an_image_size_the_architecture_cannot_take_is_refused(make_ctx: MakeContext) -> None:
    dataset = {**TINY["dataset"], "image_size": 10}
    with pytest.raises(InvalidJob, match="divisible by 4"):
        execute(tiny_job(arch="cifar_cnn", arch_kwargs={}, dataset=dataset), make_ctx())


def test_an_architecture_that_does_not_fit_the_input_fails_before_training(
    make_ctx: MakeContext, registry: ModelRegistry
) -> None:
    with pytest.raises(InvalidJob, match=r"does not fit inputs of shape \[1, 8, 8\]"):
        execute(tiny_job(arch_kwargs={"image_size": 4}), make_ctx())
    with pytest.raises(InvalidJob, match="3-class dataset"):
        execute(tiny_job(arch_kwargs={"num_classes": 7}), make_ctx())
    assert registry.names() == []


def test_a_missing_dataset_folder_is_dataset_not_found(
    make_ctx: MakeContext, tmp_path: Path
) -> None:
    dataset = {"name": "cifar10", "path": str(tmp_path / "no-cifar-here")}
    with pytest.raises(DatasetNotFound, match="no-cifar-here"):
        execute(tiny_job(dataset=dataset), make_ctx())


@pytest.mark.parametrize("lr", [0, -0.01])
def test_a_learning_rate_at_or_below_zero_is_refused_before_sending(lr: float) -> None:
    with pytest.raises(ValidationError, match=r"optimizer\.lr"):
        tiny_job(optimizer={"lr": lr})
