"""Training jobs: ``execute(job, ctx)`` trains, checkpoints every epoch, registers the best epoch.

The pieces (loaders, optimizers, schedules, losses, initialisation, the epoch loop, the run
state) live in ``workers.train``; this module wires them to a :class:`JobContext`: the
artifact store for checkpoints and weights, the registry for versions and aliases, the
progress callback.

A job that finds a checkpoint under its id (a redelivery after its worker died) resumes
after the last finished epoch.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import redis
import torch

from shared.errors import BrokerUnavailable, ModelNotFound, ResourceExhausted
from shared.jobs import Scalar, TrainJob, TrainResult
from shared.manifest import Manifest
from shared.registry import BASE_VARIANT, VariantRecord
from workers.context import JobContext
from workers.faultpoints import REGISTERED, stop_point
from workers.modelio import count_parameters
from workers.train.checkpoint import (
    optimizer_from_flat,
    optimizer_to_flat,
    prefixed,
    unprefixed,
)
from workers.train.data import Loader, build_loaders, check_batch_size
from workers.train.loop import (
    EarlyStopping,
    ProgressReporter,
    TrainParts,
)
from workers.train.run import (
    RunState,
    build_model,
    build_parts,
    reseed_epoch,
    run_epoch,
    seed_everything,
)
from workers.zoo.confine import DataLimits
from workers.zoo.datasets import DatasetBundle, load_dataset

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
MODEL_PREFIX = "model."
BEST_PREFIX = "best."


# ------------------------------------------------------------------ checkpoints
def job_digest(job: TrainJob) -> str:
    """Fingerprint of the spec, so a checkpoint is only resumed by the job that wrote it."""
    return hashlib.sha256(job.model_dump_json(exclude={"aliases"}).encode()).hexdigest()


def save_checkpoint(ctx: JobContext, job: TrainJob, parts: TrainParts, run: RunState) -> None:
    """Model, best weights and optimizer state as tensors; the rest as JSON."""
    optim_tensors, optim_meta = optimizer_to_flat(parts.optimizer)
    tensors = {
        **prefixed(parts.model.state_dict(), MODEL_PREFIX),
        **prefixed(run.best_weights, BEST_PREFIX),
        **optim_tensors,
    }
    meta = {
        "format": CHECKPOINT_FORMAT,
        "job_digest": job_digest(job),
        "epoch": run.epoch,
        "seed": job.seed,
        "optimizer": optim_meta,
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        **run.meta(),
    }
    ctx.store.put_checkpoint(ctx.job_id, tensors, meta)


def resume(ctx: JobContext, job: TrainJob, parts: TrainParts, run: RunState) -> int | None:
    """Load the job's checkpoint if there is one; returns the epochs it had finished."""
    found = ctx.store.get_checkpoint(ctx.job_id)
    if found is None:
        return None
    tensors, meta = found
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("job_digest") != job_digest(job):
        log.warning("job %s: ignoring a checkpoint written for another spec", ctx.job_id)
        return None
    parts.model.load_state_dict(unprefixed(tensors, MODEL_PREFIX))
    optimizer_from_flat(parts.optimizer, tensors, meta["optimizer"])
    parts.scheduler.load_state_dict(meta["scheduler"])
    if meta["scaler"]:
        parts.scaler.load_state_dict(meta["scaler"])
    run.restore(meta, unprefixed(tensors, BEST_PREFIX))
    log.info("job %s: resuming after epoch %d", ctx.job_id, run.epoch)
    return run.epoch


def fit(
    job: TrainJob,
    ctx: JobContext,
    parts: TrainParts,
    run: RunState,
    loaders: tuple[Loader, Loader],
    shuffle: torch.Generator,
) -> None:
    """Train the epochs the run has not finished yet, checkpointing and reporting after each."""
    train, val = loaders
    reporter = ProgressReporter(
        ctx.progress, epochs=job.epochs, steps=len(train), first_epoch=run.epoch + 1
    )
    try:
        for epoch in range(run.epoch + 1, job.epochs + 1):
            if run.stopped_early:
                break
            reseed_epoch(job.seed, epoch, shuffle)
            run.add(run_epoch(parts, train, val, epoch, reporter), parts.model)
            save_checkpoint(ctx, job, parts, run)
            reporter.epoch_end(run.history[-1])
    except torch.OutOfMemoryError as e:
        raise ResourceExhausted(
            f"out of memory on {ctx.device} at batch size {job.batch_size}: {e}"
        ) from e


