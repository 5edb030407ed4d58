"""Decoding inputs and reading logits, with no broker."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from producers.encoding import encode_array, encode_images, tensor_bytes, tensor_payload
from shared.errors import BadTensor, InvalidJob
from shared.jobs import ImagePayload
from shared.manifest import Manifest, Preprocessing
from workers.admission import stored_input_key
from workers.inference import accuracy, decode_inputs, top_k

MANIFEST = Manifest(
    arch="cifar_cnn",
    input_shape=[3, 32, 32],
    num_classes=3,
    class_names=["a", "b", "c"],
    preprocessing=Preprocessing(image_size=32, channels=3, mean=[0.5] * 3, std=[0.25] * 3),
)


def test_float_tensors_pass_through_bit_exact() -> None:
    array = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    batch = decode_inputs(encode_array(array), MANIFEST, max_items=8)
    assert torch.equal(batch, torch.from_numpy(array))
    single = decode_inputs(encode_array(array[0]), MANIFEST, max_items=8)
    assert single.shape == (1, 3, 32, 32)


def test_uint8_pixels_are_resized_and_normalised() -> None:
    pixels = np.full((4, 8, 8), 255, dtype=np.uint8)
    batch = decode_inputs(encode_array(pixels), MANIFEST, max_items=8)
    assert batch.shape == (4, 3, 32, 32)
    torch.testing.assert_close(batch, torch.full_like(batch, (1.0 - 0.5) / 0.25))


def test_png_images_decode(tmp_path: object) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 12), color=(0, 0, 0)).save(buffer, format="PNG")
    path = tmp_path / "x.png"  # type: ignore[operator]
    path.write_bytes(buffer.getvalue())
    batch = decode_inputs(encode_images([path]), MANIFEST, max_items=8)
    torch.testing.assert_close(batch, torch.full((1, 3, 32, 32), -2.0))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (encode_array(np.zeros((1, 3, 16, 32), dtype=np.float32)), "does not fit"),
        (encode_array(np.zeros((2, 3, 32, 32), dtype=np.int64)), "int64"),
        (encode_array(np.full((1, 3, 32, 32), np.inf, dtype=np.float32)), "NaN or infinite"),
        (encode_array(np.zeros((9, 3, 32, 32), dtype=np.float32)), "limit is 8"),
        ([ImagePayload(data=base64.b64encode(b"not an image").decode())], "could not be decoded"),
        (encode_array(np.zeros((1, 2, 8, 8), dtype=np.uint8)), "uint8 images"),
    ],
    ids=["shape", "dtype", "inf", "too-many", "garbage-image", "two-channel"],
)
def test_bad_inputs_say_what_is_wrong(inputs: object, message: str) -> None:
    with pytest.raises(BadTensor, match=message):
        decode_inputs(inputs, MANIFEST, max_items=8)  # type: ignore[arg-type]


def test_top_k_and_accuracy() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    answers = top_k(logits, 2, MANIFEST.class_names)
    assert [[s.label for s in row] for row in answers] == [[1, 2], [0, 1]]
    assert answers[0][0].name == "b" and answers[0][0].score > 0.9
    assert accuracy(answers, [1, 2]) == 0.5
    with pytest.raises(BadTensor):
        accuracy(answers, [1])


def test_any_byte_order_or_layout_round_trips_bit_exact() -> None:
    array = np.random.default_rng(1).standard_normal((3, 32, 32, 2)).astype(">f8")
    view = array[..., 0]  # non-contiguous and big-endian
    payload = encode_array(view, dtype="float32")
    assert payload.dtype == "float32" and payload.shape == [3, 32, 32]
    batch = decode_inputs(payload, MANIFEST, max_items=8)
    assert torch.equal(batch[0], torch.from_numpy(view.astype(np.float32)))


def test_corrupt_base64_is_a_bad_tensor() -> None:
    payload = encode_array(np.zeros((1, 3, 32, 32), dtype=np.float32))
    broken = payload.model_copy(update={"data": "!" * len(payload.data)})
    with pytest.raises(BadTensor, match="base64"):
        decode_inputs(broken, MANIFEST, max_items=8)


# ----------------------------------------------------------------- stored inputs
def test_stored_bytes_decode_exactly_like_inline_ones() -> None:
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    raw, dtype, shape = tensor_bytes(x)
    stored = tensor_payload(raw, dtype, shape, key="torchfleet:input:j1")
    assert stored.data is None and stored.nbytes == x.nbytes
    from_redis = decode_inputs(stored, MANIFEST, 1024, stored=raw)
    assert torch.equal(from_redis, decode_inputs(encode_array(x), MANIFEST, 1024))


def test_missing_or_short_stored_bytes_are_bad_tensors() -> None:
    stored = tensor_payload(b"", "float32", [1, 3, 32, 32], key="torchfleet:input:j1")
    with pytest.raises(BadTensor, match="never stored, or expired"):
        decode_inputs(stored, MANIFEST, 1024, stored=None)
    with pytest.raises(BadTensor, match="holds 8 bytes"):
        decode_inputs(stored, MANIFEST, 1024, stored=b"\0" * 8)


def test_a_job_reads_only_its_own_stored_inputs_within_the_size_limit() -> None:
    def payload(key: str, shape: list[int]) -> dict[str, object]:
        return {"model": "m", "inputs": {"shape": shape, "key": key}}

    assert stored_input_key(payload("torchfleet:input:j1", [2, 3]), "j1", 100) == (
        "torchfleet:input:j1"
    )
    inline = {"model": "m", "inputs": {"shape": [1], "data": "AAAAAA=="}}
    assert stored_input_key(inline, "j1", 1) is None
    assert stored_input_key({"inputs": "junk"}, "j1", 100) is None  # validation will say why
    explicit_none = {"inputs": {"shape": [1], "data": "AAAAAA==", "key": None}}
    assert stored_input_key(explicit_none, "j1", 1) is None
    with pytest.raises(InvalidJob, match="only its own stored inputs"):
        stored_input_key(payload("torchfleet:input:j2", [1]), "j1", 100)
    with pytest.raises(InvalidJob, match="max_payload_bytes=100"):
        stored_input_key(payload("torchfleet:input:j1", [1000]), "j1", 100)
