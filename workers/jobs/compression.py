"""The compress job: resolve the source, run the steps, measure, gate, register, promote.

Variant rule: steps run in order on one running model. A step with ``variant`` set emits
the model as it stands after that step under that name; the last step always emits one,
named after the methods applied (for example ``pruned-ft-int8``) unless it names itself.
Each variant records every method applied since the source (``steps``), and its manifest's
recipe rebuilds its skeleton from the float architecture.

Nothing is written to the registry until every step ran and every variant was measured and
passed its safetensors round trip; the source model is never modified.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from shared.errors import (
    CompressionError,
    InputError,
    InvalidJob,
    ModelNotFound,
    ResourceExhausted,
)
from shared.jobs import CompressJob, CompressResult, CompressStep, VariantReport
from shared.manifest import Manifest
from shared.registry import Resolved, VariantRecord
from workers.compression import METHODS
from workers.compression.eval_data import eval_dataset
from workers.compression.evaluation import (
    Candidate,
    Percentiles,
    accuracy,
    batch_of,
    candidate,
    count_weights,
    latency_grid,
    stored_tensors,
)
from workers.compression.incumbent import INCUMBENT, Incumbent, load_incumbent, named, promote
from workers.compression.pruning import sparsity
from workers.compression.steps import ModelState, Sample, StepEnv, is_quantized
from workers.compression.variants import flags, gate, planned_variants
from workers.context import JobContext
from workers.modelio import Tensors, build_module
from workers.zoo.confine import DataLimits
from workers.zoo.datasets import DatasetBundle, load_dataset

ROUND_TRIP_ATOL = 1e-4


@dataclass
class Emitted:
    """A variant produced by the steps, measured but not yet stored."""

    name: str
    state: ModelState
    tensors: Tensors
    size_bytes: int
    accuracy: float
    candidate: Candidate


# ------------------------------------------------------------------ the job
def execute(job: CompressJob, ctx: JobContext) -> CompressResult:
    """Run a compress job end to end; see the module docstring for the variant rule."""
    started = time.perf_counter()
    source, state = load_source(job, ctx)
    spec, origin = eval_dataset(job.eval_dataset, state.manifest, source.ref)
    bundle = load_dataset(spec, DataLimits.from_settings(ctx.settings))
    check_data(bundle, state.manifest, source)
    planned = planned_variants(job.steps, source.variant)
    check_names(planned, source, ctx)
    env = StepEnv(
        train=bundle.train,
        val=bundle.val,
        num_classes=bundle.num_classes,
        device=ctx.device,
        store=ctx.store,
    )
    baseline = candidate(state, ctx.device)
    held = load_incumbent(job, source, ctx, state.manifest.input_shape)
    emitted = run_steps(job, state, env, dict(planned), ctx)

    ctx.progress({"stage": "evaluate", "variants": len(emitted)})
    extra = [incumbent_entry(held, env)] if held is not None else []
    base_report, reports = measure(job, source, state, baseline, emitted + extra, bundle.val)
    incumbent = named(reports.pop(), held) if held is not None else None

    ctx.progress({"stage": "register", "variants": len(reports)})
    for entry, report in zip(emitted, reports, strict=True):
        if report.passed:
            register(entry, report, source, job, ctx)
    promoted, promotion = promote(job, reports, source, ctx, incumbent, held)
    return CompressResult(
        job_id=ctx.job_id,
        source=source.ref,
        version=source.version,
        baseline=base_report,
        variants=reports,
        promoted=promoted,
        incumbent=incumbent,
        promotion=promotion,
        seconds=time.perf_counter() - started,
        worker=ctx.worker,
        device=str(ctx.device),
        eval_dataset=spec,
        eval_origin=origin,
    )


def load_source(job: CompressJob, ctx: JobContext) -> tuple[Resolved, ModelState]:
    """Resolve and rebuild the source model (digest-checked) on the job's device."""
    source = ctx.registry.resolve(job.source)
    tensors, manifest = ctx.store.get_model(source.record.digest)
    module = build_module(manifest, tensors)
    if not is_quantized(module):  # int8 kernels exist on the CPU only
        module = module.to(ctx.device)
    return source, ModelState(module=module, manifest=manifest)


