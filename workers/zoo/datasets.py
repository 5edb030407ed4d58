"""Datasets by name. Nothing is downloaded: data ships in a package or lies in a local folder.

A loader returns a :class:`DatasetBundle`: train and validation sets of normalised
``(C, H, W)`` float tensors, split with a fixed seed, and the preprocessing that turns a raw
image into the same kind of tensor at inference time.
"""

from __future__ import annotations

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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DatasetBundle:
    """Train and validation sets plus what the model and the inference side need to know.

    ``in_memory`` says the samples are tensors already (no decoding per sample), so a data
    loader gains nothing from worker processes.
    """

    train: Dataset[tuple[torch.Tensor, torch.Tensor]]
    val: Dataset[tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    input_shape: tuple[int, int, int]
    preprocessing: Preprocessing
    class_names: list[str] = field(default_factory=list)
    in_memory: bool = True


DatasetLoader = Callable[[DatasetSpec], DatasetBundle]
DATASETS: Registry[DatasetLoader] = Registry("dataset", UnknownDataset)
register_dataset = DATASETS.register


def load_dataset(spec: DatasetSpec) -> DatasetBundle:
    """The dataset the spec names, split into train and validation sets."""
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


def image_transform(spec: DatasetSpec) -> Any:
    """The source's per-image transforms: resize, to-tensor, normalise (ImageNet mean/std)."""
    from torchvision import transforms

    mean, std = _stats(spec.channels)
    steps: list[Any] = [transforms.Resize((spec.image_size, spec.image_size))]
    if spec.channels == 1:
        steps.append(transforms.Grayscale(num_output_channels=1))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def _existing_folder(spec: DatasetSpec, what: str) -> Path:
    if not spec.path:
        raise DatasetNotFound(f"the {spec.name} dataset needs dataset.path: the folder {what}")
    folder = Path(spec.path).expanduser()
    if not folder.is_dir():
        raise DatasetNotFound(
            f"dataset folder {str(folder)!r} does not exist on this worker; it should hold {what} "
            "(torchfleet never downloads data: copy it there or mount a shared volume)"
        )
    return folder


def _limited(data: Dataset[Any], spec: DatasetSpec) -> Dataset[Any]:
    total = len(data)  # type: ignore[arg-type]
    if spec.limit is None or spec.limit >= total:
        return data
    return Subset(data, range(spec.limit))


def _file_bundle(data: Dataset[Any], class_names: list[str], spec: DatasetSpec) -> DatasetBundle:
    if len(class_names) < 2:
        raise InvalidJob(f"dataset at {spec.path!r} has {len(class_names)} class(es); need >= 2")
    train, val = split(_limited(data, spec), spec)
    return DatasetBundle(
        train=train,
        val=val,
        num_classes=len(class_names),
        input_shape=(spec.channels, spec.image_size, spec.image_size),
        preprocessing=preprocessing_for(spec),
        class_names=class_names,
        in_memory=False,
    )


@register_dataset("cifar10")
def cifar10(spec: DatasetSpec) -> DatasetBundle:
    """CIFAR-10's training batches from a local folder (``dataset.path``); never downloads.

    The folder is the one torchvision's ``CIFAR10(root=...)`` expects: it holds the extracted
    ``cifar-10-batches-py``. Those batch files are Python pickles that torchvision reads: that
    is the standard format of the data set, read only from a folder the user put there.
    """
    from torchvision.datasets import CIFAR10

    root = _existing_folder(spec, "with the extracted cifar-10-batches-py folder")
    try:
        data = CIFAR10(root=str(root), train=True, download=False, transform=image_transform(spec))
    except RuntimeError as e:
        raise DatasetNotFound(
            f"no complete CIFAR-10 under {str(root)!r} ({e}); extract cifar-10-python.tar.gz "
            "there so that it holds cifar-10-batches-py/"
        ) from e
    return _file_bundle(data, list(data.classes), spec)


@register_dataset("imagefolder")
def imagefolder(spec: DatasetSpec) -> DatasetBundle:
    """A folder of class sub-folders of images (torchvision's ``ImageFolder``)."""
    from torchvision.datasets import ImageFolder

    root = _existing_folder(spec, "with one sub-folder of images per class")
    try:
        data = ImageFolder(str(root), transform=image_transform(spec))
    except FileNotFoundError as e:
        raise DatasetNotFound(
            f"no class folders of images under {str(root)!r}: {e}; expected "
            "ROOT/<class name>/<image>.png"
        ) from e
    return _file_bundle(data, list(data.classes), spec)
