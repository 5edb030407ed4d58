"""The model registry in Redis: name -> versions -> variants, plus aliases.

One hash per model, ``torchfleet:model:{name}``, with fields

* ``next_version``: the last version number handed out;
* ``job:{job_id}``: the version reserved for a training job (one job, one version);
* ``variant:{version}:{variant}``: a JSON :class:`VariantRecord`;
* ``alias:{alias}``: a JSON :class:`AliasRecord` (target plus history, for rollback).

The set ``torchfleet:models`` lists the names.

Every write is one optimistic transaction (WATCH, read, check, MULTI/EXEC, retried when a
watched key changed), so concurrent writers never lose each other's work: a variant name is
taken once per version (a second job gets :class:`VariantExists`), and each alias move adds
exactly one history entry. A job writes through :meth:`ModelRegistry.for_job`, which adds a
fence: the write is refused when the job was cancelled (:class:`JobCancelled`) or when a
newer delivery of the same job has started (:class:`StaleDelivery`), checked in the same
transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, cast

import redis
from redis.client import Pipeline

from shared.errors import (
    AliasMoved,
    InvalidJob,
    JobCancelled,
    ModelNotFound,
    StaleDelivery,
    VariantExists,
)
from shared.jobs import ModelRef
from shared.names import KEY_MODELS, cancel_key, fence_key, model_key
from shared.registry_records import (
    BASE_VARIANT,
    AliasRecord,
    Resolved,
    Target,
    VariantRecord,
    decoded,
    reservation_field,
    text,
    variant_field,
)

__all__ = [
    "BASE_VARIANT",
    "AliasRecord",
    "JobRegistry",
    "ModelRegistry",
    "Resolved",
    "VariantRecord",
]

MAX_ALIAS_HISTORY = 20
DEFAULT_FENCE_TTL_S: Final = 7 * 24 * 3600  # longer than any job runs between two deliveries

T = TypeVar("T")


class _Unchecked:
    """The default of ``set_alias(expected=...)``: move whatever the alias points to now."""


UNCHECKED: Final = _Unchecked()


class ModelRegistry:
    """Versions, variants and aliases of models, kept in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    # ------------------------------------------------------------ writes
    def new_version(self, name: str) -> int:
        """A new version number for ``name`` (never handed out twice)."""
        version = int(self.client.hincrby(model_key(name), "next_version", 1))
        self.client.sadd(KEY_MODELS, name)
        return version

    def register(self, name: str, version: int, variant: str, record: VariantRecord) -> None:
        """Record a variant; refused with :class:`VariantExists` when another job (or no job)
        registered that name at that version. The job that owns it may write it again."""
        key, field = model_key(name), variant_field(version, variant)

        def write(pipe: Pipeline) -> None:
            raw = pipe.hget(key, field)
            if raw is not None:
                owner = VariantRecord.model_validate_json(raw).job_id
                if owner is None or owner != record.job_id:
                    raise VariantExists(
                        f"{name}:{version}:{variant} is already registered (job {owner}); "
                        "give the step another `variant` name"
                    )
            pipe.multi()
            pipe.hset(key, field, record.model_dump_json())
            pipe.sadd(KEY_MODELS, name)

        self._transaction(name, write)

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        variant: str = BASE_VARIANT,
        *,
        expected: Target | _Unchecked | None = UNCHECKED,
    ) -> AliasRecord:
        """Point ``name@alias`` at a variant, remembering where it pointed before.

        A compare-and-set: with ``expected`` (a ``(version, variant)``, or None for "no such
        alias yet") the move is refused with :class:`AliasMoved` unless the alias points
        there now. A move to where the alias already points changes nothing.
        """
        key, field = model_key(name), f"alias:{alias}"

        def move(pipe: Pipeline) -> AliasRecord:
            if not pipe.hexists(key, variant_field(version, variant)):
                raise ModelNotFound(f"model {name}:{version}:{variant} is not registered")
            raw = pipe.hget(key, field)
            old = AliasRecord.model_validate_json(raw) if raw else None
            current = old.target if old is not None else None
            if not isinstance(expected, _Unchecked) and current != expected:
                raise AliasMoved(
                    f"{name}@{alias} points to {_show(current)}, not {_show(expected)}: it "
                    "moved while this job compared against it; not moved (submit again)"
                )
            if old is not None and current == (version, variant):
                return old
            history = [*old.history, old.target][-MAX_ALIAS_HISTORY:] if old else []
            record = AliasRecord(version=version, variant=variant, history=history)
            pipe.multi()
            pipe.hset(key, field, record.model_dump_json())
            return record

        return self._transaction(name, move)

    def rollback(self, name: str, alias: str) -> AliasRecord:
        """Move an alias back to where it pointed before its last move."""
        key, field = model_key(name), f"alias:{alias}"

        def move(pipe: Pipeline) -> AliasRecord:
            raw = pipe.hget(key, field)
            if not raw:
                raise ModelNotFound(f"{name}@{alias} does not exist")
            current = AliasRecord.model_validate_json(raw)
            if not current.history:
                raise InvalidJob(f"{name}@{alias} has no earlier target to roll back to")
            version, variant = current.history[-1]
            record = AliasRecord(version=version, variant=variant, history=current.history[:-1])
            pipe.multi()
            pipe.hset(key, field, record.model_dump_json())
            return record

        return self._transaction(name, move)

    def for_job(
        self, job_id: str, *, cancel_id: str | None = None, ttl_s: int = DEFAULT_FENCE_TTL_S
    ) -> JobRegistry:
        """The registry as one delivery of ``job_id`` may write to it.

        Takes a new fencing token (INCR of ``torchfleet:fence:{job_id}``): call it once per
        delivery, before the job's work. ``cancel_id``: the job whose cancel flag fences the
        writes (a pipeline stage writes under its stage id, and is cancelled by its pipeline).
        """
        with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(fence_key(job_id))
            pipe.expire(fence_key(job_id), ttl_s)
            token, _ = pipe.execute()
        return JobRegistry(self.client, job_id=job_id, token=int(token), cancel_id=cancel_id)

    # ------------------------------------------------------------ transactions
    def _guard_keys(self) -> list[str]:
        return []

    def _guard(self, conn: redis.Redis) -> None:
        """Checks made inside every write's transaction, on watched keys (none here)."""

    def _transaction(self, name: str, body: Callable[[Pipeline], T]) -> T:
        """Run ``body`` under WATCH of the model hash (and the guard's keys) until it commits.

        ``body`` reads with the pipeline in immediate mode, raises to refuse, and queues its
        writes after ``pipe.multi()``; a watched key changed by another writer retries it.
        """

        def run(pipe: Pipeline) -> T:
            self._guard(pipe)
            return body(pipe)

        keys = [model_key(name), *self._guard_keys()]
        result = self.client.transaction(run, *keys, value_from_callable=True)  # type: ignore[arg-type]
        return cast(T, result)

    # ------------------------------------------------------------ reads
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
        fields = decoded(parsed.name, raw)
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

    def names(self) -> list[str]:
        return sorted(text(n) for n in self.client.smembers(KEY_MODELS))

    def describe(self, name: str) -> dict[str, Any]:
        """Every version, variant and alias of one model, as plain JSON."""
        fields = decoded(name, self.client.hgetall(model_key(name)))
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


