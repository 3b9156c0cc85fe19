"""A case judged from its choices' logits (BoolQ's yes/no) that flipped with the same generated tokens:
compare says which choice each side picked, and by how much."""

from __future__ import annotations

from pathlib import Path

import pytest

from logitsdump.compare import CompareOptions, run_compare
from logitsdump.compare.choices import Choice, choice_note, read_choices
from logitsdump.demo import examples
from logitsdump.store import read_manifest

from helpers import replayed_dump


def test_the_note_names_both_picks_and_whether_golden_was_sure() -> None:
    golden = (Choice("yes", 9, 1.30), Choice("no", 17, 1.25))
    near = choice_note(golden, (Choice("yes", 9, 1.20), Choice("no", 17, 1.22)), noise_margin=1.0)
    assert "golden picks 'yes' by 0.05 logits, the test 'no' by 0.02" in near
    assert "'yes' #9, 'no' #17" in near and near.endswith("a near-tie of the choices")
    sure = choice_note((Choice("yes", 9, 3.0), Choice("no", 17, 1.0)), (Choice("yes", 9, 1.0), Choice("no", 17, 1.5)),
                       noise_margin=1.0)
    assert "beyond the noise margin" in sure
    assert choice_note(golden, golden, 1.0) == ""  # the same pick: nothing to explain
    assert choice_note(golden, (Choice("A", 3, 1.0), Choice("B", 4, 2.0)), 1.0) == ""  # other choices: not comparable


@pytest.mark.slow
def test_a_boolq_flip_with_the_same_tokens_says_why(tmp_path: Path) -> None:
    """Case 21 of the shipped BoolQ flips pass -> fail between fp32 and bf16 on the tiny model while both
    generate the same token: a consistent case whose reason names the choices."""
    golden = replayed_dump(tmp_path, "fp32", "boolq", None, cases=(2, 11, 21))
    mine = replayed_dump(tmp_path, "bf16", "boolq", golden, cases=(2, 11, 21))
    (record,) = [r for r in read_manifest(golden) if r.index == 21]
    assert [c.label for c in read_choices(record)] == ["yes", "no"]
    summary = run_compare(CompareOptions(golden, mine, tmp_path / "cmp", tolerances_file=examples.TINY_FLOOR))
    (case,) = [c for c in summary.cases if c.key == 21]
    assert case.verdict == "consistent" and not case.changes
    assert "judges this case from the logits of its choices at the first step ('yes' #" in case.reason
    assert "golden picks 'yes'" in case.reason and "the test 'no'" in case.reason
