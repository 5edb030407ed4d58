"""Datasets by name. Nothing is downloaded: data ships in a package or lies in a local folder.

A loader returns a :class:`DatasetBundle`: train and validation sets of normalised
``(C, H, W)`` float tensors, split with a fixed seed, and the preprocessing that turns a raw
image into the same kind of tensor at inference time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset, random_split

from shared.errors import UnknownDataset
from shared.jobs import DatasetSpec
from shared.manifest import Preprocessing
from workers.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DatasetBundle:
    train: Dataset[tuple[torch.Tensor, torch.Tensor]]
    val: Dataset[tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    input_shape: tuple[int, int, int]
    preprocessing: Preprocessing
    class_names: list[str] = field(default_factory=list)


DatasetLoader = Callable[[DatasetSpec], DatasetBundle]
DATASETS: Registry[DatasetLoader] = Registry("dataset", UnknownDataset)
register_dataset = DATASETS.register


def load_dataset(spec: DatasetSpec) -> DatasetBundle:
    return DATASETS.get(spec.name)(spec)


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
    data: Dataset[tuple[torch.Tensor, torch.Tensor]], spec: DatasetSpec
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
def digits(spec: DatasetSpec) -> DatasetBundle:
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
def synthetic(spec: DatasetSpec) -> DatasetBundle:
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
