"""Image files, for training folders and inference inputs: decoded only below a pixel limit.

PIL reads an image's size from its header; :func:`open_image` refuses a file above the
limit before its pixels are decoded (a small PNG can declare hundreds of megapixels), and
says in words when a file is not an image at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from shared.errors import InputError, InvalidJob
from workers.zoo.confine import DataLimits, subfolders, walk_files

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
READABLE = "PNG, JPEG, BMP, TIFF, WebP, PPM/PGM"


def open_image(
    source: str | Path | IO[bytes],
    what: str,
    max_pixels: int,
    error: type[InputError] = InvalidJob,
) -> Image.Image:
    """The image, opened (header read, pixels not yet decoded) and checked against the limit.

    Use it in a ``with`` block. ``what`` names the image in errors (a relative path, "image
    3"); ``error`` is the class raised.
    """
    try:
        image = Image.open(source)
    except UnidentifiedImageError as e:
        raise error(f"{what} could not be decoded: it is not an image ({READABLE})") from e
    except Image.DecompressionBombError as e:
        raise error(
            f"{what} has more than {max_pixels} pixels (TORCHFLEET_MAX_IMAGE_PIXELS)"
        ) from e
    except OSError as e:
        raise error(f"{what} could not be read: {e.strerror or type(e).__name__}") from e
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise error(
            f"{what} is {width}x{height} pixels, more than the limit of {max_pixels} "
            "(TORCHFLEET_MAX_IMAGE_PIXELS); resize it first"
        )
    return image


def decode_rgb(
    source: str | Path | IO[bytes], what: str, max_pixels: int, mode: str = "RGB",
    error: type[InputError] = InvalidJob,
) -> Image.Image:  # fmt: skip
    """The image's pixels in ``mode``, decoded after the size check; bad data is ``error``."""
    with open_image(source, what, max_pixels, error) as image:
        try:
            return image.convert(mode)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on bad data
            raise error(f"{what} could not be decoded: it is damaged or truncated") from e


@dataclass
class FolderScan:
    """Class names (sorted folder names) and ``(file, label)`` samples in sorted order."""

    classes: list[str]
    samples: list[tuple[str, int]]


def scan_class_folders(root: Path, limits: DataLimits, budget: list[int]) -> FolderScan:
    """Class folders of image files under ``root``; every image's size checked from its header."""
    classes = subfolders(root, limits)
    samples: list[tuple[str, int]] = []
    for label, folder in enumerate(classes):
        before = len(samples)
        for path in walk_files(folder, limits, budget):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with open_image(path, str(path.relative_to(root.parent)), limits.max_pixels):
                    samples.append((str(path), label))
        if len(samples) == before:
            raise InvalidJob(
                f"class folder {folder.name!r} holds no images ({', '.join(IMAGE_SUFFIXES)})"
            )
    return FolderScan([c.name for c in classes], samples)


class ImageFiles(Dataset[tuple[torch.Tensor, int]]):
    """``(file, label)`` samples decoded on access (size checked again) and transformed."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        transform: Callable[[Image.Image], Any],
        max_pixels: int,
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = decode_rgb(path, Path(path).name, self.max_pixels)
        return self.transform(image), label
