"""CIFAR-10's training batches from a folder, without ever running code from it.

Only the binary version is read (https://www.cs.toronto.edu/~kriz/cifar.html):
``cifar-10-batches-bin/data_batch_{1..5}.bin``, records of one label byte and 3,072 pixel
bytes (1,024 red, then green, then blue, row by row); ``batches.meta.txt`` holds the class
names, one per line. The Python version (``cifar-10-batches-py``) is a set of pickles, and
the fleet unpickles no user file, however restricted the unpickler: such a folder is refused
with the name of the binary archive to use instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.errors import DatasetNotFound, InvalidJob

CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
BATCHES = 5
PIXELS = 3 * 32 * 32
RECORD = 1 + PIXELS
MAX_BATCH_BYTES = 64 * 1024 * 1024  # a real batch is 30.7 MB
BIN_FOLDER, PY_FOLDER = "cifar-10-batches-bin", "cifar-10-batches-py"


@dataclass
class CifarArrays:
    """Training images as uint8 ``(N, 3, 32, 32)``, labels ``(N,)`` and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]


def read_cifar10(root: Path) -> CifarArrays:
    """The five training batches of the binary version under ``root``."""
    if (root / BIN_FOLDER).is_dir():
        return _read_binary(root / BIN_FOLDER)
    if (root / PY_FOLDER).is_dir():
        raise InvalidJob(
            f"dataset.path holds {PY_FOLDER}/, CIFAR-10's Python version: its batches are "
            f"pickles, which the fleet never unpickles. Unpack cifar-10-binary.tar.gz there "
            f"instead (it gives {BIN_FOLDER}/)"
        )
    raise DatasetNotFound(
        f"no CIFAR-10 batches in dataset.path: it must hold {BIN_FOLDER}/ "
        "(from cifar-10-binary.tar.gz)"
    )


def _batch_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DatasetNotFound(f"CIFAR-10 batch {path.parent.name}/{path.name} is missing")
    if path.stat().st_size > MAX_BATCH_BYTES:
        raise InvalidJob(f"{path.name} is larger than a CIFAR-10 batch ({MAX_BATCH_BYTES} bytes)")
    return path.read_bytes()


def _read_binary(folder: Path) -> CifarArrays:
    images, labels = [], []
    for i in range(1, BATCHES + 1):
        raw = _batch_bytes(folder / f"data_batch_{i}.bin")
        if len(raw) == 0 or len(raw) % RECORD:
            raise InvalidJob(f"data_batch_{i}.bin is not whole records of {RECORD} bytes")
        records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
        labels.append(records[:, 0])
        images.append(records[:, 1:])
    meta = folder / "batches.meta.txt"
    classes = meta.read_text().split() if meta.is_file() else CLASSES
    return _arrays(np.concatenate(images), np.concatenate(labels), classes)


def _arrays(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> CifarArrays:
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != PIXELS:
        raise InvalidJob(f"CIFAR-10 images must be uint8 rows of {PIXELS} bytes")
    if len(labels) != len(images) or labels.min() < 0 or labels.max() >= len(classes):
        raise InvalidJob(f"CIFAR-10 labels must be one per image, in 0..{len(classes) - 1}")
    return CifarArrays(
        images=torch.from_numpy(images.reshape(-1, 3, 32, 32).copy()),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(classes),
    )


class CifarImages(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The uint8 images, normalised one at a time on access (``prepare``: a batch of 1)."""

    def __init__(
        self, arrays: CifarArrays, prepare: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        self.arrays = arrays
        self.prepare = prepare

    def __len__(self) -> int:
        return len(self.arrays.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.arrays.images[index].unsqueeze(0).float() / 255.0
        return self.prepare(image)[0], self.arrays.labels[index]
