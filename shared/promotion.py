"""Whether a candidate may take an alias from what it points to now (pure, torch-free).

Both rows come from the same compress run: the incumbent (the alias's current target) is
evaluated on the same evaluation data and timed in the same latency grid as the candidate,
so the comparison is like for like. A candidate is worse when it is less accurate, or
slower at batch 32 beyond timing noise; a worse candidate is refused unless forced, and the
verdict says why either way.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import InvalidJob
from shared.jobs import PipelineJob, PipelineResult, VariantReport

LATENCY_NOISE = 0.10  # a candidate up to 10 % slower than the incumbent is not called slower


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str


def worse_by(candidate: VariantReport, incumbent: VariantReport) -> list[str]:
    """How ``candidate`` is worse than ``incumbent`` (empty when it is not)."""
    reasons = []
    if candidate.accuracy < incumbent.accuracy:
        reasons.append(f"accuracy {candidate.accuracy:.2f}% < {incumbent.accuracy:.2f}%")
    if candidate.latency_b32_p50_ms > incumbent.latency_b32_p50_ms * (1 + LATENCY_NOISE):
        reasons.append(
            f"batch-32 p50 {candidate.latency_b32_p50_ms:.3f} ms > "
            f"{incumbent.latency_b32_p50_ms:.3f} ms (+{LATENCY_NOISE:.0%} noise allowed)"
        )
    return reasons


def promotion_verdict(
    candidate: VariantReport,
    incumbent: VariantReport | None,
    *,
    alias: str,
    incumbent_ref: str | None = None,
    force: bool = False,
) -> Verdict:
    """May ``candidate`` take ``alias`` from ``incumbent`` (None: the alias is unset)?"""
    if incumbent is None:
        return Verdict(True, f"{alias} pointed nowhere yet")
    where = f"{alias} (now {incumbent_ref or incumbent.variant}) on the same data"
    reasons = worse_by(candidate, incumbent)
    if not reasons:
        return Verdict(True, f"{candidate.variant} is not worse than {where}")
    because = "; ".join(reasons)
    if force:
        return Verdict(True, f"forced: {candidate.variant} is worse than {where}: {because}")
    return Verdict(
        False,
        f"{candidate.variant} not promoted: worse than {where}: {because}; "
        "set force_promote to move it anyway",
    )


def stage_verdict(job: PipelineJob, report: PipelineResult, chosen: str) -> Verdict:
    """The chosen variant against the alias's current target, both measured by the compress
    stage on the same data."""
    compress = report.compress
    row = next((v for v in compress.variants if v.variant == chosen), None) if compress else None
    if compress is None or row is None:
        raise InvalidJob(f"the compress stage measured no variant {chosen!r}")
    return promotion_verdict(
        row, compress.incumbent, alias=job.promote, force=job.force_promote,
        incumbent_ref=compress.incumbent.variant if compress.incumbent else None,
    )  # fmt: skip
