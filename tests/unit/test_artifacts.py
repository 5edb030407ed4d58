"""The artifact store: safetensors + manifest, digest-checked, never unpickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from shared.errors import IntegrityError, InvalidJob, UnsafeArtifact
from shared.manifest import Manifest
from workers.artifacts import ArtifactStore
from workers.modelio import build_module
from workers.zoo import create_model

MANIFEST = Manifest(arch="mlp", arch_kwargs={"hidden": 8}, input_shape=[3, 32, 32], num_classes=10)


def stored(tmp_path: Path) -> tuple[ArtifactStore, Manifest, torch.nn.Module]:
    store = ArtifactStore(str(tmp_path))
    module = create_model("mlp", hidden=8).eval()
    return store, store.put_model(module.state_dict(), MANIFEST), module


def test_round_trip_rebuilds_the_same_module(tmp_path: Path) -> None:
    store, manifest, module = stored(tmp_path)
    tensors, loaded = store.get_model(manifest.sha256)
    assert loaded.sha256 == manifest.sha256 and loaded.size_bytes > 0
    rebuilt = build_module(loaded, tensors)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), module(x))


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    store, manifest, _ = stored(tmp_path)
    weights = tmp_path / "models" / manifest.sha256 / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="corrupt or tampered"):
        store.get_model(manifest.sha256)


class Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(MARKER),))


MARKER = Path("/tmp/torchfleet-pickle-ran")


def test_a_pickle_checkpoint_is_refused_and_never_runs(tmp_path: Path) -> None:
    MARKER.unlink(missing_ok=True)
    store = ArtifactStore(str(tmp_path))
    store.put_checkpoint("job1", {"w": torch.zeros(1)}, {"epoch": 1})
    folder = tmp_path / "checkpoints" / "job1"
    payload = pickle.dumps(Boom())
    (folder / "weights.safetensors").write_bytes(payload)
    meta = (folder / "meta.json").read_text()
    from workers.artifacts import sha256

    (folder / "meta.json").write_text(
        meta.replace(meta.split('"sha256": "')[1][:64], sha256(payload))
    )
    with pytest.raises(UnsafeArtifact):
        store.get_checkpoint("job1")
    assert not MARKER.exists()


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "abc"])
def test_digests_cannot_escape_the_store(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidJob):
        ArtifactStore(str(tmp_path)).get_model(bad)


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x" * 200])
def test_job_ids_cannot_escape_the_store(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidJob):
        ArtifactStore(str(tmp_path)).get_checkpoint(bad)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    assert store.get_checkpoint("j") is None
    store.put_checkpoint("j", {"w": torch.arange(3.0)}, {"epoch": 2})
    found = store.get_checkpoint("j")
    assert found is not None
    tensors, meta = found
    assert meta["epoch"] == 2 and tensors["w"].tolist() == [0.0, 1.0, 2.0]
    store.drop_checkpoint("j")
    assert store.get_checkpoint("j") is None
