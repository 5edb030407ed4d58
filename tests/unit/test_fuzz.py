"""Property-based fuzzing of what a worker accepts from the wire: job models, references,
payload limits and input decoders. Whatever arrives, the answer is a job or a clear input
error, never a crash with some other exception."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.errors import BadTensor, InvalidJob
from shared.jobs import REF_RE, ImagePayload, InferJob, ModelRef, TensorPayload, parse_job
from shared.manifest import Manifest, Preprocessing
from shared.payload import check_payload
from workers.inference import decode_inputs

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANIFEST = Manifest(
    arch="mlp",
    input_shape=[1, 4, 4],
    num_classes=2,
    preprocessing=Preprocessing(image_size=4, channels=1, mean=[0.5], std=[0.25]),
)
DTYPES = ["float32", "float16", "float64", "uint8", "int64"]
SIZES = {"float32": 4, "float16": 2, "float64": 8, "uint8": 1, "int64": 8}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)
kinds = st.sampled_from(["train", "compress", "infer", "pipeline", "explode", None])


@FUZZ
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6), kinds)
def test_any_json_object_is_a_job_or_a_validation_error(body: dict[str, Any], kind: Any) -> None:
    if kind is not None:
        body["kind"] = kind
    try:
        job = parse_job(body)
    except ValidationError:
        return
    assert job.kind == kind


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "top_k": json_values,
            "priority": json_values,
            "labels": json_values,
            "deadline": json_values,
            "device": json_values,
            "backend": json_values,
            "submitted_at": json_values,
        },
    )
)
def test_infer_job_fields_of_any_type_validate_or_refuse(fields: dict[str, Any]) -> None:
    inputs = {"dtype": "float32", "shape": [1], "data": base64.b64encode(b"\0" * 4).decode()}
    try:
        job = InferJob.model_validate({"model": "m", "inputs": inputs, **fields})
    except ValidationError:
        return
    assert 1 <= job.top_k <= 1000 and 0 <= job.priority <= 9


@FUZZ
@given(st.text(max_size=80))
def test_model_references_never_carry_a_path(ref: str) -> None:
    try:
        parsed = ModelRef.parse(ref)
    except ValueError:
        assert REF_RE.match(ref) is None
        return
    for part in (parsed.name, parsed.alias, parsed.variant):
        assert part is None or ("/" not in part and ".." not in part and "\\" not in part)
    assert str(parsed) == ref or ModelRef.parse(str(parsed)) == parsed


@FUZZ
@given(json_values, st.integers(min_value=1, max_value=4096))
def test_payload_check_passes_or_names_the_limit(payload: Any, limit: int) -> None:
    try:
        check_payload(payload, limit)
    except InvalidJob as e:
        assert "max_payload_bytes" in str(e) or "nests deeper" in str(e)


def tensor_payloads() -> st.SearchStrategy[dict[str, Any]]:
    """Tensor payloads whose declared size matches (so they pass the model) but whose
    bytes, shapes and dtypes are anything at all."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=5))
        size = math.prod(shape) * SIZES[dtype]
        raw = draw(st.binary(min_size=size, max_size=size))
        data = base64.b64encode(raw).decode()
        if draw(st.booleans()) and data:  # corrupt one character, keeping the length
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + draw(st.sampled_from(["!", "A", "-", "/"])) + data[i + 1 :]
        return {"dtype": dtype, "shape": shape, "data": data}

    return build()


@FUZZ
@given(tensor_payloads())
def test_tensor_decoding_yields_a_finite_batch_or_a_bad_tensor(raw: dict[str, Any]) -> None:
    try:
        payload = TensorPayload.model_validate(raw)
    except ValidationError:
        return
    try:
        batch = decode_inputs(payload, MANIFEST, max_items=64)
    except BadTensor:
        return
    assert batch.dtype == torch.float32 and list(batch.shape[1:]) == MANIFEST.input_shape
    assert bool(torch.isfinite(batch).all())


@FUZZ
@given(st.lists(st.binary(min_size=4, max_size=200), min_size=1, max_size=3))
def test_image_decoding_of_arbitrary_bytes_yields_a_batch_or_a_bad_tensor(
    blobs: list[bytes],
) -> None:
    images = [ImagePayload(data=base64.b64encode(b).decode()) for b in blobs]
    try:
        batch = decode_inputs(images, MANIFEST, max_items=64)
    except BadTensor:
        return
    assert list(batch.shape) == [len(blobs), *MANIFEST.input_shape]


@pytest.mark.parametrize("data", ["AA==", "AAA="])
def test_padding_that_hides_bytes_is_a_bad_tensor(data: str) -> None:
    payload = TensorPayload(dtype="uint8", shape=[3], data=data)
    with pytest.raises(BadTensor):
        decode_inputs(payload, MANIFEST, max_items=4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_values_of_every_dtype_decode(dtype: str) -> None:
    from producers.encoding import encode_array

    values = np.arange(16).reshape(1, 1, 4, 4).astype(dtype)
    if dtype == "int64":
        with pytest.raises(BadTensor):
            decode_inputs(encode_array(values), MANIFEST, max_items=4)
        return
    assert decode_inputs(encode_array(values), MANIFEST, max_items=4).shape == (1, 1, 4, 4)
