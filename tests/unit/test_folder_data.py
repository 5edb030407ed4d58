"""Folder datasets end to end through the pure training code: resume, split layouts, limits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.errors import InvalidJob, PathNotAllowed
from shared.jobs import DatasetSpec, TrainJob, TrainResult
from shared.registry import ModelRegistry
from shared.settings import Settings
from tests.unit.training_helpers import MakeContext, context_maker, same_weights
from workers.artifacts import ArtifactStore
from workers.jobs.training import execute
from workers.train import data
from workers.zoo.confine import DataLimits
from workers.zoo.datasets import DatasetBundle, load_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_classes(root: Path, classes: list[str], per_class: int = 12, size: int = 8) -> None:
    """PNG images whose shade depends on the class, with noise: learnable, not trivial."""
    rng = np.random.default_rng(len(classes) * 100 + per_class)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        shade = 40 + 80 * index
        for i in range(per_class):
            pixels = np.clip(rng.normal(shade, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def curve(result: TrainResult) -> list[dict[str, float]]:
    return [r.model_dump(exclude={"seconds"}) for r in result.history]


@pytest.fixture
def make_ctx(settings: Settings, registry: ModelRegistry) -> MakeContext:
    return context_maker(settings, registry, ArtifactStore(settings.artifacts))


@pytest.fixture
def store_of(settings: Settings) -> Callable[[str], Any]:
    return ArtifactStore(settings.artifacts).get_model


class WorkerDied(Exception):
    pass


def folder_job(path: Path, **overrides: Any) -> TrainJob:
    spec: dict[str, Any] = {
        "model_name": "folder",
        "arch": "mlp",
        "arch_kwargs": {"hidden": 16, "depth": 1},
        "dataset": {"name": "imagefolder", "path": str(path), "image_size": 8},
        "epochs": 4,
        "batch_size": 8,
        "optimizer": {"name": "adam", "lr": 0.01},
        "augment": {"random_crop": True, "crop_padding": 1, "hflip": True},
    }
    return TrainJob.model_validate({**spec, **overrides})


def test_a_folder_dataset_resumes_bit_identically_with_loader_processes(
    make_ctx: MakeContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loader worker processes are what a real (non-daemon) worker uses for file data; force
    # them even on a one-core machine, where the fleet would load in-process.
    monkeypatch.setattr(data, "loader_workers", lambda bundle: 0 if bundle.in_memory else 2)
    write_classes(tmp_path / "shapes", ["a", "b", "c"])
    job = folder_job(tmp_path / "shapes")

    def die_after_epoch_2(message: dict[str, Any]) -> None:
        if "val_loss" in message and message["epoch"] == 2:
            raise WorkerDied

    with pytest.raises(WorkerDied):
        execute(job, make_ctx("job-r", progress=die_after_epoch_2))
    resumed = execute(job, make_ctx("job-r"))
    uninterrupted = execute(job, make_ctx("job-u"))

    assert resumed.resumed_from_epoch == 2
    assert [r.epoch for r in uninterrupted.history] == [1, 2, 3, 4]
    assert curve(resumed) == curve(uninterrupted)  # exact floats, every epoch
    assert same_weights(make_ctx("weights").store, resumed, uninterrupted)  # digests differ


def test_the_order_does_not_depend_on_the_number_of_loader_processes(
    make_ctx: MakeContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_classes(tmp_path / "shapes", ["a", "b", "c"])
    job = folder_job(tmp_path / "shapes", epochs=2)
    curves = []
    for workers in (0, 2):
        monkeypatch.setattr(data, "loader_workers", lambda bundle, n=workers: n)
        curves.append(curve(execute(job, make_ctx(f"job-{workers}"))))
    assert curves[0] == curves[1]


# ------------------------------------------------------------------ train/ and val/ folders
def load(root: Path, path: Path, **fields: Any) -> DatasetBundle:
    spec = DatasetSpec(name="imagefolder", path=str(path), image_size=8, **fields)
    return load_dataset(spec, DataLimits(roots=(root,), max_files=10_000, max_pixels=10**6))


def labels_of(dataset: Any) -> list[int]:
    return [int(dataset[i][1]) for i in range(len(dataset))]


@pytest.mark.parametrize("val_name", ["val", "validation", "valid", "test"])
def test_a_root_with_train_and_val_folders_trains_on_one_and_validates_on_the_other(
    tmp_path: Path, val_name: str
) -> None:
    write_classes(tmp_path / "pets" / "train", ["cat", "dog", "eel"], per_class=5)
    write_classes(tmp_path / "pets" / val_name, ["cat", "dog", "eel"], per_class=2)
    bundle = load(tmp_path, tmp_path / "pets", val_fraction=0.5)
    assert bundle.class_names == ["cat", "dog", "eel"]  # not a "train vs val" model
    assert sorted(labels_of(bundle.train)) == [0] * 5 + [1] * 5 + [2] * 5
    assert sorted(labels_of(bundle.val)) == [0, 0, 1, 1, 2, 2]  # val_fraction is not used
    assert bundle.layout == (
        f"found train/ and {val_name}/ in dataset.path: trained on train/, validated on {val_name}/"
    )


def test_val_path_names_the_validation_folder(tmp_path: Path) -> None:
    write_classes(tmp_path / "tr", ["cat", "dog"], per_class=4)
    write_classes(tmp_path / "va", ["cat", "dog"], per_class=1)
    bundle = load(tmp_path, tmp_path / "tr", val_path=str(tmp_path / "va"), limit=3)
    assert len(bundle.train) == 3 and sorted(labels_of(bundle.val)) == [0, 1]  # type: ignore[arg-type]
    assert bundle.layout == "training on dataset.path, validating on val_path"


def test_val_path_is_confined_like_path(tmp_path: Path) -> None:
    write_classes(tmp_path / "data" / "tr", ["cat", "dog"])
    with pytest.raises(PathNotAllowed, match=r"dataset\.val_path"):
        load(tmp_path / "data", tmp_path / "data" / "tr", val_path=str(tmp_path / "elsewhere"))


def test_class_folders_named_like_splits_are_refused(tmp_path: Path) -> None:
    write_classes(tmp_path / "split", ["test", "val"])  # no train/: not a layout, not classes
    with pytest.raises(InvalidJob, match="named like dataset splits"):
        load(tmp_path, tmp_path / "split")
    write_classes(tmp_path / "vehicles", ["bus", "car", "train"])  # one such name is a class
    assert load(tmp_path, tmp_path / "vehicles").class_names == ["bus", "car", "train"]


def test_train_and_val_folders_must_hold_the_same_classes(tmp_path: Path) -> None:
    write_classes(tmp_path / "ds" / "train", ["cat", "dog"])
    write_classes(tmp_path / "ds" / "val", ["cat", "cow"])
    with pytest.raises(InvalidJob, match="differ from the training folder's 2") as caught:
        load(tmp_path, tmp_path / "ds")
    assert "cow" not in str(caught.value)  # never lists a folder


def test_training_on_train_and_val_folders_records_the_layout(
    make_ctx: MakeContext, tmp_path: Path, store_of: Callable[[str], Any]
) -> None:
    write_classes(tmp_path / "pets" / "train", ["a", "b", "c"])
    write_classes(tmp_path / "pets" / "val", ["a", "b", "c"], per_class=3)
    result = execute(folder_job(tmp_path / "pets", epochs=1), make_ctx("job-l"))
    _, manifest = store_of(result.model_digest)
    assert manifest.num_classes == 3 and manifest.class_names == ["a", "b", "c"]
    assert manifest.lineage["dataset_layout"].startswith("found train/ and val/")
