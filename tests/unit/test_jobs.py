"""Job contracts: validation, references, schema."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from producers.encoding import encode_nested
from shared.jobs import InferJob, ModelRef, TrainJob, job_schema, parse_job


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
