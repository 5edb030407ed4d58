"""CIFAR-10's training batches from a folder, without ever running code from it.

Two layouts are read, the binary one first (https://www.cs.toronto.edu/~kriz/cifar.html):

* ``cifar-10-batches-bin/data_batch_{1..5}.bin``: records of one label byte and 3,072
  pixel bytes (1,024 red, then green, then blue, row by row); ``batches.meta.txt`` holds
  the class names, one per line.
* ``cifar-10-batches-py/data_batch_{1..5}``: Python pickles of ``{"data": uint8 array
  (N, 3072), "labels": [int]}``. They are read with an unpickler that builds only numpy
  arrays and plain containers: any other global (the way a pickle runs code) is refused.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.errors import DatasetNotFound, InvalidJob, UnsafeArtifact

CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
BATCHES = 5
PIXELS = 3 * 32 * 32
RECORD = 1 + PIXELS
MAX_BATCH_BYTES = 64 * 1024 * 1024  # a real batch is 30.7 MB (binary) or 31 MB (pickle)
BIN_FOLDER, PY_FOLDER = "cifar-10-batches-bin", "cifar-10-batches-py"


@dataclass
class CifarArrays:
    """Training images as uint8 ``(N, 3, 32, 32)``, labels ``(N,)`` and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]


def read_cifar10(root: Path) -> CifarArrays:
    """The five training batches under ``root``, binary layout first, then the Python one."""
    if (root / BIN_FOLDER).is_dir():
        return _read_binary(root / BIN_FOLDER)
    if (root / PY_FOLDER).is_dir():
        return _read_pickled(root / PY_FOLDER)
    raise DatasetNotFound(
        f"no CIFAR-10 batches in dataset.path: it must hold {BIN_FOLDER}/ (from "
        f"cifar-10-binary.tar.gz) or {PY_FOLDER}/ (from cifar-10-python.tar.gz)"
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


def _read_pickled(folder: Path) -> CifarArrays:
    images, labels = [], []
    for i in range(1, BATCHES + 1):
        entry = load_arrays_only(_batch_bytes(folder / f"data_batch_{i}"), f"data_batch_{i}")
        data = entry.get("data", entry.get(b"data")) if isinstance(entry, dict) else None
        found = entry.get("labels", entry.get(b"labels")) if isinstance(entry, dict) else None
        if not isinstance(data, np.ndarray) or not isinstance(found, list):
            raise InvalidJob(f"data_batch_{i} does not hold CIFAR-10 'data' and 'labels'")
        if not all(type(label) is int for label in found):
            raise InvalidJob(f"data_batch_{i}: labels must be integers")
        images.append(data)
        labels.append(np.array(found, dtype=np.int64))
    return _arrays(np.concatenate(images), np.concatenate(labels), CLASSES)


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


# ------------------------------------------------------------------ restricted unpickling
def _reconstruct(cls: object, shape: object, dtype: object) -> np.ndarray:
    # What ndarray.__reduce__ writes: an empty array that BUILD then fills (and sizes by
    # the bytes it holds). Any other call could allocate whatever it asked for.
    if cls is not _NDARRAY or shape != (0,) or dtype not in (b"b", "b"):
        raise UnsafeArtifact("the pickle builds a numpy array in a way numpy never writes")
    return np.ndarray((0,), dtype=np.uint8)


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding != "latin1":  # how protocol 2 writes bytes; nothing else is needed
        raise UnsafeArtifact("the pickle calls a codec numpy arrays never need")
    return text.encode("latin1")


_NDARRAY = object()  # stands for numpy.ndarray, so that the class itself cannot be called
_ALLOWED: dict[tuple[str, str], Callable[..., Any] | object] = {
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode,
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeArtifact(
                f"the pickle asks for {module}.{name}; only numpy arrays and plain "
                "containers are read (or use the binary CIFAR-10 version)"
            ) from None


def load_arrays_only(raw: bytes, what: str) -> Any:
    """Unpickle ``raw`` building nothing but numpy arrays, dicts, lists, numbers and strings."""
    try:
        return _ArraysOnly(io.BytesIO(raw), encoding="latin1").load()
    except UnsafeArtifact as e:
        raise UnsafeArtifact(f"{what}: {e}") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise InvalidJob(f"{what} is not a readable CIFAR-10 batch ({type(e).__name__})") from e


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
