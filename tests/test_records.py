"""The compare records: one definition written by compare and read by the report, and version 1 read too.

tests/data/cases_v1_*.json are real case JSONs written by logitsdump before the records (schema
version 1: the focus step and the findings were only in the words of `reason`), from the demo's
mmlu_zero_shot free run and boolq replay (paths shortened).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from logitsdump.compare import CompareOptions
from logitsdump.compare.document import SCHEMA_VERSION, CompareDocument
from logitsdump.compare.judge import ReplayedCase, Tolerances, judge_case, judge_replay_case
from logitsdump.compare.records import CaseRecord
from logitsdump.compare.schema_v1 import upgrade_document
from logitsdump.demo import examples

DATA = Path(__file__).parent / "data"


def _v1(name: str) -> CompareDocument:
    data = json.loads((DATA / name).read_text(encoding="utf-8"))
    assert data["schema_version"] == 1
    return CompareDocument.from_dict(upgrade_document(data))


def _rejudged(case: CaseRecord, tolerances: Tolerances) -> CaseRecord:
    """The same steps judged again by today's judge, which sets the structured fields from the metrics."""
    if case.replayed:
        return judge_replay_case(case.subject, case.key, case.steps, tolerances, ReplayedCase(case.replay_mode))
    return judge_case(case.subject, case.key, case.steps, tolerances)


@pytest.mark.parametrize("name", ["cases_v1_free_run.json", "cases_v1_replay.json"])
def test_version_1_is_read_with_the_findings_and_focus_todays_judge_gives(name: str) -> None:
    document = _v1(name)
    assert document.schema_version == SCHEMA_VERSION and document.cases
    # the demo ran with what was then the default, the tiny model's floor (now shipped as examples.TINY_FLOOR),
    # and the fixed tie tolerance of free runs of that time (today's default is the floor's margin)
    tolerances = CompareOptions("golden", "test", tolerances_file=examples.TINY_FLOOR,
                                tie_tolerance=0.1).floor().tolerances
    for case in document.cases:
        again = _rejudged(case, tolerances)
        assert (case.verdict, case.reason) == (again.verdict, again.reason)
        assert case.findings == again.findings
        assert bool(case.findings) == (case.verdict not in ("identical", "consistent"))
        assert (case.focus_step, case.focus_why) == (again.focus_step, again.focus_why)
        assert case.focus_step is not None and case.focus() is not None
        # renamed margins (flip_margin, my_flip_margin); token texts are added later, from vocab.json
        assert [replace(c, golden_token_text=None, my_token_text=None) for c in case.changes] == list(again.changes)


def test_version_1_files_cover_every_focus_rule_the_demo_meets() -> None:
    whys = {case.focus_why for name in ("cases_v1_free_run.json", "cases_v1_replay.json") for case in _v1(name).cases}
    assert whys >= {"first-change", "failing-step", "surest-change", "largest-kl"}


@pytest.mark.parametrize("name", ["cases_v1_free_run.json", "cases_v1_replay.json"])
def test_a_record_survives_its_own_round_trip(name: str) -> None:
    document = _v1(name)
    written = json.loads(json.dumps(document.to_dict(), allow_nan=False))
    assert written["schema_version"] == SCHEMA_VERSION
    again = CompareDocument.from_dict(written)
    assert again.cases == document.cases
    assert again.options == document.options and again.summary == document.summary


def test_reading_is_lenient_but_never_invents_numbers() -> None:
    data = json.loads((DATA / "cases_v1_free_run.json").read_text(encoding="utf-8"))
    case = dict(data["cases"][0])
    case["worst_kl"] = "not a number"
    case["steps"] = [dict(case["steps"][0], cosine_similarity=None), *case["steps"][1:]]
    record = CaseRecord.from_dict(case)
    assert record.worst_kl is None
    assert record.steps[0].metrics is None  # one field missing: no metrics rather than made-up ones
    assert record.steps[1].metrics is not None
    assert record.steps[1].metrics.signed_dp is None  # a metric added after version 1: absent, not made up
    bad = dict(case["steps"][1], signed_dp="0.5x")
    assert CaseRecord.from_dict(dict(case, steps=[bad])).steps[0].metrics is None  # present but mistyped


@pytest.mark.parametrize("name", ["cases_v1_free_run.json", "cases_v1_replay.json"])
def test_version_1_gets_the_statistics_of_its_judged_steps(name: str) -> None:
    document = _v1(name)
    for case in document.cases:
        judged = [s.metrics.kl_divergence for s in case.steps[: case.tokens_judged] if s.metrics is not None]
        assert case.stats is not None and case.stats.kld_steps == len(judged)
        assert case.stats.kld_mean == pytest.approx(case.mean_kl, rel=1e-12)  # the judge's mean, same steps
        assert case.stats.kld_max == case.worst_kl
        assert case.stats.dp_steps == 0 and case.stats.dp_mean is None  # no signed_dp before version 2
    assert document.stats is not None
    assert document.stats.kld_steps == sum(c.stats.kld_steps for c in document.cases)
    written = document.to_dict()
    assert written["stats"] == document.stats.to_dict() and written["cases"][0]["stats"]["kld_steps"] > 0
