"""Hostile and awkward dataset specs, at the dataset layer: roots, links, loops, sizes, pickles.

Every folder here is written by the test. Errors must be clear, never list a folder and
never tell which paths exist outside the data roots.
"""

from __future__ import annotations

import base64
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from shared.errors import BadTensor, DatasetNotFound, InvalidJob, PathNotAllowed
from shared.jobs import DatasetSpec, ImagePayload, TrainJob
from shared.manifest import Manifest, Preprocessing
from workers.inference import decode_inputs
from workers.zoo.confine import DataLimits
from workers.zoo.datasets import DatasetBundle, load_dataset


def limits(*roots: Path, max_files: int = 10_000, max_pixels: int = 10**6) -> DataLimits:
    return DataLimits(roots=tuple(roots), max_files=max_files, max_pixels=max_pixels)


def png(path: Path, shade: int, size: tuple[int, int] = (8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, shade, shade)).save(path)


def write_classes(root: Path, classes: list[str], per_class: int = 4) -> None:
    for index, name in enumerate(classes):
        for i in range(per_class):
            png(root / name / f"{i}.png", 30 * index + i)


def folder(root: Path, path: Path | str, **fields: Any) -> DatasetBundle:
    spec = DatasetSpec(name="imagefolder", path=str(path), image_size=8, **fields)
    return load_dataset(spec, limits(root))


