"""The artifact store: safetensors weights beside a JSON manifest, addressed by sha256.

The store is any fsspec URL (a local folder, a shared volume, ``s3://bucket/prefix``).
Nothing here unpickles: weights are safetensors, manifests and checkpoint metadata JSON.
A blob whose bytes do not hash to the digest it is asked for is refused, and so is a manifest
that is not the one written with it: the weights file carries the manifest's digest in its
safetensors metadata, so the one digest the registry keeps covers both. Paths a manifest
names (export files) are read only from inside the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import struct
import time
import uuid
from typing import Any

import fsspec
import torch
from fsspec.core import url_to_fs
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from shared.errors import IntegrityError, InvalidJob, ModelNotFound, UnsafeArtifact
from shared.manifest import Manifest, manifest_digest

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
CHECKPOINT_META = "meta.json"
MANIFEST_DIGEST_KEY = "torchfleet.manifest_sha256"  # in the weights' safetensors metadata
EXPORTS = "exports"

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_safetensors(tensors: Tensors, metadata: dict[str, str] | None = None) -> bytes:
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return save_safetensors(cpu, metadata=metadata)


def safetensors_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (its header: a u64 length, then JSON)."""
    if len(blob) < 8:
        return {}
    (length,) = struct.unpack("<Q", blob[:8])
    if length > len(blob) - 8:
        return {}
    try:
        header = json.loads(blob[8 : 8 + length])
    except ValueError:
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(metadata) if isinstance(metadata, dict) else {}


def from_safetensors(data: bytes, *, what: str) -> Tensors:
    """Parse safetensors bytes; anything else (a pickle, say) is refused, never executed."""
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise UnsafeArtifact(f"{what} is not a safetensors file and will not be loaded: {e}") from e


def check_manifest(manifest: Manifest, blob: bytes, digest: str) -> None:
    """:class:`IntegrityError` unless ``manifest`` is the one stored with ``blob``."""
    recorded = safetensors_metadata(blob).get(MANIFEST_DIGEST_KEY)
    if recorded is None:
        raise IntegrityError(
            f"artifact {digest[:12]} carries no manifest digest (stored by an older version); "
            "re-register the model so its manifest is covered by the integrity check"
        )
    if manifest.size_bytes != len(blob) or manifest_digest(manifest) != recorded:
        raise IntegrityError(
            f"the manifest of artifact {digest[:12]} was edited after it was stored (it no "
            "longer matches the digest its weights carry); re-register the model"
        )


