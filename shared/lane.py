"""The online lane's wire record: one stream entry per request, one JSON reply per answer.

A request is one ``XADD`` of flat byte fields: the tensor travels as its raw little-endian
C-order bytes (no base64, no JSON around it), images as their PNG/JPEG file bytes. A
reply is a small JSON object added to the client's reply stream (a batch's replies to one
client in one entry, one field each: :func:`reply_field`); the client reads it without
removing it and deletes the entries it has handled, so a connection lost mid-read loses
no reply. Both sides read the
field names from here; the worker decodes with :func:`decode_request`, cheap enough to
run once per request on its hot path (no pydantic).

With ``store`` the worker also writes the answer where Celery's Redis result backend
keeps a job's result (:func:`result_key`, :func:`result_meta`), so ``Client.state``,
``Client.wait`` and ``torchfleet results`` read lane answers like any job's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from shared.errors import ERRORS_BY_CODE, BadTensor, InvalidJob, TorchfleetError
from shared.names import KEY_LANE_REPLY

SCHEMA: Final = b"1"
F_SCHEMA: Final = b"v"
F_ID: Final = b"id"
F_MODEL: Final = b"m"
F_DTYPE: Final = b"dt"  # a tensor's dtype, or an image format (png, jpeg)
F_SHAPE: Final = b"sh"  # comma-separated dims of a tensor; the image count for images
F_DATA: Final = b"x"  # the tensor's bytes, or the first image's file
F_TOP_K: Final = b"k"
F_DEADLINE: Final = b"dl"  # Unix time after which the answer is `expired`, not computed
F_SUBMITTED: Final = b"ts"  # Unix time the producer sent it
F_REPLY: Final = b"r"  # the reply stream's key
F_STORE: Final = b"st"  # b"1": also keep the answer under the Celery result key
F_BACKEND: Final = b"be"

DTYPE_SIZES: Final = {"float32": 4, "float16": 2, "float64": 8, "uint8": 1, "int64": 8}
IMAGE_FORMATS: Final = ("png", "jpeg")
MAX_DIMS: Final = 8
MAX_IMAGES: Final = 1024
MAX_TOP_K: Final = 1000
BACKENDS: Final = ("eager", "compile", "onnx")
RESULT_KEY_PREFIX: Final = "celery-task-meta-"  # Celery's KeyValueStoreBackend.task_keyprefix


@dataclass(frozen=True, slots=True)
class LaneRequest:
    """One decoded request. ``data``: tensor bytes, or image files when ``dtype`` is a format."""

    request_id: str
    reply_to: str
    model: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes | tuple[bytes, ...]
    top_k: int = 1
    deadline: float | None = None
    submitted_at: float = 0.0
    store: bool = False
    backend: str | None = None

    @property
    def is_image(self) -> bool:
        return self.dtype in IMAGE_FORMATS


def image_field(index: int) -> bytes:
    """The field of the ``index``-th image: ``x``, ``x1``, ``x2``..."""
    return F_DATA if index == 0 else F_DATA + str(index).encode()


def encode_request(
    *,
    request_id: str,
    reply_to: str,
    model: str,
    data: bytes | Sequence[bytes],
    dtype: str,
    shape: Sequence[int] = (),
    top_k: int = 1,
    deadline: float | None = None,
    submitted_at: float,
    store: bool = False,
    backend: str | None = None,
) -> dict[bytes, bytes]:
    """The stream entry of one request. Images: ``dtype`` is their format, ``data`` the files."""
    fields = {
        F_SCHEMA: SCHEMA,
        F_ID: request_id.encode(),
        F_REPLY: reply_to.encode(),
        F_MODEL: model.encode(),
        F_DTYPE: dtype.encode(),
        F_TOP_K: str(top_k).encode(),
        F_SUBMITTED: repr(submitted_at).encode(),
    }
    if isinstance(data, bytes | bytearray | memoryview):
        fields[F_SHAPE] = ",".join(str(int(d)) for d in shape).encode()
        fields[F_DATA] = bytes(data)
    else:
        fields[F_SHAPE] = str(len(data)).encode()
        fields.update({image_field(i): bytes(blob) for i, blob in enumerate(data)})
    if deadline is not None:
        fields[F_DEADLINE] = repr(float(deadline)).encode()
    if store:
        fields[F_STORE] = b"1"
    if backend is not None:
        fields[F_BACKEND] = backend.encode()
    return fields


def reply_field(index: int) -> bytes:
    """The field name of a batch entry's ``index``-th reply in a reply stream."""
    return b"%d" % index