def measure(
    job: CompressJob,
    source: Resolved,
    state: ModelState,
    baseline: Candidate,
    emitted: list[Emitted],
    val: Dataset[Sample],
) -> tuple[VariantReport, list[VariantReport]]:
    """The source's row and every variant's, latency timed side by side, gates applied."""
    models = {"__source__": baseline, **{e.name: e.candidate for e in emitted}}
    grid = latency_grid(models, val, iters=job.latency_iters, warmup=job.warmup_iters)
    base = report_for(
        name=source.variant,
        method=source.record.method,
        state=state,
        size_bytes=state.manifest.size_bytes,
        acc=accuracy(baseline, val),
        grid=grid,
        key="__source__",
        device=baseline.device,
    )
    base.model_digest = source.record.digest
    reports = []
    for e in emitted:
        report = report_for(
            name=e.name,
            method="+".join(e.state.methods),
            state=e.state,
            size_bytes=e.size_bytes,
            acc=e.accuracy,
            grid=grid,
            key=e.name,
            device=e.candidate.device,
        )
        reports.append(compare(report, base, job))
    return base, reports


def check_data(bundle: DatasetBundle, manifest: Manifest, source: Resolved) -> None:
    if list(bundle.input_shape) != list(manifest.input_shape):
        raise InvalidJob(
            f"eval_dataset gives inputs of shape {list(bundle.input_shape)} but {source.ref} "
            f"expects {manifest.input_shape}; set eval_dataset.channels and image_size to match"
        )
    if bundle.num_classes != manifest.num_classes:
        raise InvalidJob(
            f"eval_dataset has {bundle.num_classes} classes but {source.ref} predicts "
            f"{manifest.num_classes}"
        )


def check_names(planned: list[tuple[int, str]], source: Resolved, ctx: JobContext) -> None:
    """Refuse names that would overwrite the source or another job's variant."""
    for _, name in planned:
        if name == source.variant:
            raise InvalidJob(f"variant {name!r} would overwrite the source {source.ref}")
        try:
            existing = ctx.registry.get(source.name, source.version, name)
        except ModelNotFound:
            continue
        if existing.job_id != ctx.job_id:
            raise InvalidJob(
                f"{source.name}:{source.version}:{name} already exists (job "
                f"{existing.job_id}); give the step another `variant` name"
            )


def run_steps(
    job: CompressJob,
    state: ModelState,
    env: StepEnv,
    emit_after: dict[int, str],
    ctx: JobContext,
) -> list[Emitted]:
    emitted: list[Emitted] = []
    total = len(job.steps)
    for i, step in enumerate(job.steps):
        ctx.progress({"stage": "compress", "step": i + 1, "steps": total, "method": step.method})
        state = apply(i, step, state, env)
        if i in emit_after:
            emitted.append(finish(emit_after[i], state, env, i, step.method))
    return emitted


def apply(i: int, step: CompressStep, state: ModelState, env: StepEnv) -> ModelState:
    """Run one step; every failure names the step."""
    where = f"step {i + 1} ({step.method})"
    try:
        result: ModelState = METHODS.apply(step, state, env)
    except InputError as e:
        raise type(e)(f"{where}: {e}") from e
    except torch.cuda.OutOfMemoryError as e:
        raise ResourceExhausted(f"{where}: out of GPU memory") from e
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise CompressionError(f"{where} failed: {type(e).__name__}: {e}") from e
    return result


def finish(name: str, state: ModelState, env: StepEnv, i: int, method: str) -> Emitted:
    """Measure accuracy and size, and prove the variant rebuilds from its safetensors."""
    model = candidate(state, env.device)
    tensors, size = stored_tensors(state.module, state.manifest)
    check_round_trip(state, tensors, env, f"step {i + 1} ({method})")
    return Emitted(name, state, tensors, size, accuracy(model, env.val), model)


