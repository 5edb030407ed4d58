"""Job contracts: validation, references, schema."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from producers.client import Client
from producers.encoding import encode_nested
from shared.errors import InvalidJob
from shared.jobs import InferJob, ModelRef, TensorPayload, TrainJob, job_schema, parse_job
from shared.names import input_key, job_key
from shared.settings import Settings


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("cnn", ModelRef(name="cnn")),
        ("cnn:3", ModelRef(name="cnn", version=3)),
        ("cnn@production", ModelRef(name="cnn", alias="production")),
        ("cnn:3:int8", ModelRef(name="cnn", version=3, variant="int8")),
        ("cnn@staging:int8", ModelRef(name="cnn", alias="staging", variant="int8")),
        ("cnn:int8", ModelRef(name="cnn", variant="int8")),
    ],
)
def test_model_references_parse(ref: str, expected: ModelRef) -> None:
    assert ModelRef.parse(ref) == expected
    assert str(ModelRef.parse(ref)) == ref


@pytest.mark.parametrize("ref", ["", "../etc/passwd", "a/b", "CNN", "cnn:1:2:3", "cnn@", "x" * 65])
def test_bad_references_are_refused(ref: str) -> None:
    with pytest.raises(ValueError):
        ModelRef.parse(ref)


def test_kind_discriminates_and_unknown_fields_are_refused() -> None:
    job = parse_job({"kind": "train", "model_name": "m"})
    assert isinstance(job, TrainJob) and job.schema_version == 1
    with pytest.raises(ValidationError, match="extra"):
        parse_job({"kind": "train", "model_name": "m", "surprise": 1})
    with pytest.raises(ValidationError):
        parse_job({"kind": "explode"})


@pytest.mark.parametrize(
    "override",
    [
        {"optimizer": {"lr": 0}},
        {"optimizer": {"lr": -1}},
        {"epochs": 0},
        {"batch_size": 0},
        {"model_name": "../../x"},
        {"optimizer": {"name": "adam", "nesterov": True}},
    ],
)
def test_absurd_hyper_parameters_are_refused(override: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse_job({"kind": "train", "model_name": "m", **override})


def test_tensor_payload_must_hold_as_many_bytes_as_its_shape_says() -> None:
    payload = encode_nested([[1.0, 2.0], [3.0, 4.0]])
    assert payload.shape == [2, 2] and payload.dtype == "float32"
    InferJob(model="m", inputs=payload)
    with pytest.raises(ValidationError, match="wrong number of bytes"):
        InferJob(model="m", inputs=payload.model_copy(update={"shape": [2, 3]}).model_dump())


def test_json_round_trip_and_schema() -> None:
    job = InferJob(model="m:1", inputs=encode_nested([[0.5]]), top_k=2)
    again = parse_job(job.model_dump_json())
    assert again == job
    schema = job_schema()
    assert {"TrainJob", "CompressJob", "InferJob"} <= set(schema["$defs"])
    json.dumps(schema)


def test_a_tensor_is_inline_or_stored_never_both_and_only_under_the_input_prefix() -> None:
    assert TensorPayload(shape=[2], key="torchfleet:input:j1").nbytes == 8
    for bad in (
        {"shape": [1]},
        {"shape": [1], "data": "AAAAAA==", "key": "torchfleet:input:j1"},
        {"shape": [1], "key": "torchfleet:model:digits"},
    ):
        with pytest.raises(ValidationError):
            TensorPayload.model_validate(bad)


def test_the_client_refuses_arrays_it_cannot_send_before_sending(settings: Settings) -> None:
    np = pytest.importorskip("numpy")
    with Client(settings) as client:
        with pytest.raises(InvalidJob, match="dtype"):
            client.submit_infer("m", np.zeros((2, 3), dtype=np.int32))
        with pytest.raises(InvalidJob, match="greater than or equal to 1"):
            client.submit_infer("m", np.zeros((0,), dtype=np.float32))
        assert client.status()["queues"]["infer"]["depth"] == 0


def test_a_job_whose_message_could_not_be_sent_leaves_no_record(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    np = pytest.importorskip("numpy")
    with Client(settings) as client:

        def refuse(*args: object, **kwargs: object) -> None:
            raise ConnectionError("broker gone between the record and the message")

        monkeypatch.setattr(client.app, "send_task", refuse)
        with pytest.raises(ConnectionError):
            client.submit_infer("m", np.ones((4, 3, 32, 32), dtype=np.float32), job_id="j-lost")
        assert not client.redis.exists(job_key("j-lost"), input_key("j-lost"))