def reply_address(fields: Mapping[bytes, bytes]) -> tuple[str | None, str | None]:
    """The request id and a usable reply key of any entry, however broken the rest is.

    A reply key outside ``torchfleet:lane-reply:`` is refused (None): a request must not
    make the worker push into another key (a Celery queue, say)."""
    raw_id, raw_reply = fields.get(F_ID), fields.get(F_REPLY)
    request_id = _text(raw_id)
    reply_to = _text(raw_reply)
    if reply_to is not None and not reply_to.startswith(KEY_LANE_REPLY):
        reply_to = None
    return request_id, reply_to


def decode_request(fields: Mapping[bytes, bytes], max_bytes: int) -> LaneRequest:
    """The request an entry holds, or :class:`InvalidJob` / :class:`BadTensor` saying why not.

    Checks what costs nothing to check here: fields present, dtype known, dims in range,
    bytes matching shape and dtype, size under ``max_bytes``."""
    request_id, reply_to = reply_address(fields)
    if request_id is None or reply_to is None:
        raise InvalidJob("a lane request needs an id and a reply key under torchfleet:lane-reply:")
    if fields.get(F_SCHEMA) != SCHEMA:
        raise InvalidJob(f"unknown lane schema {fields.get(F_SCHEMA)!r}; this worker reads 1")
    model = _required(fields, F_MODEL)
    dtype = _required(fields, F_DTYPE)
    shape, data = _payload(fields, dtype, max_bytes)
    return LaneRequest(
        request_id=request_id,
        reply_to=reply_to,
        model=model,
        dtype=dtype,
        shape=shape,
        data=data,
        top_k=_int(fields.get(F_TOP_K, b"1"), "top_k", 1, MAX_TOP_K),
        deadline=_float(fields[F_DEADLINE], "deadline") if F_DEADLINE in fields else None,
        submitted_at=_float(fields.get(F_SUBMITTED, b"0"), "submit time"),
        store=fields.get(F_STORE) == b"1",
        backend=_backend(fields.get(F_BACKEND)),
    )


def _payload(
    fields: Mapping[bytes, bytes], dtype: str, max_bytes: int
) -> tuple[tuple[int, ...], bytes | tuple[bytes, ...]]:
    if dtype in IMAGE_FORMATS:
        count = _int(fields.get(F_SHAPE, b""), "image count", 1, MAX_IMAGES)
        images = tuple(fields.get(image_field(i), b"") for i in range(count))
        if not all(images):
            raise BadTensor(f"the request names {count} image(s) but holds fewer")
        if sum(len(i) for i in images) > max_bytes:
            raise BadTensor(f"images over max_payload_bytes={max_bytes}; send fewer per request")
        return (count,), images
    size = DTYPE_SIZES.get(dtype)
    if size is None:
        known = ", ".join([*DTYPE_SIZES, *IMAGE_FORMATS])
        raise BadTensor(f"unknown dtype {dtype!r}; send one of {known}")
    shape = _shape(fields.get(F_SHAPE, b""))
    data = fields.get(F_DATA, b"")
    expected = math.prod(shape) * size
    if expected > max_bytes:
        raise BadTensor(
            f"the tensor declares {expected} bytes, over max_payload_bytes={max_bytes}; send "
            "fewer inputs per request or raise TORCHFLEET_MAX_PAYLOAD_BYTES"
        )
    if len(data) != expected:
        raise BadTensor(
            f"tensor data holds {len(data)} bytes; shape {list(shape)} of {dtype} needs {expected}"
        )
    return shape, data


