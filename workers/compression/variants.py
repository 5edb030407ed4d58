"""Variant names and gates: which variants a compress job emits, what they are called, and
which one passes and is promoted. Pure functions over the job's models.

Variant rule: steps run in order on one running model. A step with ``variant`` set emits
the model as it stands after that step under that name; the last step always emits one,
named after the methods applied (for example ``pruned-ft-int8``) unless it names itself.
"""

from __future__ import annotations

from shared.jobs import CompressJob, CompressStep, VariantReport
from shared.registry import BASE_VARIANT
from workers.compression import METHODS

MAX_NAME = 64


def default_name(methods: list[str], source_variant: str = BASE_VARIANT) -> str:
    """``pruned-ft-int8`` for prune_structured, finetune, quantize_static; prefixed with the
    source's variant when the source is itself a variant (``slim-int8``)."""
    tags = [METHODS.tag(m) for m in methods]
    if source_variant != BASE_VARIANT:
        tags.insert(0, source_variant)
    return "-".join(tags)[:MAX_NAME].strip("-_")


def planned_variants(
    steps: list[CompressStep], source_variant: str = BASE_VARIANT
) -> list[tuple[int, str]]:
    """(index of the step after which it is emitted, name) for every variant the job emits."""
    planned: list[tuple[int, str]] = []
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if step.variant or last:
            name = step.variant or default_name([s.method for s in steps[: i + 1]], source_variant)
            if any(name == other for _, other in planned):
                name = f"{name}-{i + 1}"
            planned.append((i, name))
    return planned


def gate(report: VariantReport, job: CompressJob) -> list[str]:
    """The reasons ``report`` fails the job's gates (empty when it passes)."""
    reasons = []
    drop = -report.accuracy_delta
    if job.gates.max_accuracy_drop is not None and drop > job.gates.max_accuracy_drop:
        reasons.append(f"accuracy drop {drop:.2f} pt > {job.gates.max_accuracy_drop} pt")
    for g in job.gates.speedup_gates():
        measured = speedup_at(report, g.batch)
        if measured < g.ratio:
            reasons.append(f"speed-up at batch {g.batch} {measured:.2f}x < {g.ratio}x")
    return reasons


def speedup_at(report: VariantReport, batch: int) -> float:
    """The variant's p50 speed-up over the source at batch size 1 or 32."""
    return report.speedup_b1 if batch == 1 else report.speedup


def flags(report: VariantReport) -> list[str]:
    """Warnings a passing variant still deserves: slower than the source at batch 1."""
    if report.speedup_b1 < 1:
        return [
            f"slower than the source at batch 1 ({report.speedup_b1:.2f}x): single requests "
            "get slower unless the worker batches them; gate with "
            "min_speedup {batch: 1, ratio: ...} to refuse it"
        ]
    return []


def best(reports: list[VariantReport]) -> VariantReport | None:
    """The passing variant to promote: fastest at batch 32, then most accurate, then smallest."""
    passing = [r for r in reports if r.passed]
    if not passing:
        return None
    return max(passing, key=lambda r: (r.speedup, r.accuracy, -r.size_bytes))
