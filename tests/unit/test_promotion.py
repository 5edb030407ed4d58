"""The promotion verdict: a candidate against what the alias points to now."""

from __future__ import annotations

from shared.jobs import VariantReport
from shared.promotion import promotion_verdict


def row(name: str, accuracy: float, b32_ms: float) -> VariantReport:
    return VariantReport(
        variant=name, method="x", size_bytes=1, parameters=1, accuracy=accuracy,
        latency_b1_p50_ms=1.0, latency_b1_p95_ms=1.0,
        latency_b32_p50_ms=b32_ms, latency_b32_p95_ms=b32_ms,
    )  # fmt: skip


def test_the_issue_case_is_refused_and_says_why() -> None:
    """static int8 (95.0 %, faster) holds production; a pruned variant (93.5 %, slower) is
    refused."""
    verdict = promotion_verdict(
        row("pruned", 93.5, 4.5), row("int8", 95.0, 4.0), alias="production",
        incumbent_ref="m:1:int8",
    )  # fmt: skip
    assert not verdict.promote
    assert "accuracy 93.50% < 95.00%" in verdict.reason
    assert "batch-32 p50 4.500 ms > 4.000 ms" in verdict.reason
    assert "m:1:int8" in verdict.reason and "force_promote" in verdict.reason


def test_force_moves_it_and_still_says_it_is_worse() -> None:
    verdict = promotion_verdict(
        row("pruned", 93.5, 4.0), row("int8", 95.0, 4.0), alias="production", force=True
    )
    assert verdict.promote and verdict.reason.startswith("forced") and "93.50%" in verdict.reason


def test_not_worse_is_promoted_and_timing_noise_is_not_worse() -> None:
    assert promotion_verdict(row("a", 95.0, 4.3), row("b", 95.0, 4.0), alias="p").promote
    assert not promotion_verdict(row("a", 95.0, 4.5), row("b", 95.0, 4.0), alias="p").promote
    assert promotion_verdict(row("a", 96.0, 3.0), row("b", 95.0, 4.0), alias="p").promote


def test_an_unset_alias_takes_any_candidate() -> None:
    verdict = promotion_verdict(row("a", 10.0, 99.0), None, alias="production")
    assert verdict.promote and "nowhere" in verdict.reason