def _shape(raw: bytes) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in raw.split(b","))
    except ValueError:
        raise BadTensor(f"shape {raw[:64]!r} is not comma-separated integers") from None
    if not 1 <= len(shape) <= MAX_DIMS or min(shape) < 1:
        raise BadTensor(f"shape {list(shape)}: 1 to {MAX_DIMS} dims, each at least 1")
    return shape


def _required(fields: Mapping[bytes, bytes], name: bytes) -> str:
    value = _text(fields.get(name))
    if not value:
        raise InvalidJob(f"a lane request needs the field {name.decode()!r}")
    return value


def _int(raw: bytes, what: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidJob(f"{what} {raw[:32]!r} is not an integer") from None
    if not low <= value <= high:
        raise InvalidJob(f"{what} {value} is outside {low}..{high}")
    return value


def _float(raw: bytes, what: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InvalidJob(f"{what} {raw[:32]!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidJob(f"{what} must be finite")
    return value


def _backend(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    backend = _text(raw)
    if backend not in BACKENDS:
        raise InvalidJob(f"backend {backend!r}: ask for one of {', '.join(BACKENDS)}")
    return backend


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------- replies
@dataclass(frozen=True, slots=True)
class LaneReply:
    """A decoded reply: the result, or the error's code and message."""

    request_id: str
    result: dict[str, Any] | None = None
    code: str | None = None
    message: str | None = None


def encode_result(request_id: str, result: dict[str, Any]) -> bytes:
    """The reply carrying an inference result (the InferResult JSON fields)."""
    return json.dumps({"id": request_id, "result": result}, separators=(",", ":")).encode()


def encode_error(request_id: str, code: str, message: str) -> bytes:
    """The reply carrying an error (its code is a :mod:`shared.errors` code)."""
    body = {"id": request_id, "error": {"code": code, "message": message}}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_reply(raw: bytes | str) -> LaneReply:
    """A reply from its JSON; ``ValueError`` if it is not one."""
    body = json.loads(raw)
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise ValueError("a lane reply is a JSON object with an id")
    error = body.get("error")
    if isinstance(error, dict):
        return LaneReply(body["id"], code=str(error.get("code")), message=str(error.get("message")))
    result = body.get("result")
    if not isinstance(result, dict):
        raise ValueError("a lane reply holds a result or an error")
    return LaneReply(body["id"], result=result)


# ---------------------------------------------------------------- the Celery result record
def result_key(request_id: str) -> str:
    """Where Celery's Redis backend keeps the result of job ``request_id``."""
    return f"{RESULT_KEY_PREFIX}{request_id}"


def result_meta(
    request_id: str, result: dict[str, Any] | None = None, error: tuple[str, str] | None = None
) -> str:
    """The record Celery's Redis backend writes for a finished job: SUCCESS with ``result``,
    or FAILURE with ``error`` (code, message) as Celery serialises exceptions to JSON."""
    status, payload = "SUCCESS", result
    if result is None:
        code, message = error or ("error", "no result")
        cls = ERRORS_BY_CODE.get(code, TorchfleetError)
        status = "FAILURE"
        payload = {
            "exc_type": cls.__qualname__,
            "exc_message": [message],
            "exc_module": cls.__module__,
        }
    meta: dict[str, Any] = {
        "status": status,
        "result": payload,
        "traceback": None,
        "children": [],
        "date_done": datetime.now(UTC).isoformat(),
        "task_id": request_id,
    }
    return json.dumps(meta, separators=(",", ":"))


def encode_result_json(request_id: str, result_json: str) -> bytes:
    """:func:`encode_result` for a result already encoded as JSON text."""
    return f'{{"id":{json.dumps(request_id)},"result":{result_json}}}'.encode()


def result_meta_json(request_id: str, result_json: str) -> str:
    """:func:`result_meta` (SUCCESS) for a result already encoded as JSON text."""
    tail = json.dumps(
        {
            "traceback": None,
            "children": [],
            "date_done": datetime.now(UTC).isoformat(),
            "task_id": request_id,
        },
        separators=(",", ":"),
    )
    return f'{{"status":"SUCCESS","result":{result_json},{tail[1:]}'
