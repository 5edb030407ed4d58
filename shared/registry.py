"""The model registry in Redis: name -> versions -> variants, plus aliases.

One hash per model, ``torchfleet:model:{name}``, with fields

* ``next_version``: the last version number handed out (HINCRBY);
* ``variant:{version}:{variant}``: a JSON :class:`VariantRecord`;
* ``alias:{alias}``: a JSON :class:`AliasRecord` (target plus history, for rollback).

The set ``torchfleet:models`` lists the names.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis
from pydantic import BaseModel, Field

from shared.errors import InvalidJob, ModelNotFound
from shared.jobs import ModelRef
from shared.names import KEY_MODELS, model_key

BASE_VARIANT = "base"
MAX_ALIAS_HISTORY = 20


class VariantRecord(BaseModel):
    digest: str
    arch: str
    method: str = "train"
    metrics: dict[str, Any] = Field(default_factory=dict)
    parent: str | None = None
    job_id: str | None = None
    created_at: float = Field(default_factory=time.time)


class AliasRecord(BaseModel):
    version: int
    variant: str = BASE_VARIANT
    history: list[tuple[int, str]] = Field(default_factory=list)


class Resolved(BaseModel):
    """A reference resolved to one stored artifact."""

    name: str
    version: int
    variant: str
    record: VariantRecord

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}:{self.variant}"


class ModelRegistry:
    """Versions, variants and aliases of models, kept in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def new_version(self, name: str) -> int:
        version = int(self.client.hincrby(model_key(name), "next_version", 1))
        self.client.sadd(KEY_MODELS, name)
        return version

    def register(self, name: str, version: int, variant: str, record: VariantRecord) -> None:
        self.client.hset(model_key(name), f"variant:{version}:{variant}", record.model_dump_json())
        self.client.sadd(KEY_MODELS, name)

    def set_alias(self, name: str, alias: str, version: int, variant: str = BASE_VARIANT) -> None:
        """Point ``name@alias`` at a variant, remembering where it pointed before."""
        self.get(name, version, variant)
        key, field = model_key(name), f"alias:{alias}"
        raw = self.client.hget(key, field)
        history: list[tuple[int, str]] = []
        if raw:
            old = AliasRecord.model_validate_json(raw)
            history = [*old.history, (old.version, old.variant)][-MAX_ALIAS_HISTORY:]
        record = AliasRecord(version=version, variant=variant, history=history)
        self.client.hset(key, field, record.model_dump_json())

    def rollback(self, name: str, alias: str) -> AliasRecord:
        """Move an alias back to where it pointed before its last move."""
        key, field = model_key(name), f"alias:{alias}"
        raw = self.client.hget(key, field)
        if not raw:
            raise ModelNotFound(f"{name}@{alias} does not exist")
        current = AliasRecord.model_validate_json(raw)
        if not current.history:
            raise InvalidJob(f"{name}@{alias} has no earlier target to roll back to")
        version, variant = current.history[-1]
        record = AliasRecord(version=version, variant=variant, history=current.history[:-1])
        self.client.hset(key, field, record.model_dump_json())
        return record

    def get(self, name: str, version: int, variant: str = BASE_VARIANT) -> VariantRecord:
        raw = self.client.hget(model_key(name), f"variant:{version}:{variant}")
        if raw is None:
            raise ModelNotFound(
                f"model {name}:{version}:{variant} is not registered; "
                "`torchfleet models list` shows what is"
            )
        return VariantRecord.model_validate_json(raw)

    def resolve(self, ref: str | ModelRef, raw: Mapping[Any, Any] | None = None) -> Resolved:
        """Resolve ``name``, ``name:version``, ``name@alias``, each with an optional variant.

        A bare name means its ``production`` alias if set, else the latest version. ``raw``:
        the model's registry hash if the caller read it already (``HGETALL``, in a pipeline).
        """
        parsed = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if raw is None:
            raw = self.client.hgetall(model_key(parsed.name))
        fields = _decoded(parsed.name, raw)
        version, variant = self._pick(parsed, fields)
        record = fields.get(f"variant:{version}:{variant}")
        if record is None and not any(f.startswith(f"variant:{version}:") for f in fields):
            versions = sorted({int(f.split(":")[1]) for f in fields if f.startswith("variant:")})
            raise ModelNotFound(
                f"model {parsed.name} has no version {version}; its versions: "
                f"{', '.join(map(str, versions)) or 'none'}"
            )
        if record is None:
            raise ModelNotFound(
                f"model {parsed} has no variant {variant!r} at version {version}; "
                f"`torchfleet models show {parsed.name}` lists its variants"
            )
        return Resolved(
            name=parsed.name,
            version=version,
            variant=variant,
            record=VariantRecord.model_validate_json(record),
        )

    def _pick(self, ref: ModelRef, fields: dict[str, str]) -> tuple[int, str]:
        if ref.alias is not None or ref.version is None:
            alias = ref.alias or "production"
            raw = fields.get(f"alias:{alias}")
            if raw is not None:
                target = AliasRecord.model_validate_json(raw)
                return target.version, ref.variant or target.variant
            if ref.alias is not None:
                raise ModelNotFound(f"model {ref.name} has no alias {ref.alias!r}")
            return self._latest(ref.name, fields), ref.variant or BASE_VARIANT
        return ref.version, ref.variant or BASE_VARIANT

    @staticmethod
    def _latest(name: str, fields: dict[str, str]) -> int:
        versions = [int(f.split(":")[1]) for f in fields if f.startswith("variant:")]
        if not versions:
            raise ModelNotFound(f"model {name} has no registered version")
        return max(versions)

    def _fields(self, name: str) -> dict[str, str]:
        return _decoded(name, self.client.hgetall(model_key(name)))

    def names(self) -> list[str]:
        return sorted(_text(n) for n in self.client.smembers(KEY_MODELS))

    def describe(self, name: str) -> dict[str, Any]:
        """Every version, variant and alias of one model, as plain JSON."""
        fields = self._fields(name)
        variants: dict[str, dict[str, Any]] = {}
        aliases: dict[str, Any] = {}
        for field, raw in sorted(fields.items()):
            if field.startswith("variant:"):
                _, version, variant = field.split(":", 2)
                variants.setdefault(version, {})[variant] = VariantRecord.model_validate_json(
                    raw
                ).model_dump(mode="json")
            elif field.startswith("alias:"):
                aliases[field.removeprefix("alias:")] = AliasRecord.model_validate_json(
                    raw
                ).model_dump(mode="json")
        return {"name": name, "versions": variants, "aliases": aliases}


def _decoded(name: str, raw: Mapping[Any, Any]) -> dict[str, str]:
    """A model's registry hash as text, or :class:`ModelNotFound` if there is none."""
    if not raw:
        raise ModelNotFound(
            f"model {name!r} is not registered; `torchfleet models list` shows what is"
        )
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
