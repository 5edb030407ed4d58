"""The lane's pure layer: stream entries -> requests -> model groups -> one input tensor per
group -> answers. No Redis here; unit-tested without a broker.

Costs matter: this runs once per request on the consumer's hot path, so it checks with
plain comparisons (no pydantic), decodes with ``numpy.frombuffer`` (a float32 group joins
its bytes once and is viewed, not copied per input), and builds reply dicts directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from shared.errors import BadTensor, InvalidJob, JobExpired, TorchfleetError
from shared.lane import LaneRequest, decode_request, reply_address
from shared.manifest import Manifest
from shared.settings import Settings
from workers.inference import NP_DTYPES, decode_image_files, float_batch, preprocess_pixels

CPU_BATCH = 32  # requests read per batch on a CPU (see read_count)

Fields = Mapping[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as read: which stream, its id, its fields."""

    stream: str
    entry_id: bytes
    fields: Fields


@dataclass(slots=True)
class Pending:
    """A well-formed request waiting for its forward."""

    entry: Entry
    request: LaneRequest


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request answered with an error without compute (or, with no reply key, dropped)."""

    entry: Entry
    request_id: str | None
    reply_to: str | None
    code: str
    message: str
    store: bool = False


@dataclass
class Parsed:
    pending: list[Pending] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    deleted: list[Entry] = field(default_factory=list)  # pending entries whose record is gone


def parse_entries(entries: Iterable[Entry], max_bytes: int, now: float) -> Parsed:
    """Split a read into requests to compute, requests to refuse, and vanished entries.

    A request past its deadline is refused as ``expired`` here, before any compute."""
    parsed = Parsed()
    for entry in entries:
        if not entry.fields:
            parsed.deleted.append(entry)
            continue
        try:
            request = decode_request(entry.fields, max_bytes)
        except TorchfleetError as e:
            request_id, reply_to = reply_address(entry.fields)
            parsed.refused.append(Refusal(entry, request_id, reply_to, e.code, str(e)))
            continue
        if request.deadline is not None and now > request.deadline:
            late = f"{now - request.deadline:.3f} s"
            message = f"request {request.request_id} reached a worker {late} after its deadline"
            parsed.refused.append(refusal(Pending(entry, request), JobExpired(message)))
            continue
        parsed.pending.append(Pending(entry, request))
    return parsed


def refusal(pending: Pending, error: TorchfleetError) -> Refusal:
    """The error answer of a well-formed request."""
    request = pending.request
    return Refusal(
        pending.entry, request.request_id, request.reply_to, error.code, str(error), request.store
    )


def group_by_model(pending: Iterable[Pending]) -> dict[tuple[str, str | None], list[Pending]]:
    """Requests keyed by (model reference, backend), high-priority stream first, in order."""
    groups: dict[tuple[str, str | None], list[Pending]] = {}
    for item in pending:
        groups.setdefault((item.request.model, item.request.backend), []).append(item)
    return groups


# ---------------------------------------------------------------- decoding
def decode_group(
    group: Sequence[Pending], manifest: Manifest, max_items: int
) -> tuple[torch.Tensor | None, list[Pending], list[int], list[Refusal]]:
    """One float32 batch of the group's good requests: (batch, those requests, inputs each,
    refusals). The common case (float32 samples of the model's shape) is one join and one
    view; anything else is decoded request by request."""
    expected = tuple(manifest.input_shape)
    if all(_is_plain_sample(p.request, expected) for p in group):
        batch = _join_samples([p.request.data for p in group], expected)  # type: ignore[misc]
        if bool(np.isfinite(batch).all()):
            return torch.from_numpy(batch), list(group), [1] * len(group), []
    parts: list[torch.Tensor] = []
    kept: list[Pending] = []
    refused: list[Refusal] = []
    for item in group:
        try:
            tensor = decode_one(item.request, manifest)
            if tensor.shape[0] > max_items:
                raise BadTensor(
                    f"{tensor.shape[0]} inputs in one request; the limit is {max_items}"
                )
        except TorchfleetError as e:
            refused.append(refusal(item, e))
            continue
        parts.append(tensor)
        kept.append(item)
    if not parts:
        return None, [], [], refused
    batch_tensor = parts[0] if len(parts) == 1 else torch.cat(parts)
    return batch_tensor, kept, [len(p) for p in parts], refused


def _is_plain_sample(request: LaneRequest, expected: tuple[int, ...]) -> bool:
    shape = request.shape
    return request.dtype == "float32" and (
        shape == expected or (shape[0] == 1 and shape[1:] == expected)
    )


def _join_samples(blobs: Sequence[bytes], shape: tuple[int, ...]) -> np.ndarray:
    """Single samples' bytes as one writable (N, *shape) float32 array: one copy in all."""
    buffer = bytearray().join(blobs)
    return np.frombuffer(buffer, dtype="<f4").reshape(len(blobs), *shape)


def decode_one(request: LaneRequest, manifest: Manifest) -> torch.Tensor:
    """A float32 ``(N, *input_shape)`` tensor from one request, or :class:`BadTensor`."""
    if request.is_image:
        files = request.data if isinstance(request.data, tuple) else (request.data,)
        return _fits(decode_image_files(files, manifest, [request.dtype] * len(files)), manifest)
    if request.dtype == "int64":
        raise BadTensor("int64 inputs are not images or features; send float32 or uint8")
    wire = np.dtype(NP_DTYPES[request.dtype]).newbyteorder("<")
    array = np.frombuffer(request.data, dtype=wire).reshape(request.shape)  # type: ignore[arg-type]
    if request.dtype == "uint8":
        return _fits(preprocess_pixels(torch.from_numpy(array.copy()), manifest), manifest)
    return float_batch(array, list(request.shape), manifest)


def _fits(batch: torch.Tensor, manifest: Manifest) -> torch.Tensor:
    """Preprocessed images, if the model takes images of that size."""
    if list(batch.shape[1:]) != list(manifest.input_shape):
        raise BadTensor(
            f"images preprocess to {list(batch.shape[1:])}, the model takes "
            f"{manifest.input_shape}: this model is not fed images"
        )
    return batch


def invalid_ref(pending: Iterable[Pending], error: ValueError) -> list[Refusal]:
    """Refusals for requests whose model reference does not parse."""
    return [refusal(p, InvalidJob(f"invalid model reference: {error}")) for p in pending]


def read_count(settings: Settings, device: str) -> int:
    """Requests read per batch: 1 without batching; the setting; else max_batch on a GPU and
    at most CPU_BATCH on a CPU, where a batch of 64 ran at half the inputs/s of 32 (the seed
    CNN's activations outgrow the caches)."""
    if not settings.batching:
        return 1
    if settings.lane_max_batch is not None:
        return settings.lane_max_batch
    return settings.max_batch if device == "cuda" else min(settings.max_batch, CPU_BATCH)