def check_round_trip(state: ModelState, tensors: Tensors, env: StepEnv, where: str) -> None:
    try:
        rebuilt = build_module(state.manifest, tensors)
    except InputError as e:
        raise CompressionError(f"{where}: the variant cannot be rebuilt from storage: {e}") from e
    sample = batch_of(env.val, 4)
    module = copy.deepcopy(state.module).cpu().eval()
    with torch.inference_mode():
        diff = (module(sample) - rebuilt(sample)).abs().max().item()
    if diff > ROUND_TRIP_ATOL:
        raise CompressionError(
            f"{where}: the rebuilt variant differs from the compressed one by {diff:.3g}"
        )


def report_for(
    *,
    name: str,
    method: str,
    state: ModelState,
    size_bytes: int,
    acc: float,
    grid: dict[int, dict[str, Percentiles]],
    key: str,
    device: torch.device,
) -> VariantReport:
    return VariantReport(
        variant=name,
        method=method,
        size_bytes=size_bytes,
        parameters=count_weights(state.module),
        sparsity=round(sparsity(state.module), 6),
        accuracy=round(acc, 4),
        latency_b1_p50_ms=grid[1][key].p50_ms,
        latency_b1_p95_ms=grid[1][key].p95_ms,
        latency_b32_p50_ms=grid[32][key].p50_ms,
        latency_b32_p95_ms=grid[32][key].p95_ms,
        notes=list(dict.fromkeys(state.notes)),
        steps=list(state.methods),
        backend=state.backend,
        device=str(device),
        exports=list(state.exports),
    )


def compare(report: VariantReport, base: VariantReport, job: CompressJob) -> VariantReport:
    """Fill in speed-up and accuracy change against the source, then apply the gates."""
    report.speedup = round(base.latency_b32_p50_ms / report.latency_b32_p50_ms, 4)
    report.speedup_b1 = round(base.latency_b1_p50_ms / report.latency_b1_p50_ms, 4)
    report.accuracy_delta = round(report.accuracy - base.accuracy, 4)
    reasons = gate(report, job)
    report.passed = not reasons
    report.notes.extend(f"gate failed: {r}" for r in reasons)
    report.notes.extend(flags(report))
    return report


def register(
    entry: Emitted, report: VariantReport, source: Resolved, job: CompressJob, ctx: JobContext
) -> None:
    metrics = report.model_dump(
        mode="json", exclude={"variant", "model_digest", "registered", "notes", "exports"}
    )
    lineage: dict[str, Any] = {
        **entry.state.manifest.lineage,
        "parent": source.ref,
        "job_id": ctx.job_id,
        "steps": [s.model_dump(mode="json") for s in job.steps[: len(entry.state.methods)]],
        "exports": [a.model_dump(mode="json") for a in entry.state.exports],
    }
    manifest = entry.state.manifest.model_copy(
        update={
            "metrics": metrics,
            "lineage": lineage,
            "backend": entry.state.backend,
            "created_at": time.time(),
        }
    )
    stored = ctx.store.put_model(entry.tensors, manifest)
    record = VariantRecord(
        digest=stored.sha256,
        arch=stored.arch,
        method=report.method,
        metrics=metrics,
        parent=source.ref,
        job_id=ctx.job_id,
    )
    ctx.registry.register(source.name, source.version, entry.name, record)
    report.model_digest = stored.sha256
    report.size_bytes = stored.size_bytes
    report.registered = True


def incumbent_entry(held: Incumbent, env: StepEnv) -> Emitted:
    """The alias's current target as one more row of the measurement (never registered)."""
    model = candidate(held.state, env.device)
    size = held.state.manifest.size_bytes
    return Emitted(INCUMBENT, held.state, {}, size, accuracy(model, env.val), model)
