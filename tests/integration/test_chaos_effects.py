"""The chaos report's side-effect and hostile-spec checks, each at a small size.

A job run twice must leave one set of effects (one version, one alias move, an answer that
agrees with the alias), concurrent promotions must all be in the history, and a batch of
hostile specs must fail clearly without hurting the worker. Each check starts its own
redis-server (and workers); the two that freeze or kill workers run under ``make chaos``
(TORCHFLEET_CHAOS=1). Each takes seconds: ``run_effects`` and ``run_hostile`` are what the
chaos report runs, at the same size.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.client import Client
from tests.integration.chaos_harness import CHAOS_ONLY
from workers.bench.chaos_effects import WRITERS, run_frozen, run_killed, run_promotions
from workers.bench.chaos_hostile import run_hostile
from workers.bench.chaosfleet import VISIBILITY_TIMEOUT_S

pytestmark = pytest.mark.integration
chaos = CHAOS_ONLY
RSS_GROWTH_MB = 256  # with the pixel limit off, the batch grew the worker by 712 MB


def test_concurrent_promotions_are_all_in_the_history(tmp_path: Path) -> None:
    report = run_promotions(tmp_path, Client)
    assert report["errors"] == [], report
    assert report["history_entries"] == WRITERS - 1, report
    assert report["moves_recorded"] == WRITERS, report
    assert (report["duplicates_with_side_effects"], report["lost"]) == (0, 0), report


@chaos
def test_a_worker_frozen_past_the_visibility_timeout_writes_nothing_when_it_wakes(
    tmp_path: Path,
) -> None:
    report = run_frozen(tmp_path, Client)
    assert report["status"] == "SUCCESS", report
    assert report["frozen_s"] > VISIBILITY_TIMEOUT_S, report
    assert report["stale_outcome"] == "stale", report  # it woke, met the fence, stopped
    assert (report["executed"], report["completed"]) == (2, 1), report
    assert (report["versions"], report["alias_version"], report["result_version"]) == (
        [1],
        1,
        1,
    ), report
    assert report["alias_moves"] == 1 and report["agree"], report
    assert (report["duplicates_with_side_effects"], report["lost"]) == (0, 0), report


@chaos
def test_a_worker_killed_between_registration_and_its_answer_leaves_one_version(
    tmp_path: Path,
) -> None:
    report = run_killed(tmp_path, Client)
    # killed exactly there: registered and promoted, not answered
    assert report["at_stop"] == {"versions": [1], "alias_version": 1, "answered": False}, report
    assert report["status"] == "SUCCESS", report
    assert (report["executed"], report["completed"]) == (2, 1), report
    assert (report["versions"], report["alias_moves"], report["agree"]) == ([1], 1, True), report
    assert (report["duplicates_with_side_effects"], report["lost"]) == (0, 0), report


def test_a_hostile_spec_batch_fails_clearly_and_the_worker_serves_on(tmp_path: Path) -> None:
    report = run_hostile(tmp_path, Client)
    unclear = [c for c in report["per_case"] if not c["clear"]]
    assert unclear == [], unclear
    assert report["clear_failures"] == report["cases"], report
    assert report["retried"] == 0 and report["listed_a_directory"] == 0, report
    assert report["existence_revealed"] is False, report
    assert report["served_after"] is True, report
    assert report["rss_growth_mb"] < RSS_GROWTH_MB, report
