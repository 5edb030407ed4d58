"""What an alias points to now, measured beside a compress job's variants.

A compress job that promotes (or a pipeline's compress stage) rebuilds the alias's current
target and runs it through the same evaluation data and the same latency grid as its own
variants, so that :func:`shared.promotion.promotion_verdict` compares like with like, and
:func:`promote` moves the alias only from the target it was compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import InvalidJob, ModelNotFound
from shared.jobs import CompressJob, VariantReport
from shared.promotion import promotion_verdict
from shared.registry import Resolved
from workers.compression.steps import ModelState, is_quantized
from workers.compression.variants import best
from workers.context import JobContext
from workers.modelio import build_module

INCUMBENT = "__incumbent__"  # its row's name inside the job, never registered


@dataclass(frozen=True)
class Incumbent:
    resolved: Resolved
    state: ModelState


def load_incumbent(
    job: CompressJob, source: Resolved, ctx: JobContext, expected_shape: list[int]
) -> Incumbent | None:
    """The target of the alias the job promotes to (or compares with), rebuilt; None when
    the alias is unset. Served backends other than eager are compared through ONNX Runtime."""
    alias = job.promote or job.compare_alias
    if alias is None:
        return None
    try:
        current = ctx.registry.resolve(f"{source.name}@{alias}")
    except ModelNotFound:
        return None
    tensors, manifest = ctx.store.get_model(current.record.digest)
    if list(manifest.input_shape) != list(expected_shape):
        if job.force_promote:
            return None  # nothing to compare on this data; forced moves need no comparison
        raise InvalidJob(
            f"{source.name}@{alias} points to {current.ref}, which takes inputs of shape "
            f"{manifest.input_shape}, not {list(expected_shape)}: it cannot be compared on "
            "this data; set force_promote, or move the alias by hand"
        )
    module = build_module(manifest, tensors)
    if not is_quantized(module):
        module = module.to(ctx.device)
    runner = None
    if manifest.backend == "onnx":
        from workers.backends import load_stored_backend

        runner = load_stored_backend(ctx.store, current.record.digest)
    state = ModelState(module=module, manifest=manifest, runner=runner, backend=manifest.backend)
    return Incumbent(current, state)


def named(report: VariantReport, incumbent: Incumbent) -> VariantReport:
    """The incumbent's row, named by its reference instead of the placeholder."""
    report.variant = incumbent.resolved.ref
    report.model_digest = incumbent.resolved.record.digest
    return report


def promote(
    job: CompressJob,
    reports: list[VariantReport],
    source: Resolved,
    ctx: JobContext,
    incumbent: VariantReport | None = None,
    held: Incumbent | None = None,
) -> tuple[str | None, str | None]:
    """Move ``job.promote`` to the best passing variant unless it is worse than the alias's
    current target (compare-and-set on that target); the new target and why."""
    if job.promote is None:
        return None, None
    chosen = best(reports)
    if chosen is None:
        return None, f"no variant passed the gates; {job.promote} not moved"
    verdict = promotion_verdict(
        chosen, incumbent, alias=job.promote, force=job.force_promote,
        incumbent_ref=held.resolved.ref if held else None,
    )  # fmt: skip
    if not verdict.promote:
        return None, verdict.reason
    expected = (held.resolved.version, held.resolved.variant) if held else None
    ctx.registry.set_alias(
        source.name, job.promote, source.version, chosen.variant, expected=expected
    )
    return f"{source.name}:{source.version}:{chosen.variant}", verdict.reason
