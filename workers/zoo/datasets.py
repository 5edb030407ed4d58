"""Datasets by name. Nothing is downloaded: data ships in a package or lies in a local folder
under the worker's data roots (:mod:`workers.zoo.confine`).

A loader returns a :class:`DatasetBundle`: train and validation sets of normalised
``(C, H, W)`` float tensors, split with a fixed seed, and the preprocessing that turns a raw
image into the same kind of tensor at inference time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset, random_split

from shared.errors import DatasetNotFound, InvalidJob, UnknownDataset
from shared.jobs import DatasetSpec
from shared.manifest import Preprocessing
from workers.catalog import Registry
from workers.zoo.cifar import BIN_FOLDER, PY_FOLDER, CifarImages, read_cifar10
from workers.zoo.confine import DataLimits, confined_folder
from workers.zoo.imagefiles import ImageFiles, scan_class_folders
from workers.zoo.splits import check_same_classes, refuse_split_names, split_folders

log = logging.getLogger(__name__)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DatasetBundle:
    """Train and validation sets plus what the model and the inference side need to know.

    ``in_memory`` says the samples are tensors already (no decoding per sample), so a data
    loader gains nothing from worker processes. ``layout`` says which folders of a file
    dataset trained and which validated.
    """

    train: Dataset[tuple[torch.Tensor, torch.Tensor]]
    val: Dataset[tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    input_shape: tuple[int, int, int]
    preprocessing: Preprocessing
    class_names: list[str] = field(default_factory=list)
    in_memory: bool = True
    layout: str | None = None  # which folders were read, when that was a choice


DatasetLoader = Callable[[DatasetSpec, DataLimits], DatasetBundle]
DATASETS: Registry[DatasetLoader] = Registry("dataset", UnknownDataset)
register_dataset = DATASETS.register


def load_dataset(spec: DatasetSpec, limits: DataLimits | None = None) -> DatasetBundle:
    """The dataset the spec names, split into train and validation sets.

    ``limits``: the data roots and bounds file data is read under (default: this process's
    settings, ``TORCHFLEET_DATA_ROOTS`` and the rest).
    """
    return DATASETS.get(spec.name)(spec, limits or DataLimits.from_settings())


def preprocessing_for(spec: DatasetSpec) -> Preprocessing:
    mean, std = _stats(spec.channels)
    return Preprocessing(
        image_size=spec.image_size, channels=spec.channels, mean=list(mean), std=list(std)
    )


def normalise_images(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """``(N, 1|3, h, w)`` images in [0, 1] -> resized, channel-matched, normalised tensors."""
    if images.shape[-1] != spec.image_size or images.shape[-2] != spec.image_size:
        size = (spec.image_size, spec.image_size)
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    if images.shape[1] != spec.channels:
        images = images.mean(dim=1, keepdim=True).expand(-1, spec.channels, -1, -1)
    mean, std = _stats(spec.channels)
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return ((images - mean_t) / std_t).contiguous()


def split(
    data: Dataset[Any], spec: DatasetSpec
) -> tuple[Dataset[tuple[torch.Tensor, torch.Tensor]], Dataset[tuple[torch.Tensor, torch.Tensor]]]:
    """A train/validation split that depends only on ``split_seed``."""
    total = len(data)  # type: ignore[arg-type]
    n_val = max(1, round(total * spec.val_fraction))
    generator = torch.Generator().manual_seed(spec.split_seed)
    train, val = random_split(data, [total - n_val, n_val], generator=generator)
    return train, val


def _stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)


@register_dataset("digits")
def digits(spec: DatasetSpec, limits: DataLimits) -> DatasetBundle:
    """scikit-learn's 1,797 real 8x8 handwritten digits (0-16 grey levels), resized."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(raw.target, dtype=torch.long)
    if spec.limit is not None:
        images, labels = images[: spec.limit], labels[: spec.limit]
    data = TensorDataset(normalise_images(images, spec), labels)
    train, val = split(data, spec)
    return DatasetBundle(
        train=train,
        val=val,
        num_classes=10,
        input_shape=(spec.channels, spec.image_size, spec.image_size),
        preprocessing=preprocessing_for(spec),
        class_names=[str(d) for d in range(10)],
    )