def execute(job: TrainJob, ctx: JobContext) -> TrainResult:
    """Train ``job`` on ``ctx.device``, resuming from a checkpoint, and register the best epoch.

    Raises :class:`InputError` subclasses for jobs that cannot work (unknown names, missing
    data, a batch larger than the data, an architecture that does not fit, a diverging loss)
    and :class:`ResourceExhausted` when the device runs out of memory (the job is retried and
    resumes from its last checkpoint). Nothing is registered unless training finished.
    """
    started = time.perf_counter()
    seed_everything(job.seed)
    bundle = load_dataset(job.dataset, DataLimits.from_settings(ctx.settings))
    check_batch_size(job.batch_size, bundle)
    model, arch_kwargs = build_model(job, bundle)
    model.to(ctx.device)
    shuffle = torch.Generator()
    train, val = build_loaders(bundle, job.batch_size, ctx.device, shuffle)
    parts = build_parts(job, model, bundle.num_classes, len(train), ctx.device)
    run = RunState(stopper=EarlyStopping.from_spec(job.early_stopping))
    resumed_from = resume(ctx, job, parts, run)
    fit(job, ctx, parts, run, (train, val), shuffle)
    digest, size_bytes = register(job, ctx, bundle, arch_kwargs, parts, run, resumed_from)
    stop_point(REGISTERED, ctx.settings)  # tests only: a worker killed right here
    return TrainResult(
        job_id=ctx.job_id,
        model=job.model_name,
        version=run.version or 0,
        model_digest=digest,
        arch=job.arch,
        history=run.history,
        best_epoch=run.best_epoch,
        best_val_accuracy=run.best_val_accuracy,
        stopped_early=run.stopped_early,
        resumed_from_epoch=resumed_from,
        parameters=count_parameters(model),
        size_bytes=size_bytes,
        seconds=time.perf_counter() - started,
        worker=ctx.worker,
        device=str(ctx.device),
    )


# ------------------------------------------------------------------ registration
def best_metrics(run: RunState, parameters: int) -> dict[str, Any]:
    """The metrics registered with the model: those of its best epoch."""
    best = run.history[run.best_epoch - 1]
    return {
        "val_accuracy": best.val_accuracy,
        "val_loss": best.val_loss,
        "train_loss": best.train_loss,
        "train_accuracy": best.train_accuracy,
        "best_epoch": run.best_epoch,
        "epochs_run": run.epoch,
        "stopped_early": run.stopped_early,
        "parameters": parameters,
    }


def lineage(job: TrainJob, ctx: JobContext, resumed_from: int | None) -> dict[str, Any]:
    """Where the model came from: data, hyper-parameters, job and worker."""
    hyper = job.model_dump(
        mode="json", exclude={"kind", "schema_version", "model_name", "dataset", "aliases"}
    )
    return {
        "job_id": ctx.job_id,
        "dataset": job.dataset.model_dump(mode="json"),
        "hyperparameters": hyper,
        "worker": ctx.worker,
        "device": str(ctx.device),
        "resumed_from_epoch": resumed_from,
        "torch": torch.__version__,
    }


def registered_by(ctx: JobContext, name: str, version: int | None) -> VariantRecord | None:
    """The base record of ``name:version`` if this job wrote it (a delivery killed after
    registering, before its answer was stored); None when there is none yet."""
    if version is None:
        return None
    try:
        record = ctx.registry.get(name, version, BASE_VARIANT)
    except ModelNotFound:
        return None
    return record if record.job_id == ctx.job_id else None


def register(
    job: TrainJob,
    ctx: JobContext,
    bundle: DatasetBundle,
    arch_kwargs: dict[str, Scalar],
    parts: TrainParts,
    run: RunState,
    resumed_from: int | None,
) -> tuple[str, int]:
    """Store the best weights and register them as a new version; returns digest and size.

    The version number is saved in the checkpoint before it is used, so a job redelivered
    after this point registers under the same version instead of a second one.
    """
    metrics = best_metrics(run, count_parameters(parts.model))
    manifest = Manifest(
        arch=job.arch,
        arch_kwargs=dict(arch_kwargs),
        input_shape=list(bundle.input_shape),
        num_classes=bundle.num_classes,
        class_names=bundle.class_names,
        preprocessing=bundle.preprocessing,
        metrics=metrics,
        lineage={**lineage(job, ctx, resumed_from), "dataset_layout": bundle.layout},
    )
    own = registered_by(ctx, job.model_name, run.version)
    if own is not None:  # a redelivery after this job registered: keep its record as it is
        stored = ctx.store.get_manifest(own.digest)
    else:
        stored = ctx.store.put_model(run.best_weights, manifest)
    record = VariantRecord(
        digest=stored.sha256, arch=job.arch, method="train", metrics=metrics, job_id=ctx.job_id
    )
    try:
        if run.version is None:
            run.version = ctx.registry.new_version(job.model_name)
            save_checkpoint(ctx, job, parts, run)
        if own is None:
            ctx.registry.register(job.model_name, run.version, BASE_VARIANT, record)
        for alias in job.aliases:
            ctx.registry.set_alias(job.model_name, alias, run.version)
    except redis.RedisError as e:
        raise BrokerUnavailable(
            f"could not register {job.model_name} in Redis ({e}); the job is retried and "
            "resumes from its checkpoint"
        ) from e
    return stored.sha256, stored.size_bytes
