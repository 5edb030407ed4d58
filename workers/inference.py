"""Inference as pure functions: decode inputs, run a batch, turn logits into top-k answers."""

from __future__ import annotations

import binascii
import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from shared.errors import BadTensor
from shared.jobs import ClassScore, ImagePayload, TensorPayload
from shared.manifest import Manifest
from shared.settings import get_settings
from workers.zoo.imagefiles import decode_rgb

try:
    import pybase64 as fast_base64
except ImportError:  # pybase64 is in the worker extra; the standard library is ~50x slower
    import base64 as fast_base64  # type: ignore[no-redef]

NP_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "uint8": np.uint8,
    "int64": np.int64,
}


def decode_inputs(
    inputs: TensorPayload | list[ImagePayload],
    manifest: Manifest,
    max_items: int,
    stored: bytes | None = None,
    max_pixels: int | None = None,
) -> torch.Tensor:
    """A float32 ``(N, C, H, W)`` batch the model accepts, or :class:`BadTensor` saying why.

    ``stored``: the bytes a tensor payload's ``key`` names, read from Redis by the caller.
    ``max_pixels``: the largest image decoded (default ``TORCHFLEET_MAX_IMAGE_PIXELS``)."""
    if isinstance(inputs, TensorPayload):
        batch = decode_tensor(inputs, manifest, stored)
    else:
        batch = decode_images(inputs, manifest, max_pixels)
    if batch.shape[0] > max_items:
        raise BadTensor(f"{batch.shape[0]} inputs in one job; the limit is {max_items}")
    return batch


def decode_tensor(
    payload: TensorPayload, manifest: Manifest, stored: bytes | None = None
) -> torch.Tensor:
    """Raw bytes -> tensor. Floats are model-ready; uint8 are pixels, preprocessed here."""
    raw = tensor_bytes(payload, stored)
    wire = np.dtype(NP_DTYPES[payload.dtype]).newbyteorder("<")  # the payload's byte order
    expected_bytes = math.prod(payload.shape) * wire.itemsize
    if len(raw) != expected_bytes:  # base64 padding can hide a short payload from the length check
        raise BadTensor(
            f"tensor data holds {len(raw)} bytes; shape {payload.shape} of {payload.dtype} "
            f"needs {expected_bytes}"
        )
    array = np.frombuffer(raw, dtype=wire).reshape(payload.shape)
    if payload.dtype == "uint8":
        return preprocess_pixels(torch.from_numpy(array.astype(np.uint8)), manifest)
    if payload.dtype == "int64":
        raise BadTensor("int64 inputs are not images or features; send float32 or uint8")
    return float_batch(array, payload.shape, manifest)


def float_batch(array: np.ndarray, shape: list[int], manifest: Manifest) -> torch.Tensor:
    """A float ``array`` (any byte order) as a finite ``(N, *input_shape)`` float32 tensor;
    ``shape`` is the one the sender declared, for the error message."""
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN are refused just below
        native = array.astype(np.float32)  # a native, writable copy
    if not np.isfinite(native).all():  # numpy's check costs a tenth of torch's on one input
        raise BadTensor("inputs contain NaN or infinite values")
    tensor = torch.from_numpy(native)
    expected = list(manifest.input_shape)
    if list(tensor.shape) == expected:
        tensor = tensor.unsqueeze(0)
    if list(tensor.shape[1:]) != expected:
        raise BadTensor(
            f"input shape {list(shape)} does not fit the model: expected "
            f"{expected} or [N, {', '.join(map(str, expected))}]"
        )
    return tensor