class ArtifactStore:
    """Content-addressed model artifacts and per-job checkpoints under one fsspec URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        fs, root = url_to_fs(url)
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = root.rstrip("/")

    # ------------------------------------------------------------- models
    def put_model(self, tensors: Tensors, manifest: Manifest) -> Manifest:
        """Store weights and manifest; returns the manifest with its digest and size set.

        The weights carry the manifest's digest, so the returned digest covers both."""
        blob = to_safetensors(tensors, {MANIFEST_DIGEST_KEY: manifest_digest(manifest)})
        digest = sha256(blob)
        stored = manifest.model_copy(update={"sha256": digest, "size_bytes": len(blob)})
        folder = self._model_dir(digest)
        self._write(f"{folder}/{WEIGHTS}", blob)
        self._write(f"{folder}/{MANIFEST}", stored.model_dump_json(indent=2).encode())
        return stored

    def get_manifest(self, digest: str) -> Manifest:
        """The manifest of a stored model, verified with its weights (see :meth:`get_model`)."""
        return self.get_model(digest)[1]

    def get_model(self, digest: str) -> tuple[Tensors, Manifest]:
        """Read and verify weights and manifest; any mismatch raises :class:`IntegrityError`."""
        path = f"{self._model_dir(digest)}/{MANIFEST}"
        if not self.fs.exists(path):
            raise ModelNotFound(f"no artifact with digest {digest} in {self.url}")
        manifest = Manifest.model_validate_json(self._read(path))
        blob = self._read(f"{self._model_dir(digest)}/{WEIGHTS}")
        actual = sha256(blob)
        if actual != digest or manifest.sha256 != digest:
            raise IntegrityError(
                f"artifact {digest[:12]} is corrupt or tampered with (its bytes hash to "
                f"{actual[:12]}); re-register the model"
            )
        check_manifest(manifest, blob, digest)
        return from_safetensors(blob, what=f"artifact {digest[:12]}"), manifest

    def _model_dir(self, digest: str) -> str:
        if not DIGEST_RE.match(digest):
            raise InvalidJob(f"{digest!r} is not a sha256 digest")
        return f"{self.root}/models/{digest}"

    # ------------------------------------------------------------- exports
    def read_export(self, path: str, digest: str) -> bytes:
        """The bytes of an export file a manifest names, read only from ``{store}/exports/``
        and only if they hash to ``digest``."""
        self._export_path(path, digest)
        blob = self._read(path)
        if sha256(blob) != digest:
            raise IntegrityError(f"export {path} does not match its recorded sha256")
        return blob

    def _export_path(self, path: str, digest: str) -> str:
        """``path`` if it names ``{store}/exports/{digest}.{ext}``; :class:`UnsafeArtifact`
        for anything else (an absolute path elsewhere, ``..``, another file)."""
        normal = posixpath.normpath(path)
        folder, name = posixpath.split(normal)
        inside = folder == f"{self.root}/{EXPORTS}" and normal == path
        if not inside or not DIGEST_RE.match(digest) or name.split(".", 1)[0] != digest:
            raise UnsafeArtifact(
                f"the manifest names export {path!r}, which is not a file of this store's "
                f"{EXPORTS}/ folder; it is not read"
            )
        return path

    # -------------------------------------------------------- checkpoints
    def put_checkpoint(self, job_id: str, tensors: Tensors, meta: dict[str, Any]) -> None:
        """Replace the job's checkpoint; the JSON names the digest of its weights."""
        blob = to_safetensors(tensors)
        folder = self._checkpoint_dir(job_id)
        meta = {**meta, "sha256": sha256(blob), "saved_at": time.time()}
        self._write(f"{folder}/{WEIGHTS}", blob)
        self._write(f"{folder}/{CHECKPOINT_META}", json.dumps(meta).encode())

    def get_checkpoint(self, job_id: str) -> tuple[Tensors, dict[str, Any]] | None:
        folder = self._checkpoint_dir(job_id)
        if not self.fs.exists(f"{folder}/{CHECKPOINT_META}"):
            return None
        meta: dict[str, Any] = json.loads(self._read(f"{folder}/{CHECKPOINT_META}"))
        blob = self._read(f"{folder}/{WEIGHTS}")
        if sha256(blob) != meta.get("sha256"):
            raise IntegrityError(f"checkpoint of job {job_id} does not match its digest")
        return from_safetensors(blob, what=f"checkpoint of job {job_id}"), meta

    def drop_checkpoint(self, job_id: str) -> None:
        folder = self._checkpoint_dir(job_id)
        if self.fs.exists(folder):
            self.fs.rm(folder, recursive=True)

    def discard_checkpoint(self, job_id: str) -> bool:
        """Drop a finished job's checkpoint; a failure is logged, never raised (the job is
        done; :meth:`sweep_checkpoints` removes what is left). Whether it is gone."""
        try:
            self.drop_checkpoint(job_id)
        except (OSError, InvalidJob) as e:
            log.warning("could not drop the checkpoint of job %s (the sweep will): %s", job_id, e)
            return False
        return True

    def sweep_checkpoints(
        self, max_age_s: float, now: float | None = None, ids: list[str] | None = None
    ) -> list[str]:
        """Remove checkpoints not saved for ``max_age_s`` (jobs lost for good), among ``ids``
        (default: every one); their ids.

        A live job saves every epoch, so choose ``max_age_s`` well above the longest epoch.
        """
        now = time.time() if now is None else now
        removed = []
        for job_id in self.checkpoint_ids() if ids is None else ids:
            saved = self._saved_at(job_id)
            if saved is not None and now - saved > max_age_s and self.discard_checkpoint(job_id):
                removed.append(job_id)
        return removed

    def checkpoint_ids(self) -> list[str]:
        """The ids every checkpoint in the store is kept under."""
        folder = f"{self.root}/checkpoints"
        try:
            entries = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        names = (posixpath.basename(str(e).rstrip("/")) for e in entries)
        return [n for n in names if JOB_ID_RE.match(n)]

    def _saved_at(self, job_id: str) -> float | None:
        """When the checkpoint was last saved (its metadata, else its files' time)."""
        folder = self._checkpoint_dir(job_id)
        try:
            meta = json.loads(self._read(f"{folder}/{CHECKPOINT_META}"))
            return float(meta["saved_at"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            return float(self.fs.modified(folder).timestamp())
        except (OSError, NotImplementedError, AttributeError):
            return None

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
