"""The artifact store: safetensors weights beside a JSON manifest, addressed by sha256.

The store is any fsspec URL (a local folder, a shared volume, ``s3://bucket/prefix``).
Nothing here unpickles: weights are safetensors, manifests and checkpoint metadata JSON.
A blob whose bytes do not hash to the digest it is asked for is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

import fsspec
import torch
from fsspec.core import url_to_fs
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from shared.errors import IntegrityError, InvalidJob, ModelNotFound, UnsafeArtifact
from shared.manifest import Manifest

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"

Tensors = dict[str, torch.Tensor]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_safetensors(tensors: Tensors) -> bytes:
    return save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def from_safetensors(data: bytes, *, what: str) -> Tensors:
    """Parse safetensors bytes; anything else (a pickle, say) is refused, never executed."""
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise UnsafeArtifact(f"{what} is not a safetensors file and will not be loaded: {e}") from e


class ArtifactStore:
    """Content-addressed model artifacts and per-job checkpoints under one fsspec URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        fs, root = url_to_fs(url)
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = root.rstrip("/")

    # ------------------------------------------------------------- models
    def put_model(self, tensors: Tensors, manifest: Manifest) -> Manifest:
        """Store weights and manifest; returns the manifest with its digest and size set."""
        blob = to_safetensors(tensors)
        digest = sha256(blob)
        stored = manifest.model_copy(update={"sha256": digest, "size_bytes": len(blob)})
        folder = self._model_dir(digest)
        self._write(f"{folder}/{WEIGHTS}", blob)
        self._write(f"{folder}/{MANIFEST}", stored.model_dump_json(indent=2).encode())
        return stored

    def get_manifest(self, digest: str) -> Manifest:
        path = f"{self._model_dir(digest)}/{MANIFEST}"
        if not self.fs.exists(path):
            raise ModelNotFound(f"no artifact with digest {digest} in {self.url}")
        return Manifest.model_validate_json(self._read(path))

    def get_model(self, digest: str) -> tuple[Tensors, Manifest]:
        """Read and verify weights; a digest mismatch raises :class:`IntegrityError`."""
        manifest = self.get_manifest(digest)
        blob = self._read(f"{self._model_dir(digest)}/{WEIGHTS}")
        actual = sha256(blob)
        if actual != digest or manifest.sha256 != digest:
            raise IntegrityError(
                f"artifact {digest[:12]} is corrupt or tampered with (its bytes hash to "
                f"{actual[:12]}); re-register the model"
            )
        return from_safetensors(blob, what=f"artifact {digest[:12]}"), manifest

    def _model_dir(self, digest: str) -> str:
        if not DIGEST_RE.match(digest):
            raise InvalidJob(f"{digest!r} is not a sha256 digest")
        return f"{self.root}/models/{digest}"

    # -------------------------------------------------------- checkpoints
    def put_checkpoint(self, job_id: str, tensors: Tensors, meta: dict[str, Any]) -> None:
        """Replace the job's checkpoint; the JSON names the digest of its weights."""
        blob = to_safetensors(tensors)
        folder = self._checkpoint_dir(job_id)
        meta = {**meta, "sha256": sha256(blob)}
        self._write(f"{folder}/{WEIGHTS}", blob)
        self._write(f"{folder}/meta.json", json.dumps(meta).encode())

    def get_checkpoint(self, job_id: str) -> tuple[Tensors, dict[str, Any]] | None:
        folder = self._checkpoint_dir(job_id)
        if not self.fs.exists(f"{folder}/meta.json"):
            return None
        meta: dict[str, Any] = json.loads(self._read(f"{folder}/meta.json"))
        blob = self._read(f"{folder}/{WEIGHTS}")
        if sha256(blob) != meta.get("sha256"):
            raise IntegrityError(f"checkpoint of job {job_id} does not match its digest")
        return from_safetensors(blob, what=f"checkpoint of job {job_id}"), meta

    def drop_checkpoint(self, job_id: str) -> None:
        folder = self._checkpoint_dir(job_id)
        if self.fs.exists(folder):
            self.fs.rm(folder, recursive=True)

    def _checkpoint_dir(self, job_id: str) -> str:
        if not JOB_ID_RE.match(job_id):
            raise InvalidJob(f"job id {job_id!r} may hold only letters, digits, - and _")
        return f"{self.root}/checkpoints/{job_id}"

    # ------------------------------------------------------------- bytes
    def _write(self, path: str, data: bytes) -> None:
        """Write to a temporary name, then move: readers never see half a file."""
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, path)

    def _read(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as f:
            data: bytes = f.read()
        return data