def tensor_bytes(payload: TensorPayload, stored: bytes | None) -> bytes:
    """The payload's raw bytes: its base64 ``data`` decoded, or the bytes stored at its key."""
    if payload.data is None:
        if stored is None:
            raise BadTensor(
                f"no input bytes at {payload.key}: never stored, or expired (they go when "
                "their job ends, and after TORCHFLEET_RESULT_TTL_S at the latest): submit the "
                "job again"
            )
        return stored
    try:
        return fast_base64.b64decode(payload.data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadTensor(f"tensor data is not valid base64: {e}") from e


def preprocess_pixels(pixels: torch.Tensor, manifest: Manifest) -> torch.Tensor:
    """uint8 images ``(H, W)``, ``(N, H, W)``, ``(N, C, H, W)``, or channels last as PIL and
    OpenCV give them, ``(H, W, 3)`` and ``(N, H, W, 1|3)`` -> normalised model input.

    A shape that reads both ways (``[N, 3, H, 3]``) is taken as channels first.
    """
    if pixels.dim() == 3 and pixels.shape[-1] == 3:  # one RGB image, channels last
        pixels = pixels.unsqueeze(0)
    if pixels.dim() == 2:
        pixels = pixels.unsqueeze(0)
    if pixels.dim() == 3:
        pixels = pixels.unsqueeze(1)
    if pixels.dim() == 4 and pixels.shape[1] not in (1, 3) and pixels.shape[-1] in (1, 3):
        pixels = pixels.permute(0, 3, 1, 2)
    if pixels.dim() != 4 or pixels.shape[1] not in (1, 3):
        raise BadTensor(
            "uint8 images must be [H, W], [N, H, W], [N, 1|3, H, W], [H, W, 3] or "
            f"[N, H, W, 1|3]; got {list(pixels.shape)}"
        )
    prep = manifest.preprocessing
    images = pixels.float() * prep.scale
    size = (prep.image_size, prep.image_size)
    if tuple(images.shape[-2:]) != size:
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    if images.shape[1] != prep.channels:
        images = images.mean(dim=1, keepdim=True).expand(-1, prep.channels, -1, -1)
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    return ((images - mean) / std).contiguous()


def decode_images(
    images: list[ImagePayload], manifest: Manifest, max_pixels: int | None = None
) -> torch.Tensor:
    """PNG/JPEG files (base64) -> normalised batch, resized to the model's input size."""
    files = []
    for i, image in enumerate(images):
        try:
            files.append(fast_base64.b64decode(image.data, validate=True))
        except (binascii.Error, ValueError) as e:
            raise BadTensor(f"image {i} is not valid base64: {e}") from e
    return decode_image_files(files, manifest, [image.format for image in images], max_pixels)


def decode_image_files(
    files: Sequence[bytes],
    manifest: Manifest,
    formats: Sequence[str],
    max_pixels: int | None = None,
) -> torch.Tensor:
    """PNG/JPEG file bytes -> normalised batch, resized to the model's input size.

    An image larger than ``max_pixels`` (default ``TORCHFLEET_MAX_IMAGE_PIXELS``) is refused
    from its header, before its pixels are decoded."""
    limit = max_pixels or get_settings().max_image_pixels
    mode = "RGB" if manifest.preprocessing.channels == 3 else "L"
    size = manifest.preprocessing.image_size
    arrays = []
    for i, (data, image_format) in enumerate(zip(files, formats, strict=True)):
        decoded = decode_rgb(
            io.BytesIO(data), f"image {i} ({image_format})", limit, mode, BadTensor
        )
        pixels = np.asarray(decoded.resize((size, size)), dtype=np.uint8)
        arrays.append(pixels if pixels.ndim == 3 else pixels[..., None])
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return preprocess_pixels(batch.contiguous(), manifest)


def top_k(logits: torch.Tensor, k: int, class_names: list[str]) -> list[list[ClassScore]]:
    """Softmax scores of the k most likely classes, per input."""
    probs = torch.softmax(logits.float(), dim=1)
    scores, labels = probs.topk(min(k, probs.shape[1]), dim=1)
    return [
        [
            ClassScore(label=int(c), name=_name(class_names, int(c)), score=round(float(s), 6))
            for s, c in zip(row_s, row_c, strict=True)
        ]
        for row_s, row_c in zip(scores.tolist(), labels.tolist(), strict=True)
    ]


def accuracy(predictions: list[list[ClassScore]], labels: list[int]) -> float:
    if len(labels) != len(predictions):
        raise BadTensor(f"{len(labels)} labels for {len(predictions)} inputs")
    hits = sum(p[0].label == y for p, y in zip(predictions, labels, strict=True))
    return hits / len(labels)


def _name(class_names: list[str], label: int) -> str | None:
    return class_names[label] if label < len(class_names) else None
