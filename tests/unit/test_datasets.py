"""Datasets by name: shapes, normalisation, a fixed split, and clear errors for missing data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.errors import DatasetNotFound, InvalidJob, UnknownDataset
from shared.jobs import DatasetSpec
from workers.zoo.confine import DataLimits
from workers.zoo.datasets import DATASETS, DatasetBundle, load_dataset


def load_under(spec: DatasetSpec, root: Path) -> DatasetBundle:
    """The dataset, read with ``root`` as the only data root."""
    return load_dataset(spec, DataLimits(roots=(root,), max_files=10_000, max_pixels=10**6))


def test_all_four_datasets_are_registered() -> None:
    assert {"digits", "synthetic", "cifar10", "imagefolder"} <= set(DATASETS)


def test_digits_are_resized_normalised_and_split() -> None:
    spec = DatasetSpec(name="digits", image_size=16, channels=1, limit=100, val_fraction=0.25)
    bundle = load_dataset(spec)
    assert (len(bundle.train), len(bundle.val)) == (75, 25)  # type: ignore[arg-type]
    image, label = bundle.train[0]
    assert image.shape == (1, 16, 16) and 0 <= int(label) < 10
    assert bundle.input_shape == (1, 16, 16) and bundle.in_memory
    assert bundle.class_names == [str(d) for d in range(10)]


def test_the_split_depends_only_on_the_split_seed() -> None:
    def val_labels(seed: int) -> list[int]:
        bundle = load_dataset(DatasetSpec(name="digits", image_size=8, limit=60, split_seed=seed))
        return [int(bundle.val[i][1]) for i in range(len(bundle.val))]  # type: ignore[arg-type]

    assert val_labels(1) == val_labels(1)
    assert val_labels(1) != val_labels(2)


def test_an_unknown_dataset_names_the_known_ones() -> None:
    with pytest.raises(UnknownDataset, match="imagefolder"):
        load_dataset(DatasetSpec(name="mnist"))


@pytest.mark.parametrize("name", ["cifar10", "imagefolder"])
def test_a_missing_folder_is_dataset_not_found(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match="does not exist"):
        load_under(DatasetSpec(name=name, path=str(tmp_path / "nowhere")), tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "imagefolder"])
def test_a_file_dataset_without_a_path_says_it_needs_one(name: str) -> None:
    with pytest.raises(DatasetNotFound, match=r"dataset\.path"):
        load_dataset(DatasetSpec(name=name))


def test_a_folder_without_cifar_batches_is_dataset_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match="cifar-10-batches-bin"):
        load_under(DatasetSpec(name="cifar10", path=str(tmp_path)), tmp_path)


def _write_image_folder(root: Path, classes: dict[str, int], size: int = 12) -> None:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_imagefolder_reads_class_folders_resizes_and_normalises(tmp_path: Path) -> None:
    _write_image_folder(tmp_path, {"cat": 5, "dog": 4, "eel": 3})
    spec = DatasetSpec(name="imagefolder", path=str(tmp_path), image_size=8, val_fraction=0.25)
    bundle = load_under(spec, tmp_path)
    assert bundle.class_names == ["cat", "dog", "eel"] and bundle.num_classes == 3
    assert (len(bundle.train), len(bundle.val)) == (9, 3)  # type: ignore[arg-type]
    assert not bundle.in_memory
    image, label = bundle.train[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert 0 <= label < 3
    assert image.min() < 0 < image.max()  # normalised with the ImageNet mean/std
    assert bundle.preprocessing.mean == pytest.approx([0.485, 0.456, 0.406])


def test_imagefolder_grey_and_limited(tmp_path: Path) -> None:
    _write_image_folder(tmp_path, {"a": 4, "b": 4})
    spec = DatasetSpec(name="imagefolder", path=str(tmp_path), image_size=8, channels=1, limit=5)
    bundle = load_under(spec, tmp_path)
    assert len(bundle.train) + len(bundle.val) == 5  # type: ignore[arg-type]
    assert bundle.train[0][0].shape == (1, 8, 8)


def test_an_imagefolder_without_class_folders_is_dataset_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match="class folders"):
        load_under(DatasetSpec(name="imagefolder", path=str(tmp_path)), tmp_path)


def test_an_imagefolder_with_one_class_is_refused(tmp_path: Path) -> None:
    _write_image_folder(tmp_path, {"only": 3})
    with pytest.raises(InvalidJob, match="1 class"):
        load_under(DatasetSpec(name="imagefolder", path=str(tmp_path)), tmp_path)
