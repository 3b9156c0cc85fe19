"""compare on top-k evidence (compare/topk.py, compare/topk_metrics.py): the KL lower bound is a bound, the
verdicts follow the documented rules, and the CSV, the case JSON and the report say what is a bound."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from logitsdump import store
from logitsdump.compare import CompareOptions, run_compare
from logitsdump.compare.topk_metrics import kl_lower_bound, side_of_logits, side_of_topk, topk_metrics
from logitsdump.topkfile import TopkStep, write_topk

VOCAB = 300
STEPS = 6


def _logprobs(x: np.ndarray) -> np.ndarray:
    return x - np.logaddexp.reduce(x)


def _kl(g: np.ndarray, m: np.ndarray) -> float:
    lp, lq = _logprobs(g), _logprobs(m)
    return float(np.sum(np.exp(lp) * (lp - lq)))


def _golden_logits(case: int, t: int) -> np.ndarray:
    rng = np.random.default_rng(1000 * case + t)
    x = rng.normal(0.0, 2.5, VOCAB)
    x[rng.integers(VOCAB)] += 6.0  # a clear favourite, as a trained model has
    return x


def make_dumps(tmp_path: Path, perturb, k: int, cases=(1, 2, 3), replay: bool = True, golden_topk: bool = False):
    """A full-vocabulary golden dump and a test dump of top-k logprobs made from `perturb(golden logits, case, t)`."""
    golden, mine = tmp_path / "golden", tmp_path / "mine"
    golden.mkdir(parents=True, exist_ok=True)
    mine.mkdir(parents=True, exist_ok=True)
    truth = {}
    for case in cases:
        g_files, m_files, tokens = [], [], []
        for t in range(STEPS):
            g = _golden_logits(case, t)
            m = perturb(g, case, t)
            token = int(np.argmax(g))
            tokens.append(token)
            truth[case, t] = _kl(g, m)
            if golden_topk:
                name = store.topk_file_name("S", case, t)
                write_topk(golden / name, _topk(g, k, token))
            else:
                name = store.logits_file_name("S", case, t)
                store.save_logits(golden / name, torch.tensor(g, dtype=torch.float32))
            g_files.append(name)
            name = store.topk_file_name("S", case, t)
            write_topk(mine / name, _topk(m, k, token if replay else int(np.argmax(m))))
            m_files.append(name)
        extra = {"replay": {"golden_dir": str(golden), "mode": "prefill", "own_tokens": tokens,
                            "method": "prompt_logprobs"}} if replay else {}
        for folder, files, more in ((golden, g_files, {}), (mine, m_files, extra)):
            store.append_manifest(folder, store.CaseManifest(
                task="t", subject="S", key=str(case), index=case, files=tuple(files), input_token_ids=(1, 2),
                output_token_ids=tuple(tokens), output_tokens=("x",) * STEPS, output_text="x", query="q",
                prompt_sha256="h", model_name="m", model_path="p", dtype="bf16", logits_dtype="float64",
                vocab_size=VOCAB, device="server:x", extra=more))
    return golden, mine, truth


def _topk(x: np.ndarray, k: int, chosen: int) -> TopkStep:
    lp = _logprobs(np.asarray(x, dtype=np.float64))
    order = np.argsort(-lp, kind="stable")[:k]
    return TopkStep.build([(int(t), float(lp[t])) for t in order], k, chosen, float(lp[chosen]), "raw_logprobs",
                          VOCAB)


def noise(scale):
    def perturb(g, case, t):
        rng = np.random.default_rng(7 + 1000 * case + t)
        return g + rng.normal(0.0, scale, g.size)
    return perturb


def compare(golden, mine, out, **tolerances):
    options = CompareOptions(golden, mine, out, dtype="bf16", **{"noise_kl": 0.01, "noise_margin": 0.2, **tolerances})
    return run_compare(options)


@pytest.mark.parametrize("seed", range(20))
def test_the_kl_lower_bound_never_exceeds_the_kl_and_is_exact_on_the_whole_support(seed):
    rng = np.random.default_rng(seed)
    g = rng.normal(0, 3, 200)
    m = g + rng.normal(0, rng.choice([0.01, 0.3, 2.0]), 200)
    true = _kl(g, m)
    for k in (1, 5, 20, 200):
        bound, mass, _q, shared = kl_lower_bound(side_of_logits(g, k), side_of_topk(_topk(m, k, 0)))
        assert bound <= true + 1e-12 and 0 < mass <= 1 and shared >= k
        both_topk, *_ = kl_lower_bound(side_of_topk(_topk(g, k, 0)), side_of_topk(_topk(m, k, 0)))
        assert both_topk <= true + 1e-12
    assert kl_lower_bound(side_of_logits(g, 5), side_of_logits(m, 5))[0] == pytest.approx(true, rel=1e-9)


def test_margins_outside_the_top_k_are_lower_bounds():
    g = np.log(np.array([0.5, 0.3, 0.1, 0.05, 0.05]))
    m = np.log(np.array([0.02, 0.3, 0.1, 0.08, 0.5]))  # the test's choice (4) is golden's rank 4
    golden = side_of_topk(_topk(g, 2, 0))
    metrics = topk_metrics(golden, side_of_topk(_topk(m, 2, 4)), 2)
    assert (metrics.golden_top1, metrics.my_top1, metrics.top1_match) == (0, 4, False)
    assert metrics.flip_margin_bound and metrics.flip_margin == pytest.approx(math.log(0.5 / 0.3))
    assert metrics.my_top1_rank_in_golden is None  # beyond golden's top 2
    assert metrics.dlogprob_bound and metrics.dlogprob == pytest.approx(math.log(0.3) - math.log(0.5))
    exact = topk_metrics(side_of_logits(g, 2), side_of_topk(_topk(m, 2, 4)), 2)
    assert not exact.flip_margin_bound and exact.flip_margin == pytest.approx(math.log(0.5 / 0.05))
    assert exact.my_top1_rank_in_golden in (4, 5)


def test_noise_is_consistent_or_noise_and_a_defect_is_precision_suspect(tmp_path):
    golden, mine, truth = make_dumps(tmp_path / "a", noise(0.02), 20)
    summary = compare(golden, mine, tmp_path / "cmp-noise")
    assert {c.verdict for c in summary.cases} <= {"consistent", "noise"}
    assert all(c.evidence == "top-20" and c.replay_mode == "prefill (prompt_logprobs)" for c in summary.cases)
    for case in summary.cases:  # every KL figure is a lower bound of the true one
        for step in case.steps:
            assert step.topk.kl_lower_bound <= truth[case.key, step.token_id] + 1e-9
    golden, mine, _ = make_dumps(tmp_path / "b", noise(1.0), 20)
    summary = compare(golden, mine, tmp_path / "cmp-defect")
    assert [c.verdict for c in summary.cases] == ["precision-suspect"] * 3
    assert all("drift" in c.findings or "clear-change" in c.findings for c in summary.cases)


def test_the_csv_the_json_and_the_report_mark_the_kl_as_a_bound(tmp_path):
    golden, mine, _ = make_dumps(tmp_path, noise(0.02), 5)
    summary = compare(golden, mine, tmp_path / "cmp")
    with open(summary.csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * STEPS
    assert all(r["kl_is_lower_bound"] == "True" and r["evidence"] == "top-5" and r["cosine_similarity"] == "NA"
               and r["kl_divergence"] == "NA" and float(r["kl_lower_bound"]) >= 0 for r in rows)
    with open(summary.cases_csv_path, newline="", encoding="utf-8") as handle:
        assert {r["kl_is_lower_bound"] for r in csv.DictReader(handle)} == {"True"}
    document = json.loads(summary.cases_json_path.read_text(encoding="utf-8"))
    case = document["cases"][0]
    assert case["evidence"] == "top-5" and case["kl_is_lower_bound"] is True
    assert "kl_lower_bound" in case["steps"][0]["topk"]
    from logitsdump.report.html import render_report
    from logitsdump.report.load import load_compare
    from logitsdump.report.terminal import format_summary

    page = render_report(load_compare(tmp_path / "cmp"))
    assert "KL (lower bound)" in page and "are lower bounds" in page
    assert "KL figures are lower bounds" in format_summary(tmp_path / "cmp")


def test_a_change_whose_margin_top_k_cannot_tell_is_incomplete_never_noise(tmp_path):
    def swap(g, case, t):
        m = g.copy()
        if t == 2:  # the test puts a token from golden's tail on top
            m[int(np.argmin(g))] = g.max() + 1.0
        return m

    def flat(case, t):  # golden's top 3 within the noise margin of each other
        x = np.full(VOCAB, -8.0)
        x[:3] = (0.0, -0.05, -0.1)
        return x

    import test_compare_topk as module

    original = module._golden_logits
    module._golden_logits = flat
    try:
        golden, mine, _ = make_dumps(tmp_path / "topk", swap, 3, cases=(1,), golden_topk=True)
        summary = compare(golden, mine, tmp_path / "cmp", noise_kl=100.0, noise_margin=0.2)
        full_golden, full_mine, _ = make_dumps(tmp_path / "full", swap, 3, cases=(1,))
        full = compare(full_golden, full_mine, tmp_path / "cmp-full", noise_kl=100.0, noise_margin=0.2)
    finally:
        module._golden_logits = original
    assert [c.verdict for c in summary.cases] == ["incomplete"]  # golden's top 3 span 0.1 < 0.2: unknown
    assert "cannot be judged" in summary.cases[0].reason
    assert [c.verdict for c in full.cases] == ["precision-suspect"]  # golden's full vector knows: margin 8


def test_a_full_vocabulary_dump_against_top_k_is_judged_on_the_top_k_side_terms(tmp_path):
    golden, mine, _ = make_dumps(tmp_path / "full", noise(1.0), 20)
    g_topk, m_topk, _ = make_dumps(tmp_path / "topk", noise(1.0), 20, golden_topk=True)
    full = compare(golden, mine, tmp_path / "cmp-full")
    both = compare(g_topk, m_topk, tmp_path / "cmp-topk")
    assert [c.verdict for c in full.cases] == [c.verdict for c in both.cases] == ["precision-suspect"] * 3
    assert all(s.topk.k == 20 for c in full.cases for s in c.steps)
    for a, b in zip(full.cases, both.cases, strict=True):  # the full side sees more, so its bound is tighter
        assert a.worst_kl >= b.worst_kl - 1e-12


def test_free_runs_judge_up_to_the_first_change(tmp_path):
    golden, mine, _ = make_dumps(tmp_path / "a", noise(0.02), 20, replay=False)
    summary = compare(golden, mine, tmp_path / "cmp", kl=1.0)
    assert {c.verdict for c in summary.cases} <= {"consistent", "tie-flip"}
    assert not any(c.replayed for c in summary.cases)
    golden, mine, _ = make_dumps(tmp_path / "b", noise(3.0), 20, replay=False)
    summary = compare(golden, mine, tmp_path / "cmp-b", kl=1.0)
    assert {c.verdict for c in summary.cases} == {"divergent"}


def test_missing_steps_make_a_case_incomplete(tmp_path):
    golden, mine, _ = make_dumps(tmp_path, noise(0.02), 20)
    (mine / store.topk_file_name("S", 2, 3)).unlink()
    summary = compare(golden, mine, tmp_path / "cmp")
    verdicts = {c.key: c.verdict for c in summary.cases}
    assert verdicts[2] == "incomplete" and verdicts[1] in ("consistent", "noise")


def test_a_margin_known_only_as_a_bound_above_the_tolerance_is_a_clear_change(tmp_path):
    def swap(g, case, t):
        m = g.copy()
        if t == 2:  # the test puts a token from golden's tail on top
            m[int(np.argmin(g))] = g.max() + 1.0
        return m

    golden, mine, _ = make_dumps(tmp_path, swap, 3, cases=(1,), golden_topk=True)
    summary = compare(golden, mine, tmp_path / "cmp", noise_kl=100.0, noise_margin=0.2)
    case = summary.cases[0]
    assert case.verdict == "precision-suspect" and case.findings == ("clear-change",)
    assert "outside golden's top-k" in case.reason and "golden margin >= " in case.reason