@register_dataset("synthetic")
def synthetic(spec: DatasetSpec, limits: DataLimits) -> DatasetBundle:
    """Random images with random labels, for when only shapes matter."""
    generator = torch.Generator().manual_seed(spec.split_seed)
    shape = (spec.samples, spec.channels, spec.image_size, spec.image_size)
    images = torch.randn(shape, generator=generator)
    labels = torch.randint(0, spec.num_classes, (spec.samples,), generator=generator)
    train, val = split(TensorDataset(images, labels), spec)
    return DatasetBundle(
        train=train,
        val=val,
        num_classes=spec.num_classes,
        input_shape=(spec.channels, spec.image_size, spec.image_size),
        preprocessing=preprocessing_for(spec),
        class_names=[str(i) for i in range(spec.num_classes)],
    )


def image_transform(spec: DatasetSpec) -> Any:
    """Per-image transforms of file data: resize, to-tensor, normalise (ImageNet mean/std)."""
    from torchvision import transforms

    mean, std = _stats(spec.channels)
    steps: list[Any] = [transforms.Resize((spec.image_size, spec.image_size))]
    if spec.channels == 1:
        steps.append(transforms.Grayscale(num_output_channels=1))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def _folder(spec: DatasetSpec, limits: DataLimits, holds: str) -> Path:
    if not spec.path:
        raise DatasetNotFound(
            f"the {spec.name} dataset needs dataset.path: a folder that holds {holds}"
        )
    return confined_folder(spec.path, limits)


def _limited(data: Dataset[Any], spec: DatasetSpec) -> Dataset[Any]:
    total = len(data)  # type: ignore[arg-type]
    if spec.limit is None or spec.limit >= total:
        return data
    return Subset(data, range(spec.limit))


def _file_bundle(
    train: Dataset[Any], val: Dataset[Any], class_names: list[str], spec: DatasetSpec, **kw: Any
) -> DatasetBundle:
    if len(class_names) < 2:
        raise InvalidJob(
            f"the dataset has {len(class_names)} class folder(s); a classifier needs at least 2"
        )
    return DatasetBundle(
        train=train,
        val=val,
        num_classes=len(class_names),
        input_shape=(spec.channels, spec.image_size, spec.image_size),
        preprocessing=preprocessing_for(spec),
        class_names=class_names,
        **kw,
    )


@register_dataset("cifar10")
def cifar10(spec: DatasetSpec, limits: DataLimits) -> DatasetBundle:
    """CIFAR-10's training batches from ``dataset.path`` (see :mod:`workers.zoo.cifar`)."""
    root = _folder(spec, limits, f"{BIN_FOLDER}/ or {PY_FOLDER}/")
    arrays = read_cifar10(root)
    data = CifarImages(arrays, lambda images: normalise_images(images, spec))
    train, val = split(_limited(data, spec), spec)
    return _file_bundle(train, val, arrays.classes, spec)


@register_dataset("imagefolder")
def imagefolder(spec: DatasetSpec, limits: DataLimits) -> DatasetBundle:
    """A folder of class sub-folders of images, or train/ and val/ folders of them.

    See :mod:`workers.zoo.splits` for the layouts; every path stays under the data roots.
    """
    root = _folder(spec, limits, "one sub-folder of images per class")
    val_root = confined_folder(spec.val_path, limits, "dataset.val_path") if spec.val_path else None
    folders = split_folders(root, val_root)
    budget = [limits.max_files]
    scan = scan_class_folders(folders.train, limits, budget)
    refuse_split_names(scan.classes, "dataset.path")
    if not scan.classes:
        raise DatasetNotFound(
            "no class folders in dataset.path: expected PATH/<class name>/<image>.png, or "
            "PATH/train/<class name>/... beside PATH/val/<class name>/..."
        )
    transform = image_transform(spec)
    train: Dataset[Any] = ImageFiles(scan.samples, transform, limits.max_pixels)
    if folders.val is None:
        train, val = split(_limited(train, spec), spec)
    else:
        val_scan = scan_class_folders(folders.val, limits, budget)
        check_same_classes(scan.classes, val_scan.classes)
        train = _limited(train, spec)
        val = _limited(ImageFiles(val_scan.samples, transform, limits.max_pixels), spec)
    log.info("imagefolder: %s", folders.note)
    return _file_bundle(train, val, scan.classes, spec, in_memory=False, layout=folders.note)