def _show(target: Target | _Unchecked | None) -> str:
    if target is None:
        return "nothing"
    if isinstance(target, _Unchecked):
        return "anything"
    return f"{target[0]}:{target[1]}"


class JobRegistry(ModelRegistry):
    """The registry seen by one delivery of one job: fenced, cancel-checked, idempotent.

    * :meth:`new_version` reserves the version for the job (``job:{id}`` in the model hash):
      a redelivery asking again gets the same number, so one job registers one version;
    * every write first checks, inside its transaction, that the job is not cancelled and
      that no newer delivery took a higher token; a refused write raises
      :class:`JobCancelled` or :class:`StaleDelivery` and changes nothing;
    * variants it registers carry its job id, so only this job may write them again.
    """

    def __init__(
        self, client: redis.Redis, *, job_id: str, token: int, cancel_id: str | None = None
    ) -> None:
        super().__init__(client)
        self.job_id = job_id
        self.token = token
        self.cancel_id = cancel_id or job_id

    def new_version(self, name: str) -> int:
        """The version reserved for this job, reserved now if it has none yet."""
        key, field = model_key(name), reservation_field(self.job_id)

        def reserve(pipe: Pipeline) -> int:
            reserved = pipe.hget(key, field)
            if reserved is not None:
                return int(reserved)
            version = int(pipe.hget(key, "next_version") or 0) + 1
            pipe.multi()
            pipe.hset(key, mapping={"next_version": version, field: version})
            pipe.sadd(KEY_MODELS, name)
            return version

        return self._transaction(name, reserve)

    def register(self, name: str, version: int, variant: str, record: VariantRecord) -> None:
        super().register(name, version, variant, record.model_copy(update={"job_id": self.job_id}))

    def check(self) -> None:
        """Raise now if a write would be refused (cancelled, or a newer delivery started)."""
        self._guard(self.client)

    def _guard_keys(self) -> list[str]:
        return [fence_key(self.job_id), cancel_key(self.cancel_id)]

    def _guard(self, conn: redis.Redis) -> None:
        if conn.exists(cancel_key(self.cancel_id)):
            raise JobCancelled(f"job {self.cancel_id} was cancelled; nothing is registered")
        current = int(conn.get(fence_key(self.job_id)) or 0)
        if current > self.token:
            raise StaleDelivery(
                f"job {self.job_id}: delivery {self.token} was overtaken by delivery {current} "
                "(this worker stalled past the visibility timeout); its write is refused"
            )
