"""The lane's wire record and its pure worker layer: no broker, no worker."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from producers.lane import image_format, lane_payload
from shared.celery_app import create_app
from shared.errors import InvalidJob, TorchfleetError
from shared.jobs import InferResult, Latency
from shared.lane import (
    F_DATA,
    F_DEADLINE,
    F_DTYPE,
    F_REPLY,
    F_SCHEMA,
    F_SHAPE,
    decode_reply,
    decode_request,
    encode_error,
    encode_request,
    encode_result,
    encode_result_json,
    reply_address,
    result_meta,
    result_meta_json,
)
from shared.manifest import Manifest, Preprocessing
from shared.names import lane_reply_key
from shared.settings import Settings
from workers.lane.answers import GroupAnswers, GroupRun, queued_ms, top_k_rows
from workers.lane.batch import Entry, Pending, decode_group, group_by_model, parse_entries
from workers.lane.recovery import parse_autoclaim

REPLY = lane_reply_key("client-1")
MANIFEST = Manifest(
    arch="cifar_cnn",
    input_shape=[3, 4, 4],
    num_classes=3,
    class_names=["a", "b"],
    preprocessing=Preprocessing(image_size=4),
)
MAX_BYTES = 1 << 20


def sample(n: int | None = None, dtype: str = "float32", seed: int = 0) -> np.ndarray:
    shape = (3, 4, 4) if n is None else (n, 3, 4, 4)
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def fields(array: np.ndarray, request_id: str = "r1", **options: object) -> dict[bytes, bytes]:
    raw, dtype, shape = lane_payload(array)
    return encode_request(
        request_id=request_id, reply_to=REPLY, model="m", data=raw, dtype=dtype, shape=shape,
        submitted_at=1000.0, **options,  # type: ignore[arg-type]
    )  # fmt: skip


def entry(f: dict[bytes, bytes], stream: str = "s", entry_id: bytes = b"1-0") -> Entry:
    return Entry(stream, entry_id, f)


# ---------------------------------------------------------------- the record
def test_a_request_round_trips_with_raw_tensor_bytes() -> None:
    array = sample(2)
    f = fields(array, top_k=3, deadline=2000.5, store=True, backend="eager")
    assert f[F_DATA] == array.tobytes()  # the bytes themselves: no base64, no JSON
    request = decode_request(f, MAX_BYTES)
    assert (request.request_id, request.reply_to, request.model) == ("r1", REPLY, "m")
    assert (request.dtype, request.shape, request.top_k) == ("float32", (2, 3, 4, 4), 3)
    assert (request.deadline, request.submitted_at, request.store) == (2000.5, 1000.0, True)
    assert request.backend == "eager"


def test_images_travel_as_their_file_bytes() -> None:
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(png, format="PNG")
    data, dtype, shape = lane_payload([png.getvalue(), png.getvalue()])
    assert (dtype, shape) == ("png", [2])
    request = decode_request(
        encode_request(
            request_id="i", reply_to=REPLY, model="m", data=data, dtype=dtype, submitted_at=1.0
        ),
        MAX_BYTES,
    )
    assert request.is_image and request.data == (png.getvalue(), png.getvalue())
    with pytest.raises(InvalidJob, match="PNG or JPEG"):
        image_format(b"GIF89a")


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({F_DTYPE: b"complex64"}, "bad_tensor", "unknown dtype"),
        ({F_SHAPE: b"2,3,4,4"}, "bad_tensor", "needs 384"),
        ({F_SHAPE: b"5000,3,32,32"}, "bad_tensor", "max_payload_bytes"),
        ({F_SHAPE: b"a,b"}, "bad_tensor", "comma-separated"),
        ({F_SHAPE: b"0,3"}, "bad_tensor", "at least 1"),
        ({F_SCHEMA: b"9"}, "invalid_job", "schema"),
        ({F_DEADLINE: b"soon"}, "invalid_job", "deadline"),
        ({b"k": b"0"}, "invalid_job", "top_k"),
        ({b"m": b""}, "invalid_job", "'m'"),
        ({b"be": b"torchscript"}, "invalid_job", "backend"),
    ],
)
def test_a_hostile_record_is_refused_with_a_clear_error(
    change: dict[bytes, bytes], code: str, words: str
) -> None:
    with pytest.raises(TorchfleetError, match=words) as caught:
        decode_request({**fields(sample()), **change}, MAX_BYTES)
    assert caught.value.code == code


def test_a_reply_key_outside_the_reply_prefix_is_not_an_address() -> None:
    f = {**fields(sample()), F_REPLY: b"infer"}  # a Celery queue: never pushed into
    assert reply_address(f) == ("r1", None)
    assert reply_address({F_REPLY: REPLY.encode()}) == (None, REPLY)
    assert reply_address({b"id": b"\xff\xfe"}) == (None, None)
    with pytest.raises(InvalidJob, match="reply key"):
        decode_request(f, MAX_BYTES)


def test_replies_round_trip() -> None:
    ok = decode_reply(encode_result("r1", {"job_id": "r1", "x": 1}))
    assert (ok.request_id, ok.result, ok.code) == ("r1", {"job_id": "r1", "x": 1}, None)
    bad = decode_reply(encode_error("r2", "expired", "too late"))
    assert (bad.request_id, bad.result, bad.code, bad.message) == (
        "r2",
        None,
        "expired",
        "too late",
    )
    with pytest.raises(ValueError):
        decode_reply(b'{"no": "id"}')


def test_stored_answers_read_back_through_celerys_own_backend() -> None:
    backend = create_app(Settings()).backend
    ok = backend.meta_from_decoded(json.loads(result_meta("r1", {"job_id": "r1"})))
    assert (ok["status"], ok["result"]) == ("SUCCESS", {"job_id": "r1"})
    failed = backend.meta_from_decoded(
        json.loads(result_meta("r2", error=("model_not_found", "no model x")))
    )
    assert failed["status"] == "FAILURE"
    assert isinstance(failed["result"], TorchfleetError)
    assert (failed["result"].code, str(failed["result"])) == ("model_not_found", "no model x")


# ---------------------------------------------------------------- parsing and grouping
def test_parse_splits_good_late_broken_and_vanished_entries() -> None:
    good = entry(fields(sample(), "good"), entry_id=b"1-0")
    late = entry(fields(sample(), "late", deadline=5.0), entry_id=b"2-0")
    broken = entry({**fields(sample(), "broken"), F_DTYPE: b"int4"}, entry_id=b"3-0")
    vanished = entry({}, entry_id=b"4-0")
    parsed = parse_entries([good, late, broken, vanished], MAX_BYTES, now=10.0)
    assert [p.request.request_id for p in parsed.pending] == ["good"]
    assert sorted((r.request_id, r.code) for r in parsed.refused) == [
        ("broken", "bad_tensor"),
        ("late", "expired"),
    ]
    assert parsed.deleted == [vanished]


def test_requests_group_by_model_and_backend_in_arrival_order() -> None:
    f = [
        {**fields(sample(), "a1"), b"m": b"x"},
        {**fields(sample(), "b1"), b"m": b"y"},
        {**fields(sample(), "a2"), b"m": b"x"},
        {**fields(sample(), "a3", backend="onnx"), b"m": b"x"},
    ]
    parsed = parse_entries([entry(x) for x in f], MAX_BYTES, now=0.0)
    groups = group_by_model(parsed.pending)
    assert {k: [p.request.request_id for p in g] for k, g in groups.items()} == {
        ("x", None): ["a1", "a2"],
        ("y", None): ["b1"],
        ("x", "onnx"): ["a3"],
    }


# ---------------------------------------------------------------- decoding
def pending(*arrays: np.ndarray) -> list[Pending]:
    f = [fields(a, f"r{i}") for i, a in enumerate(arrays)]
    return parse_entries([entry(x) for x in f], MAX_BYTES, now=0.0).pending


def test_plain_samples_become_one_batch_with_no_copy_per_input() -> None:
    arrays = [sample(seed=i) for i in range(3)] + [sample(1, seed=9)]
    batch, kept, counts, refused = decode_group(pending(*arrays), MANIFEST, 64)
    assert batch is not None and batch.shape == (4, 3, 4, 4) and not refused
    assert counts == [1, 1, 1, 1] and len(kept) == 4
    assert torch.equal(batch[3], torch.from_numpy(arrays[3][0]))


def test_mixed_dtypes_and_bad_requests_are_decoded_one_by_one() -> None:
    nan = sample(seed=3)
    nan[0, 0, 0] = math.nan
    pixels = np.arange(1 * 3 * 4 * 4, dtype=np.uint8).reshape(1, 3, 4, 4)
    items = pending(sample(2, "float16"), pixels, nan, sample(seed=4)[:2], sample(2, "int64"))
    batch, kept, counts, refused = decode_group(items, MANIFEST, 64)
    assert batch is not None and counts == [2, 1]
    assert [p.request.request_id for p in kept] == ["r0", "r1"]
    assert sorted((r.request_id, r.code) for r in refused) == [
        ("r2", "bad_tensor"),
        ("r3", "bad_tensor"),
        ("r4", "bad_tensor"),
    ]
    words = " ".join(r.message for r in refused)
    assert "NaN" in words and "does not fit" in words and "int64" in words


def test_a_nan_in_a_plain_group_refuses_only_its_request() -> None:
    nan = sample(seed=3)
    nan[1, 2, 3] = math.inf
    batch, kept, counts, refused = decode_group(pending(sample(), nan, sample()), MANIFEST, 64)
    assert batch is not None and batch.shape[0] == 2 and counts == [1, 1]
    assert [p.request.request_id for p in kept] == ["r0", "r2"]
    assert [r.request_id for r in refused] == ["r1"]


def test_too_many_inputs_in_one_request_are_refused() -> None:
    _, _, _, refused = decode_group(pending(sample(5)), MANIFEST, 4)
    assert refused[0].code == "bad_tensor" and "limit is 4" in refused[0].message


# ---------------------------------------------------------------- answers
def test_answers_are_inferresult_json_and_records_carry_the_stats_fields() -> None:
    (item,) = pending(sample(2))
    logits = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0]])
    scores, labels = top_k_rows(logits, 2)
    run = GroupRun('m"odel', 1, "base", "d" * 64, "w", "cpu", True, 7, 0.5, 0.1, 0.2)
    answers = GroupAnswers(
        run, MANIFEST.class_names, wait_ms=0.3, post_ms=0.1, total_ms=1.5, lane="cpu"
    )
    preds = answers.predictions(scores, labels, 2)
    text = answers.result(item.request, preds, queued_ms(item.request, read_at=1000.5))
    parsed = InferResult.model_validate_json(text)
    assert [[p.label for p in row] for row in parsed.predictions] == [[1, 2], [0, 1]]
    assert parsed.predictions[0][1].name is None  # the manifest names only two classes
    assert parsed.predictions[0][0].score == pytest.approx(float(torch.softmax(logits, 1)[0, 1]))
    assert (parsed.model, parsed.batch_size, parsed.cache_hit, parsed.job_id) == (
        'm"odel',
        7,
        True,
        "r0",
    )
    assert parsed.latency.queued_ms == pytest.approx(500.0)
    assert (parsed.latency.load_ms, parsed.latency.total_worker_ms) == (0.5, 1.5)
    record = answers.stats_record(item.request, 500.0, 2)
    assert {k: record[k] for k in ("job_id", "outcome", "inputs", "batch_size")} == {
        "job_id": "r0", "outcome": "success", "inputs": "2", "batch_size": "7",
    }  # fmt: skip
    assert set(Latency.model_fields) <= set(record)
    reply = decode_reply(encode_result_json("r0", text))
    assert reply.result == json.loads(text)
    backend = create_app(Settings()).backend
    meta = backend.meta_from_decoded(json.loads(result_meta_json("r0", text)))
    assert (meta["status"], meta["result"]) == ("SUCCESS", json.loads(text))


# ---------------------------------------------------------------- XAUTOCLAIM shapes
def test_autoclaim_replies_of_redis_62_and_70_are_both_read() -> None:
    v62 = [b"0-0", [(b"1-0", {b"a": b"1"}), (None, None), (b"3-0", {b"a": b"3"})]]
    v70 = [b"0-0", [(b"1-0", {b"a": b"1"}), (b"3-0", {b"a": b"3"})], [b"2-0"]]
    old, new = parse_autoclaim(v62), parse_autoclaim(v70)
    assert [i for i, _ in old.entries] == [i for i, _ in new.entries] == [b"1-0", b"3-0"]
    assert (old.deleted, old.anonymous_deleted) == ([], 1)
    assert (new.deleted, new.anonymous_deleted) == ([b"2-0"], 0)
    assert parse_autoclaim(["5-0", []]).cursor == b"5-0"
