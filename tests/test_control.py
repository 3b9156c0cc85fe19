"""compare against a control arm (`compare/control.py`): paired judging, the run's ratio, and a control that does
not fit (one-line errors).

The dumps are built by hand, as the runner writes them: golden (fp32, free-running), the test side (bf16, replaying
golden's tokens) and the control (bf16, replaying golden's tokens, in `control/` beside golden, named in golden's
manifest). Each logit of a noisy side is golden's plus Gaussian noise of a given scale.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import torch

from logitsdump.cli import main
from logitsdump.compare import CompareOptions, control_arm, run_compare
from logitsdump.compare import control as ctl
from logitsdump.compare.stats import t_quantile
from logitsdump.control_dump import name_control
from logitsdump.errors import DataError
from logitsdump.report import format_summary
from logitsdump.store import CaseManifest, append_manifest, read_manifest, rewrite_manifest

V = 256
STEPS = 8


def _golden_step(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(V) * 2.0
    x[seed % V] = 9.0  # a clear top-1
    return x


def _record(subject: str, key: int, steps: list[np.ndarray], *, dtype: str, tokens: list[int],
            replay: dict | None = None, control: dict | None = None, model: str = "tiny",
            prompt: tuple[int, ...] = (1, 2, 3)) -> CaseManifest:
    extra: dict = {}
    if replay is not None:
        extra["replay"] = replay
    if control is not None:
        extra["control"] = control
    return CaseManifest(
        task="synthetic", subject=subject, key=key, index=key,
        files=tuple(f"logits_{subject}_{key}_{t}.pth" for t in range(len(steps))),
        input_token_ids=prompt, output_token_ids=tuple(tokens), output_tokens=tuple(f"t{i}" for i in tokens),
        output_text="", query=f"question {key}?", prompt_sha256="0" * 64, model_name=model, model_path="/m",
        dtype=dtype, logits_dtype="float32", vocab_size=V, device="cpu", extra=extra,
    )


def _save(folder: Path, subject: str, key: int, steps: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t, values in enumerate(steps):
        path = folder / f"logits_{subject}_{key}_{t}.pth"
        torch.save(torch.as_tensor(values, dtype=torch.float32).reshape(1, -1), path)


def build(root: Path, *, cases: int = 10, test_noise: float = 0.02, control_noise: float = 0.02,
          control_cases: int | None = None, control_steps: int = STEPS, replayed_test: bool = True,
          test_steps: list[list[np.ndarray]] | None = None, seed: int = 0, control_replayed: bool = True,
          control_tokens: list[int] | None = None) -> tuple[Path, Path, Path]:
    """golden/, control/ beside it (named in golden's manifest) and mine/: `cases` cases of STEPS steps."""
    golden, control, mine = root / "run" / "logits", root / "run" / "control", root / "mine"
    rng = np.random.default_rng(seed)
    for key in range(cases):
        g = [_golden_step(1000 * seed + 10 * key + t) for t in range(STEPS)]
        tokens = [int(np.argmax(x)) for x in g]
        _save(golden, "task", key, g)
        append_manifest(golden, _record("task", key, g, dtype="fp32", tokens=tokens))
        m = test_steps[key] if test_steps is not None else [x + rng.standard_normal(V) * test_noise for x in g]
        _save(mine, "task", key, m)
        replay = {"golden_dir": str(golden.resolve()), "mode": "step", "own_tokens": [int(np.argmax(x)) for x in m]}
        append_manifest(mine, _record("task", key, m, dtype="bf16", replay=replay if replayed_test else None,
                                      tokens=tokens if replayed_test else [int(np.argmax(x)) for x in m]))
        if control_cases is None or key < control_cases:
            c = [x + rng.standard_normal(V) * control_noise for x in g][:control_steps]
            _save(control, "task", key, c)
            replay = {"golden_dir": str(golden.resolve()), "mode": "step", "own_tokens": tokens[: len(c)]}
            append_manifest(control, _record(
                "task", key, c, dtype="bf16", tokens=control_tokens or tokens[: len(c)],
                replay=replay if control_replayed else None,
                control={"kind": "impl", "description": "impl control: attention eager instead of sdpa"}))
    covered = {(r.subject, r.index) for r in read_manifest(control)} if control.is_dir() else set()
    name_control(golden, control, "impl", covered)
    return golden, control, mine


def _compare(golden: Path, mine: Path, out: Path, **options):
    return run_compare(CompareOptions(golden, mine, out, workers=1, **options))


# ---- paired judging ----------------------------------------------------------------------------------------


def test_a_healthy_test_side_is_consistent_against_its_control(tmp_path: Path) -> None:
    golden, control, mine = build(tmp_path)
    summary = _compare(golden, mine, tmp_path / "o")
    assert {c.verdict for c in summary.cases} <= {"consistent", "noise"}
    assert all(c.reference == "control" and c.paired is not None and c.paired.steps == STEPS for c in summary.cases)
    ref = summary.reference
    assert ref.source == "control" and ref.control.found == control_arm.NAMED and ref.control.path == control
    assert ref.factor == pytest.approx(1.0, abs=0.01)  # fp32 golden, bf16 test, bf16 control
    run = ref.run
    assert run.cases == 10 and run.verdict == "noise" and run.low < 0 < run.high
    assert 0.7 < run.ratio < 1.4 and 0.5 < run.kl_ratio < 2
    text = format_summary(summary)
    assert "reference: control arm: impl control" in text and "10 case(s)" in text


def test_drift_beyond_the_control_is_precision_suspect(tmp_path: Path) -> None:
    golden, _control, mine = build(tmp_path, test_noise=0.06)  # 3x the control's scale: 9x its power
    summary = _compare(golden, mine, tmp_path / "o")
    assert [c.verdict for c in summary.cases] == ["precision-suspect"] * 10
    case = summary.cases[0]
    assert "x the control's over 8 step(s)" in case.reason and case.paired.p_value < 1e-3
    run = summary.reference.run
    assert run.verdict == "precision-suspect" and run.low > 0 and 6 < run.ratio < 13
    document = json.loads(next((tmp_path / "o").glob("logits_cmp_cases_*.json")).read_text())
    assert document["reference"]["run"]["verdict"] == "precision-suspect"
    assert document["cases"][0]["paired"]["steps"] == 8


def test_without_the_control_the_same_drift_is_unreferenced(tmp_path: Path) -> None:
    golden, _control, mine = build(tmp_path, test_noise=0.06)
    summary = _compare(golden, mine, tmp_path / "o", use_control=False)
    assert {c.verdict for c in summary.cases} == {"unreferenced"}
    assert summary.reference.source == "default" and summary.reference.control is None


def test_one_wild_step_is_caught_by_the_worst_step_rule(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    steps = []
    for key in range(10):
        g = [_golden_step(10 * key + t) for t in range(STEPS)]
        m = [x + rng.standard_normal(V) * 0.02 for x in g]
        if key == 3:
            m[5] = g[5] + rng.standard_normal(V) * 0.5  # one step 25x the noise scale
        steps.append(m)
    golden, _control, mine = build(tmp_path, test_steps=steps)
    verdicts = {c.key: c for c in _compare(golden, mine, tmp_path / "o").cases}
    assert verdicts[3].verdict == "precision-suspect" and "step 5 alone" in verdicts[3].reason
    assert all(verdicts[k].verdict in ("consistent", "noise") for k in verdicts if k != 3)


def test_an_argmax_change_the_control_cannot_explain_is_clear(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    steps = []
    for key in range(10):
        g = [_golden_step(10 * key + t) for t in range(STEPS)]
        m = [x + rng.standard_normal(V) * 0.02 for x in g]
        if key == 2:
            top = int(np.argmax(g[4]))
            m[4] = g[4].copy()
            m[4][(top + 1) % V] = g[4][top] + 0.5  # a token far behind golden's top-1 picked by the test
        steps.append(m)
    golden, _control, mine = build(tmp_path, test_steps=steps)
    case = next(c for c in _compare(golden, mine, tmp_path / "o").cases if c.key == 2)
    assert case.verdict == "precision-suspect" and "argmax change(s) the control's noise cannot explain" in case.reason


def test_a_free_run_is_judged_against_the_control_up_to_its_first_change(tmp_path: Path) -> None:
    golden, _control, mine = build(tmp_path, replayed_test=False)
    summary = _compare(golden, mine, tmp_path / "o")
    assert {c.verdict for c in summary.cases} <= {"consistent", "tie-flip"}
    assert all(c.reference == "control" for c in summary.cases)
    golden2, _c, mine2 = build(tmp_path / "bug", replayed_test=False, test_noise=0.08)
    assert {c.verdict for c in _compare(golden2, mine2, tmp_path / "o2").cases} == {"divergent"}


def test_a_free_running_control_as_modeltest_makes_it(tmp_path: Path) -> None:
    golden, _control, mine = build(tmp_path, replayed_test=False, control_replayed=False)
    summary = _compare(golden, mine, tmp_path / "o", control_path=tmp_path / "run" / "control")
    assert not summary.reference.control.replayed and "free-running" in summary.reference.description
    assert {c.verdict for c in summary.cases} <= {"consistent", "tie-flip"}
    assert all(c.reference == "control" for c in summary.cases)


def test_a_one_step_control_may_record_its_own_last_token(tmp_path: Path) -> None:
    """A 1-token replay feeds nothing: the token it records is its own choice, not golden's (boolq)."""
    golden, control, mine = build(tmp_path, cases=2, control_steps=1)
    _edit_control(control, output_token_ids=(V - 1,))
    for path in mine.glob("logits_task_*_[1-7].pth"):  # the test side dumped one token too
        path.unlink()
    rewrite_manifest(mine, [replace(r, files=r.files[:1], output_token_ids=r.output_token_ids[:1])
                            for r in read_manifest(mine)])
    summary = _compare(golden, mine, tmp_path / "o")
    assert summary.reference.control is not None and all(c.paired.steps == 1 for c in summary.cases)


# ---- finding the control ------------------------------------------------------------------------------------


def test_the_control_is_found_beside_golden_or_given(tmp_path: Path) -> None:
    golden, control, mine = build(tmp_path)
    rewrite_manifest(golden, [replace(r, extra={}) for r in read_manifest(golden)])  # not named any more
    assert _compare(golden, mine, tmp_path / "a").reference.control.found == control_arm.BESIDE
    moved = tmp_path / "elsewhere"
    control.rename(moved)
    assert _compare(golden, mine, tmp_path / "b").reference.source == "default"  # none: the floor alone
    summary = _compare(golden, mine, tmp_path / "c", control_path=moved)
    assert summary.reference.control.found == control_arm.GIVEN and summary.reference.run.verdict == "noise"


def test_no_control_flag_judges_by_the_floor(tmp_path: Path, capsys) -> None:
    golden, _control, mine = build(tmp_path)
    args = ["compare", "-gp", str(golden), "-mp", str(mine)]
    assert main([*args, "-o", str(tmp_path / "o"), "--no-control"]) == 0
    out = capsys.readouterr().out
    assert "floor: no measured floor" in out and "reference: control arm" not in out
    assert main([*args, "-o", str(tmp_path / "p"), "--no-control", "--control", str(golden)]) == 2
    assert "--control and --no-control contradict each other" in capsys.readouterr().err


def test_partial_coverage_judges_what_the_control_covers_and_names_the_rest(tmp_path: Path) -> None:
    golden, _control, mine = build(tmp_path, control_cases=6)
    summary = _compare(golden, mine, tmp_path / "o")
    by_ref = {c.key: c.reference for c in summary.cases}
    assert [k for k, r in by_ref.items() if r == "control"] == [0, 1, 2, 3, 4, 5]
    assert {by_ref[k] for k in (6, 7, 8, 9)} == {"default"}
    ref = summary.reference
    assert ref.run.cases == 6 and len(ref.uncovered) == 4
    assert "4 case(s) not in the control judged by the default: bf16 (task #6, task #7, task #8, task #9)" in \
        ref.description


# ---- a control that does not fit: one line each ----------------------------------------------------------


def _edit_control(control: Path, **changes) -> None:
    rewrite_manifest(control, [replace(r, **changes) for r in read_manifest(control)])


@pytest.mark.parametrize(("changes", "words"), [
    ({"model_name": "other"}, "a dump of model 'other'"),
    ({"input_token_ids": (9, 9)}, "has another prompt than golden's"),
    ({"output_token_ids": tuple(range(STEPS))}, "replayed other tokens than golden's"),
])
def test_a_control_of_another_model_prompt_or_tokens_is_refused(tmp_path: Path, changes, words, capsys) -> None:
    golden, control, mine = build(tmp_path, cases=2)
    _edit_control(control, **changes)
    with pytest.raises(DataError, match=words):
        _compare(golden, mine, tmp_path / "o")
    assert not (tmp_path / "o").exists()  # refused before the output folder is made
    assert main(["compare", "-gp", str(golden), "-mp", str(mine), "-o", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_a_control_of_other_cases_is_refused(tmp_path: Path) -> None:
    golden, _control, mine = build(tmp_path, cases=2)
    _g2, other, _m2 = build(tmp_path / "other", cases=2, seed=5)
    for path in other.glob("logits_task_*.pth"):
        path.rename(path.with_name(path.name.replace("task_", "elsewhere_")))
    rewrite_manifest(other, [replace(r, subject="elsewhere", files=tuple(f.replace("task_", "elsewhere_")
                                                                         for f in r.files))
                             for r in read_manifest(other)])
    with pytest.raises(DataError, match="holds none of the golden dump's cases"):
        _compare(golden, mine, tmp_path / "o", control_path=other)


def test_a_control_with_missing_steps_is_refused(tmp_path: Path) -> None:
    golden, _control, mine = build(tmp_path, cases=2, control_steps=5)
    with pytest.raises(DataError, match=r"case task #0 lacks step\(s\) 5, 6, 7 that the test side has"):
        _compare(golden, mine, tmp_path / "o")


def test_a_control_bitwise_equal_to_golden_is_refused(tmp_path: Path) -> None:
    golden, _control, mine = build(tmp_path, cases=2, control_noise=0.0)
    with pytest.raises(DataError, match="bitwise identical to the golden dump at every step"):
        _compare(golden, mine, tmp_path / "o")


def test_a_missing_or_golden_control_folder_is_refused(tmp_path: Path) -> None:
    golden, _control, mine = build(tmp_path, cases=2)
    with pytest.raises(DataError, match="does not exist"):
        _compare(golden, mine, tmp_path / "o", control_path=tmp_path / "nowhere")
    with pytest.raises(DataError, match="it is the golden folder itself"):
        _compare(golden, mine, tmp_path / "o", control_path=golden)


def test_a_control_of_an_unusable_dtype_is_ignored_with_a_warning(tmp_path: Path, caplog) -> None:
    golden, control, mine = build(tmp_path, cases=2)
    _edit_control(control, dtype="fp32")  # as precise as golden: its noise says nothing of bf16's
    summary = _compare(golden, mine, tmp_path / "o")
    assert summary.reference.control is None and "is no reference" in caplog.text


# ---- the statistics ---------------------------------------------------------------------------------------


def test_spread_factor_counts_the_roundings() -> None:
    assert ctl.spread_factor("fp32", "bf16", "bf16")[0] == pytest.approx(1.0, abs=1e-4)
    assert ctl.spread_factor("bf16", "bf16", "fp32")[0] == pytest.approx(2.0)
    assert ctl.spread_factor("bf16", "bf16", "bf16")[0] == pytest.approx(2.0)
    assert ctl.spread_factor("fp32", "bf16", "fp32")[0] > 1e4  # a control far more precise: no reference
    assert ctl.spread_factor(None, "bf16", "bf16")[0] == ctl.SPREAD_BOUND


def test_log_power_ratio_is_clamped_and_undefined_without_control_noise() -> None:
    assert ctl.log_power_ratio(2.0, 1.0) == pytest.approx(2 * math.log(2))
    assert ctl.log_power_ratio(1e9, 1.0) == ctl.CLAMP and ctl.log_power_ratio(0.0, 1.0) == -ctl.CLAMP
    assert ctl.log_power_ratio(0.0, 0.0) == 0.0 and ctl.log_power_ratio(1.0, 0.0) is None
    assert ctl.log_power_ratio(None, 1.0) is None


@pytest.mark.parametrize("n", [4, 16])
def test_the_case_rules_keep_their_false_alarm_rate_on_healthy_steps(n: int) -> None:
    """Healthy r as the derivation models it (a case offset of variance rho sigma^2, steps of sd sigma, a
    slightly heavy tail): the mean and worst-step rules together flag at most their stated 1%."""
    rules = ctl.Rules(1.0, ctl.STEP_SPREAD)
    rng = random.Random(11)
    sigma, trials, flagged = ctl.STEP_SPREAD, 20000, 0
    for _ in range(trials):
        offset = rng.gauss(0.0, sigma * math.sqrt(ctl.CASE_SHARE))
        r = [offset + rng.gauss(0.0, sigma) for _ in range(n)]
        flagged += sum(r) / n > rules.mean_threshold(n) or max(r) > rules.step_threshold(n)
    assert flagged / trials <= ctl.ALPHA_MEAN + ctl.ALPHA_STEP
    # and a drift of 2x the noise power over 16 steps is caught almost always (the resolution)
    shifted = sum(sum(rng.gauss(math.log(2.0), sigma) for _ in range(16)) / 16 > rules.mean_threshold(16)
                  for _ in range(2000))
    assert shifted / 2000 > 0.9


def _simulated_runs(drift: float, *, runs: int, cases: int, n: int, seed: int) -> tuple[float, float]:
    """Runs of `cases` cases of n steps, r drawn as the derivation models it plus `drift` (log power): the
    fraction of cases the case-alone rules flag, and the fraction the gatekeeping procedure flags (the in-run
    rule too where the run's interval is above the bound), both through `compare/control.py`'s functions."""
    rules, gated = ctl.Rules(1.0, ctl.STEP_SPREAD), ctl.Rules(1.0, ctl.STEP_SPREAD, in_run=True)
    rng = random.Random(seed)
    sigma, alone, together = ctl.STEP_SPREAD, 0, 0
    for _ in range(runs):
        drawn = []
        for _ in range(cases):
            offset = drift + rng.gauss(0.0, sigma * math.sqrt(ctl.CASE_SHARE))
            drawn.append([offset + rng.gauss(0.0, sigma) for _ in range(n)])
        means = [sum(r) / n for r in drawn]
        _mean, low, _high = ctl.run_interval(means)
        for r, mean in zip(drawn, means, strict=True):
            flagged = mean > rules.mean_threshold(n) or max(r) > rules.step_threshold(n)
            alone += flagged
            together += flagged or (low is not None and low > 0 and mean > (gated.run_threshold(n) or math.inf))
    return alone / (runs * cases), together / (runs * cases)


@pytest.mark.parametrize(("cases", "n"), [(6, 16), (12, 8)])
def test_the_in_run_rule_keeps_a_healthy_case_within_its_stated_false_alarm_rate(cases: int, n: int) -> None:
    """On healthy runs the gate (the run's one-sided 2.5%) bounds the in-run rule: a case is flagged at most
    ALPHA_MEAN + ALPHA_STEP + 2.5% of the time."""
    alone, together = _simulated_runs(0.0, runs=4000, cases=cases, n=n, seed=5)
    assert alone <= ctl.ALPHA_MEAN + ctl.ALPHA_STEP
    assert together <= ctl.ALPHA_MEAN + ctl.ALPHA_STEP + 0.025


def test_the_in_run_rule_catches_a_small_drift_the_case_alone_misses() -> None:
    """A 1.5x rise in noise power over 16 steps in every case of a 6-case run: about half the cases alone, most of
    them once the run has shown it (the case-level resolution)."""
    alone, together = _simulated_runs(math.log(1.5), runs=1000, cases=6, n=16, seed=6)
    assert alone < 0.6 and together > 0.75


def test_a_small_drift_in_every_case_is_flagged_through_the_run(tmp_path: Path, monkeypatch) -> None:
    golden, _control, mine = build(tmp_path, test_noise=0.024)  # 1.44x the control's power, every case
    summary = _compare(golden, mine, tmp_path / "o")
    assert summary.reference.run.verdict == "precision-suspect"
    through_run = [c for c in summary.cases if "the run's noise is above the healthy bound" in c.reason]
    assert len(through_run) >= 5 and all(c.verdict == "precision-suspect" for c in through_run)
    assert all(c.paired.run_threshold is not None and c.paired.excess > c.paired.run_threshold for c in through_run)
    assert ctl.PairedCase.from_dict(through_run[0].paired.to_dict()) == through_run[0].paired
    monkeypatch.setattr(ctl, "ALPHA_IN_RUN", ctl.ALPHA_MEAN)  # no in-run rule: the case-alone rules miss them
    alone = _compare(golden, mine, tmp_path / "p")
    assert sum(c.verdict == "precision-suspect" for c in alone.cases) < len(through_run) - 3


def test_a_healthy_run_gets_no_in_run_rule(tmp_path: Path) -> None:
    golden, _control, mine = build(tmp_path, test_noise=0.02, seed=1)
    summary = _compare(golden, mine, tmp_path / "o")
    assert summary.reference.run.verdict == "noise"
    assert all(c.paired.run_threshold is None and c.verdict != "precision-suspect" for c in summary.cases)


def test_the_mean_rule_p_value_matches_its_threshold() -> None:
    rules = ctl.Rules(1.0, ctl.STEP_SPREAD)
    assert rules.p_value(rules.mean_threshold(16), 16) == pytest.approx(ctl.ALPHA_MEAN, rel=1e-6)
    assert rules.flip_bound(0.1) == pytest.approx(ctl.FLIP_Z * math.sqrt(2) * 0.1)


@pytest.mark.parametrize(("p", "df", "expected"), [
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182), (0.975, 9, 2.262), (0.975, 30, 2.042),
    (0.995, 5, 4.032), (0.95, 40, 1.684),
])
def test_t_quantile_matches_the_tables(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, rel=0.01)
    assert t_quantile(0.975, 10**6) == pytest.approx(NormalDist().inv_cdf(0.975), rel=1e-4)


# ---- where users see it -----------------------------------------------------------------------------------


def test_the_report_plots_test_and_control_and_shows_the_run_ratio(tmp_path: Path) -> None:
    from logitsdump.report import write_report

    golden, _control, mine = build(tmp_path, test_noise=0.06)
    text = write_report(_compare(golden, mine, tmp_path / "o")).read_text(encoding="utf-8")
    assert '<section class="reference" id="reference"><h2>Noise reference</h2>' in text
    assert "control arm: impl control: attention eager instead of sdpa" in text
    assert "95% interval" in text and "precision-suspect" in text
    assert text.count("Against the control arm") == 10
    assert text.count('class="series series-test"') == 10 and text.count('class="series series-control"') == 10
    plain = write_report(_compare(golden, mine, tmp_path / "p", use_control=False)).read_text(encoding="utf-8")
    assert "Against the control arm" not in plain and "no measured floor" in plain
