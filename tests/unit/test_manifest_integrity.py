"""The manifest is covered by the artifact digest; paths in it stay inside the store;
checkpoints of finished and lost jobs go without failing anyone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from shared.errors import IntegrityError, UnsafeArtifact
from shared.manifest import Manifest, manifest_digest
from workers.artifacts import ArtifactStore, safetensors_metadata, to_safetensors
from workers.backends import load_stored_backend
from workers.onnx_runtime import read_export
from workers.zoo import create_model

MANIFEST = Manifest(
    arch="mlp", arch_kwargs={"hidden": 8}, input_shape=[3, 32, 32], num_classes=10,
    class_names=[f"c{i}" for i in range(10)], metrics={"accuracy": 91.25},
)  # fmt: skip


def stored(tmp_path: Path) -> tuple[ArtifactStore, Manifest]:
    store = ArtifactStore(str(tmp_path))
    return store, store.put_model(create_model("mlp", hidden=8).state_dict(), MANIFEST)


def edit_manifest(tmp_path: Path, digest: str, **changes: object) -> None:
    path = tmp_path / "models" / digest / "manifest.json"
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def test_the_weights_carry_the_manifest_digest(tmp_path: Path) -> None:
    store, manifest = stored(tmp_path)
    blob = (tmp_path / "models" / manifest.sha256 / "weights.safetensors").read_bytes()
    assert safetensors_metadata(blob)["torchfleet.manifest_sha256"] == manifest_digest(manifest)
    assert store.get_model(manifest.sha256)[1] == manifest


@pytest.mark.parametrize(
    "changes",
    [
        {"class_names": [f"x{i}" for i in range(10)]},  # edited labels
        {"arch_kwargs": {"hidden": 8, "dropout": 0.5}},
        {"preprocessing": {"image_size": 32, "channels": 3, "scale": 1.0,
                           "mean": [0, 0, 0], "std": [1, 1, 1]}},
        {"backend": "onnx"},
        {"metrics": {"accuracy": 99.9}},
        {"size_bytes": 1},
    ],
)  # fmt: skip
def test_an_edited_manifest_is_refused(tmp_path: Path, changes: dict[str, object]) -> None:
    store, manifest = stored(tmp_path)
    edit_manifest(tmp_path, manifest.sha256, **changes)
    with pytest.raises(IntegrityError, match=r"edited after it was stored|corrupt"):
        store.get_model(manifest.sha256)
    with pytest.raises(IntegrityError):
        store.get_manifest(manifest.sha256)


def test_weights_without_a_manifest_digest_are_refused(tmp_path: Path) -> None:
    """Older artifacts (or a forged pair) carry no digest: refused, with what to do."""
    store = ArtifactStore(str(tmp_path))
    blob = to_safetensors(create_model("mlp", hidden=8).state_dict())
    from workers.artifacts import sha256

    digest = sha256(blob)
    folder = tmp_path / "models" / digest
    folder.mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(blob)
    manifest = MANIFEST.model_copy(update={"sha256": digest, "size_bytes": len(blob)})
    (folder / "manifest.json").write_text(manifest.model_dump_json())
    with pytest.raises(IntegrityError, match="re-register"):
        store.get_model(digest)


@pytest.mark.parametrize(
    "path",
    ["/etc/hostname", "{root}/exports/../../../etc/hostname", "{root}/models/{sha}.onnx",
     "{root}/exports/sub/{sha}.onnx", "{root}/exports/{other}.onnx", "relative/{sha}.onnx"],
)  # fmt: skip
def test_export_paths_outside_the_store_are_never_read(tmp_path: Path, path: str) -> None:
    store = ArtifactStore(str(tmp_path))
    secret = Path("/etc/hostname")
    sha = "0" * 64
    target = path.format(root=store.root, sha=sha, other="1" * 64)
    with pytest.raises(UnsafeArtifact, match="not a file of this store"):
        read_export(store, {"format": "onnx", "path": target, "sha256": sha})
    if secret.exists():  # the digest of the real file does not open the door either
        from workers.artifacts import sha256

        real = sha256(secret.read_bytes())
        with pytest.raises(UnsafeArtifact):
            read_export(store, {"path": str(secret), "sha256": real})


def test_an_onnx_manifest_pointing_outside_the_store_is_refused(tmp_path: Path) -> None:
    """Even written by the store itself (so the digest matches), an export record that
    names a file outside the store is not read."""
    store = ArtifactStore(str(tmp_path))
    hostile = MANIFEST.model_copy(
        update={
            "backend": "onnx",
            "lineage": {
                "exports": [{"format": "onnx", "path": "/etc/hostname", "sha256": "0" * 64}]
            },
        }
    )
    stored_manifest = store.put_model(create_model("mlp", hidden=8).state_dict(), hostile)
    with pytest.raises(UnsafeArtifact):
        load_stored_backend(store, stored_manifest.sha256)


def test_an_export_inside_the_store_is_read(tmp_path: Path) -> None:
    from workers.compression.export import put_export

    store = ArtifactStore(str(tmp_path))
    path, digest = put_export(store, b"graph-bytes", "onnx")
    assert read_export(store, {"path": path, "sha256": digest}) == b"graph-bytes"


def test_a_failing_drop_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(str(tmp_path))
    store.put_checkpoint("job-1", {"w": torch.zeros(1)}, {"epoch": 1})

    def refuse(*_: object, **__: object) -> None:
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(store.fs, "rm", refuse)  # fsspec shares the instance: undo after
    with caplog.at_level(logging.WARNING):
        assert store.discard_checkpoint("job-1") is False
    assert "Directory not empty" in caplog.text


def test_the_sweep_removes_only_checkpoints_of_lost_jobs(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    for job in ("old", "fresh"):
        store.put_checkpoint(job, {"w": torch.zeros(1)}, {"epoch": 1})
    meta = tmp_path / "checkpoints" / "old" / "meta.json"
    document = json.loads(meta.read_text())
    document["saved_at"] -= 3600
    meta.write_text(json.dumps(document))
    assert store.sweep_checkpoints(max_age_s=600) == ["old"]
    assert store.get_checkpoint("old") is None
    assert store.get_checkpoint("fresh") is not None
    assert store.sweep_checkpoints(max_age_s=600) == []