# ------------------------------------------------------------------ roots and links
def test_a_path_outside_the_roots_is_refused_alike_whether_it_exists_or_not(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    write_classes(root / "ok", ["a", "b"])
    (tmp_path / "secret" / ".ssh").mkdir(parents=True)
    messages = []
    for outside in [tmp_path / "secret", tmp_path / "no-such-folder"]:
        with pytest.raises(PathNotAllowed) as caught:
            folder(root, outside)
        messages.append(str(caught.value).replace(str(outside), "X"))
    assert messages[0] == messages[1]  # nothing tells the two apart
    assert ".ssh" not in messages[0] and "TORCHFLEET_DATA_ROOTS" in messages[0]
    assert folder(root, root / "ok").num_classes == 2


@pytest.mark.parametrize("path", ["ok/../../secret", "ok/..", "ok/\0x"])
def test_dot_dot_and_nul_are_refused(tmp_path: Path, path: str) -> None:
    write_classes(tmp_path / "data" / "ok", ["a", "b"])
    with pytest.raises(PathNotAllowed, match=r"'\.\.' or NUL"):
        folder(tmp_path / "data", str(tmp_path / "data" / path))


def test_a_relative_path_is_taken_under_the_first_root(tmp_path: Path) -> None:
    write_classes(tmp_path / "pets", ["cat", "dog"])
    assert folder(tmp_path, "pets").class_names == ["cat", "dog"]


def test_links_out_of_the_roots_are_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "data", tmp_path / "outside"
    write_classes(outside, ["a", "b"])
    root.mkdir()
    (root / "escape").symlink_to(outside)
    with pytest.raises(PathNotAllowed, match="through a link"):
        folder(root, root / "escape")
    write_classes(root / "classes", ["a"])
    (root / "classes" / "b").symlink_to(outside / "b")  # a class folder linking out
    with pytest.raises(PathNotAllowed, match="links outside"):
        folder(root, root / "classes")
    (root / "classes" / "b").unlink()
    png(root / "classes" / "b" / "0.png", 9)
    (root / "classes" / "b" / "leak.png").symlink_to(outside / "a" / "0.png")  # a file
    with pytest.raises(PathNotAllowed, match="links outside"):
        folder(root, root / "classes")


def test_links_that_stay_inside_the_roots_are_read(tmp_path: Path) -> None:
    write_classes(tmp_path / "shared", ["a", "b"])
    (tmp_path / "mine").mkdir()
    for name in ["a", "b"]:
        (tmp_path / "mine" / name).symlink_to(tmp_path / "shared" / name)
    assert len(folder(tmp_path, tmp_path / "mine").train) > 0  # type: ignore[arg-type]


def test_a_link_loop_ends_and_a_huge_folder_is_refused_by_its_entry_count(
    tmp_path: Path,
) -> None:
    write_classes(tmp_path / "loop", ["a", "b"])
    (tmp_path / "loop" / "a" / "again").symlink_to(tmp_path / "loop")  # a loop, as in /sys
    (tmp_path / "loop" / "b" / "self").symlink_to(tmp_path / "loop" / "b")
    assert folder(tmp_path, tmp_path / "loop").num_classes == 2  # links to folders not followed
    many = tmp_path / "many"
    write_classes(many, ["a", "b"], per_class=30)
    spec = DatasetSpec(name="imagefolder", path=str(many), image_size=8)
    with pytest.raises(InvalidJob, match="more than 50 entries") as caught:
        load_dataset(spec, limits(tmp_path, max_files=50))
    assert "TORCHFLEET_MAX_DATASET_FILES" in str(caught.value)


def test_no_roots_means_no_folders(tmp_path: Path) -> None:
    spec = DatasetSpec(name="imagefolder", path=str(tmp_path))
    with pytest.raises(PathNotAllowed, match="TORCHFLEET_DATA_ROOTS"):
        load_dataset(spec, limits())


def test_a_missing_folder_inside_the_roots_says_so_in_plain_words(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match="does not exist on this worker"):
        folder(tmp_path, tmp_path / "nowhere")
    spec = DatasetSpec(name="imagefolder")
    with pytest.raises(DatasetNotFound) as caught:
        load_dataset(spec, limits(tmp_path))
    message = str(caught.value)
    assert "holds one sub-folder of images per class" in message
    assert "hold with" not in message


# ------------------------------------------------------------------ images
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    write_classes(tmp_path / "ds", ["a", "b"])
    png(tmp_path / "ds" / "b" / "huge.png", 0, size=(2000, 1000))  # 2 MP, a few KiB of PNG
    with pytest.raises(InvalidJob, match=r"2000x1000 pixels, more than the limit of 1000000"):
        folder(tmp_path, tmp_path / "ds")


def test_a_file_that_is_not_an_image_says_so_without_a_python_repr(tmp_path: Path) -> None:
    write_classes(tmp_path / "ds", ["a", "b"])
    (tmp_path / "ds" / "a" / "notes.png").write_text("not an image")
    with pytest.raises(InvalidJob) as caught:
        folder(tmp_path, tmp_path / "ds")
    message = str(caught.value)
    assert "ds/a/notes.png could not be decoded: it is not an image" in message
    assert " at 0x" not in message and "<" not in message


MANIFEST = Manifest(
    arch="mlp",
    input_shape=[3, 8, 8],
    num_classes=2,
    preprocessing=Preprocessing(image_size=8, channels=3, mean=[0.5] * 3, std=[0.5] * 3),
)


def image_payload(data: bytes) -> ImagePayload:
    return ImagePayload(data=base64.b64encode(data).decode())


def test_inference_refuses_an_image_bomb_and_names_a_non_image_plainly() -> None:
    buffer = io.BytesIO()
    Image.new("L", (5000, 4000)).save(buffer, format="PNG")  # 20 MP in ~20 KiB
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(BadTensor, match="5000x4000 pixels, more than the limit of 1000000"):
        decode_inputs([image_payload(buffer.getvalue())], MANIFEST, 8, max_pixels=10**6)
    with pytest.raises(BadTensor) as caught:
        decode_inputs([image_payload(b"plain text")], MANIFEST, 8)
    assert str(caught.value).startswith("image 0 (png) could not be decoded: it is not an image")
    assert "BytesIO" not in str(caught.value)


# ------------------------------------------------------------------ CIFAR-10 without pickle
def cifar_rows(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(x) for x in rng.integers(0, 10, n)]


def test_cifar_binary_batches_are_read(tmp_path: Path) -> None:
    folder_bin = tmp_path / "cifar" / "cifar-10-batches-bin"
    folder_bin.mkdir(parents=True)
    first_image = None
    for i in range(1, 6):
        images, labels = cifar_rows(4, i)
        first_image = images[0] if first_image is None else first_image
        rows = np.concatenate([np.array(labels, np.uint8)[:, None], images], axis=1)
        (folder_bin / f"data_batch_{i}.bin").write_bytes(rows.tobytes())
    spec = DatasetSpec(
        name="cifar10", path=str(tmp_path / "cifar"), image_size=32, val_fraction=0.25
    )
    bundle = load_dataset(spec, limits(tmp_path))
    assert (len(bundle.train), len(bundle.val)) == (15, 5)  # type: ignore[arg-type]
    assert bundle.class_names[0] == "airplane" and bundle.train[0][0].shape == (3, 32, 32)


def write_pickled(folder_py: Path, batch: Any) -> None:
    folder_py.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        (folder_py / f"data_batch_{i}").write_bytes(pickle.dumps(batch(i), protocol=2))


def test_cifar_python_batches_are_refused_with_the_binary_version_named(tmp_path: Path) -> None:
    def batch(i: int) -> dict[str, Any]:
        images, labels = cifar_rows(4, i)
        return {"batch_label": f"batch {i}", "data": images, "labels": labels}

    write_pickled(tmp_path / "cifar" / "cifar-10-batches-py", batch)
    spec = DatasetSpec(name="cifar10", path=str(tmp_path / "cifar"), image_size=16, channels=1)
    with pytest.raises(InvalidJob, match=r"never unpickles.*cifar-10-binary\.tar\.gz"):
        load_dataset(spec, limits(tmp_path))


class Payload:
    """Unpickling this runs ``os.system``-like code: here, it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def test_a_malicious_cifar_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    write_pickled(tmp_path / "cifar" / "cifar-10-batches-py", lambda i: {"data": Payload(marker)})
    spec = DatasetSpec(name="cifar10", path=str(tmp_path / "cifar"))
    with pytest.raises(InvalidJob, match="never unpickles"):
        load_dataset(spec, limits(tmp_path))
    assert not marker.exists()


def test_cifar_sources_are_never_unpickled_by_the_standard_loader() -> None:
    from workers.zoo import cifar

    source = Path(cifar.__file__).read_text()
    assert "import pickle" not in source and "Unpickler" not in source


# ------------------------------------------------------------------ caps in the job models
@pytest.mark.parametrize(
    ("fields", "pattern"),
    [
        ({"epochs": 1001}, "epochs"),
        ({"arch_kwargs": {"hidden": 10**7}}, "beyond"),
        ({"arch_kwargs": {"hidden": float("inf")}}, "not finite"),
        ({"arch_kwargs": {"x" * 65: 1}}, "identifier"),
        ({"arch_kwargs": {"mode": "x" * 300}}, "longer than"),
        ({"dataset": {"name": "synthetic", "samples": 10**7}}, "samples"),
        ({"dataset": {"name": "synthetic", "samples": 100_000, "image_size": 64}}, "values"),
        ({"dataset": {"name": "synthetic", "num_classes": 10**5}}, "num_classes"),
    ],
)
def test_absurd_sizes_are_refused_by_the_job_model(fields: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        TrainJob.model_validate({"model_name": "m", **fields})


def test_the_caps_leave_ordinary_jobs_alone() -> None:
    job = TrainJob.model_validate(
        {
            "model_name": "m",
            "epochs": 1000,
            "arch_kwargs": {"hidden": 4096, "depth": 3, "width_mult": 0.5, "act": "relu"},
            "dataset": {"name": "synthetic", "samples": 50_000, "image_size": 32},
        }
    )
    assert job.dataset.samples == 50_000


def test_data_roots_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import Settings

    monkeypatch.setenv("TORCHFLEET_DATA_ROOTS", os.pathsep.join(["/srv/a", "/srv/b"]))
    assert Settings().data_roots == ["/srv/a", "/srv/b"]
    monkeypatch.setenv("TORCHFLEET_DATA_ROOTS", '["/srv/with space"]')
    assert Settings().data_roots == ["/srv/with space"]
