"""compare on replayed dumps (`dump --replay`): every step judged, noise vs precision-suspect, calibration.

The dumps here are built by hand: golden and test logits files plus manifests whose test
records carry `extra.replay`, as the runner writes them.
"""

from __future__ import annotations

import csv
import json
import math
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from logitsdump.cli import main
from logitsdump.compare import CompareOptions, run_compare
from logitsdump.compare.calibrate import calibrate, format_calibration, load_tolerances
from logitsdump.compare.floor import default_tolerances, gross_bound, least_precise
from logitsdump.compare.judge import Tolerances
from logitsdump.compare.kernels import rank_of
from logitsdump.compare.metrics import Thresholds, pair_metrics
from logitsdump.compare.outputs import CASE_COLUMNS
from logitsdump.compare.stats import percentile_high, percentile_low
from logitsdump.compare.verdicts import REPLAY_VERDICTS
from logitsdump.errors import DataError
from logitsdump.report import format_summary, write_report
from logitsdump.report.load import load_compare
from logitsdump.store import CaseManifest, append_manifest, write_vocab

NOW = datetime(2024, 5, 6, 7, 8, 9)
V = 64


def _base(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(V) * 1.5
    x[seed % V] = 8.0  # a clear top-1
    return x


def _noisy(x: np.ndarray, scale: float, seed: int) -> np.ndarray:
    return x + np.random.default_rng(1000 + seed).standard_normal(V) * scale


def _record(subject: str, key: int, steps: list[np.ndarray], *, replay: dict | None = None,
            tokens: list[int] | None = None) -> CaseManifest:
    own = [int(np.argmax(x)) for x in steps]
    return CaseManifest(
        task="synthetic", subject=subject, key=key, index=key,
        files=tuple(f"logits_{subject}_{key}_{t}.pth" for t in range(len(steps))),
        input_token_ids=(1, 2, 3), output_token_ids=tuple(tokens if tokens is not None else own),
        output_tokens=tuple(f"t{i}" for i in (tokens if tokens is not None else own)), output_text="",
        query=f"question {key}?", prompt_sha256="0" * 64, model_name="tiny", model_path="/m",
        dtype="bf16" if replay else "fp32", logits_dtype="float32", vocab_size=V, device="cpu",
        extra={"replay": replay} if replay else {},
    )


def write_replay_case(root: Path, subject: str, key: int, golden: list[np.ndarray | None],
                      mine: list[np.ndarray | None], *, replayed: bool = True, mode: str = "step") -> None:
    """golden's files and manifest (free run), the test's files and manifest (replaying golden)."""
    gdir, mdir = root / "golden", root / "mine"
    for folder, steps in ((gdir, golden), (mdir, mine)):
        folder.mkdir(parents=True, exist_ok=True)
        for t, values in enumerate(steps):
            if values is not None:
                torch.save(torch.as_tensor(values, dtype=torch.float32).reshape(1, -1),
                           folder / f"logits_{subject}_{key}_{t}.pth")
    golden_steps = [g for g in golden if g is not None]
    golden_tokens = [int(np.argmax(g)) for g in golden_steps]
    append_manifest(gdir, _record(subject, key, golden_steps))
    mine_steps = [m if m is not None else np.zeros(V) for m in mine]
    replay = {"golden_dir": str(gdir.resolve()), "mode": mode,
              "own_tokens": [int(np.argmax(m)) for m in mine_steps]} if replayed else None
    append_manifest(mdir, _record(subject, key, mine_steps, replay=replay,
                                  tokens=golden_tokens[: len(mine)] if replayed else None))


def _swap(x: np.ndarray, a: int, b: int) -> np.ndarray:
    y = x.copy()
    y[a], y[b] = x[b], x[a]
    return y


def _near_tie(seed: int, margin: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """golden with its top two `margin` apart, and a test step that picked the second."""
    g = _base(seed)
    top = int(np.argmax(g))
    other = (top + 7) % V
    g[other] = g[top] - margin
    return g, _swap(g, top, other) + 1e-4


#: The floor these synthetic cases are judged against (the tiny model's measured one): the rules are
#: tested here; the floor without a tolerances file (the dtype's default) has its own tests below.
FLOOR = {"noise_margin": 1.0, "noise_kl": 0.13, "noise_cosine": 0.989}


def _run(root: Path, **kwargs):
    return run_compare(CompareOptions(root / "golden", root / "mine", root / "out", **(FLOOR | kwargs)), now=NOW)


def _build(root: Path) -> None:
    """One case of each replay verdict (N = 6 steps each)."""
    n = 6
    # 1 identical
    steps = [_base(s) for s in range(n)]
    write_replay_case(root, "task", 1, steps, [x.copy() for x in steps])
    # 2 consistent: small noise, no argmax change
    steps = [_base(10 + s) for s in range(n)]
    write_replay_case(root, "task", 2, steps, [_noisy(x, 0.01, s) for s, x in enumerate(steps)])
    # 3 noise: near-ties flip at steps 1 and 4, small noise elsewhere
    golden, mine = [], []
    for s in range(n):
        if s in (1, 4):
            g, m = _near_tie(20 + s)
        else:
            g = _base(20 + s)
            m = _noisy(g, 0.01, s)
        golden.append(g)
        mine.append(m)
    write_replay_case(root, "task", 3, golden, mine)
    # 4 precision-suspect: a near-tie at step 1, then a clear-margin change at step 3 (a free run stops at 1)
    golden, mine = [], []
    for s in range(n):
        g = _base(30 + s)
        m = _noisy(g, 0.01, s)
        if s == 1:
            g, m = _near_tie(31)
        if s == 3:
            top = int(np.argmax(g))
            m = g.copy()
            m[(top + 3) % V] = g[top] + 2.0  # golden ranked it far behind: margin > 1 logit
        golden.append(g)
        mine.append(m)
    write_replay_case(root, "task", 4, golden, mine)
    # 5 precision-suspect by drift: same argmax everywhere, the test's distribution flattens step by step
    golden = [_base(40 + s) for s in range(n)]
    mine = [g * (1.0 - 0.15 * s) for s, g in enumerate(golden)]
    write_replay_case(root, "task", 5, golden, mine)
    # 6 incomplete: a test file missing, the rest close
    golden = [_base(50 + s) for s in range(n)]
    mine = [_noisy(g, 0.01, s) for s, g in enumerate(golden)]
    mine[2] = None
    write_replay_case(root, "task", 6, golden, mine)


@pytest.fixture
def replay_dirs(tmp_path: Path) -> Path:
    _build(tmp_path)
    return tmp_path


# ---- verdict rules ----------------------------------------------------------------------------


def test_replay_verdicts(replay_dirs: Path) -> None:
    summary = _run(replay_dirs)
    cases = {c.key: c for c in summary.cases}
    assert {k: c.verdict for k, c in cases.items()} == {
        1: "identical", 2: "consistent", 3: "noise", 4: "precision-suspect", 5: "precision-suspect",
        6: "incomplete",
    }
    assert all(c.replay_mode == "step" for c in cases.values())
    assert [bool(cases[k]) for k in range(1, 7)] == [True, True, True, False, False, False]
    # every step judged, not only up to the first change
    assert all(c.tokens_judged == 6 for c in cases.values())
    noise = cases[3]
    assert noise.changed_steps == (1, 4) and noise.first_diff_token == 1
    assert all(c.flip_margin == pytest.approx(0.05, abs=1e-3) for c in noise.changes)
    assert all(c.my_rank_in_golden == 2 and c.golden_rank_in_mine == 2 for c in noise.changes)
    assert "near-ties" in noise.reason
    suspect = cases[4]
    assert suspect.changed_steps == (1, 3)
    clear = suspect.changes[1]
    assert clear.flip_margin > FLOOR["noise_margin"] and clear.my_flip_margin == pytest.approx(2.0, abs=1e-5)
    assert clear.golden_rank_in_mine == 2 and clear.my_rank_in_golden > 1
    assert "clear golden margin" in suspect.reason and "token 3" in suspect.reason
    drift = cases[5]
    assert drift.changes == () and "drift apart" in drift.reason
    assert drift.worst_kl > FLOOR["noise_kl"] and drift.mean_kl < drift.worst_kl
    assert "token 2" in cases[6].reason
    assert dict(summary.verdicts)["noise"] == 1 and dict(summary.verdicts)["precision-suspect"] == 2


def test_the_same_files_without_replay_get_free_run_verdicts(tmp_path: Path) -> None:
    """Case 4 has a near-tie at step 1: a free run stops judging there (tie-flip); the replay goes on."""
    _build(tmp_path)
    for name in ("manifest.jsonl",):
        (tmp_path / "mine" / name).unlink()
    cases = {c.key: c for c in _run(tmp_path).cases}
    assert cases[4].verdict == "tie-flip" and cases[4].tokens_judged == 2 and cases[4].replay_mode is None
    assert cases[3].verdict == "tie-flip" and cases[1].verdict == "identical"


def test_tolerances_move_the_verdicts(replay_dirs: Path) -> None:
    # a noise margin below the near-ties' 0.05 makes them clear changes
    cases = {c.key: c.verdict for c in _run(replay_dirs, noise_margin=0.01).cases}
    assert cases[3] == "precision-suspect"
    # loose KL and cosine tolerances accept the drift
    cases = {c.key: c.verdict for c in _run(replay_dirs, noise_kl=10.0, noise_cosine=-1.0).cases}
    assert cases[5] == "consistent"
    # the free-run tie tolerance does not touch replayed cases
    assert {c.key: c.verdict for c in _run(replay_dirs, tie_tolerance=0.0).cases}[3] == "noise"


def test_drift_on_the_cosine_alone(tmp_path: Path) -> None:
    golden = [_base(60 + s) for s in range(4)]
    write_replay_case(tmp_path, "t", 1, golden, [_noisy(g, 0.2, s) for s, g in enumerate(golden)])
    case = _run(tmp_path, noise_kl=100.0, noise_cosine=0.9999).cases[0]
    assert case.verdict == "precision-suspect" and "cosine" in case.reason


def test_nan_in_a_replayed_step_is_precision_suspect(tmp_path: Path) -> None:
    golden = [_base(70 + s) for s in range(3)]
    mine = [g.copy() for g in golden]
    mine[1][5] = np.nan
    write_replay_case(tmp_path, "t", 1, golden, mine)
    case = _run(tmp_path).cases[0]
    assert case.verdict == "precision-suspect" and "my_data includes NAN or inf." in case.reason


def test_golden_dumped_more_steps_than_the_replay(tmp_path: Path) -> None:
    """Golden dumped 5 tokens, the replay 3 (`-tr 3`): the two golden-only files are not judged."""
    golden = [_base(80 + s) for s in range(5)]
    write_replay_case(tmp_path, "t", 1, golden, [_noisy(g, 0.01, s) for s, g in enumerate(golden[:3])])
    case = _run(tmp_path).cases[0]
    assert case.verdict == "consistent" and case.tokens_judged == 3 and case.tokens_total == 5


def test_a_replay_of_another_dump_is_judged_as_a_free_run(tmp_path: Path, caplog) -> None:
    golden = [_base(90 + s) for s in range(3)]
    write_replay_case(tmp_path, "t", 1, golden, [_noisy(g, 0.01, s) for s, g in enumerate(golden)])
    manifest = tmp_path / "mine" / "manifest.jsonl"
    record = json.loads(manifest.read_text())
    record["extra"]["replay"]["golden_dir"] = str(tmp_path / "elsewhere")
    record["output_token_ids"] = [0, 0, 0]  # not golden's tokens
    manifest.write_text(json.dumps(record) + "\n")
    case = _run(tmp_path).cases[0]
    assert case.replay_mode is None and case.verdict in ("consistent", "divergent")
    assert "judged as a free run" in caplog.text
    # the same dump moved to another folder (tokens match): still a replay
    record["output_token_ids"] = [int(np.argmax(g)) for g in golden]
    manifest.write_text(json.dumps(record) + "\n")
    assert _run(tmp_path).cases[0].replay_mode == "step"


def test_prefill_mode_and_golden_side_replay(tmp_path: Path) -> None:
    golden = [_base(100 + s) for s in range(3)]
    write_replay_case(tmp_path, "t", 1, golden, [_noisy(g, 0.01, s) for s, g in enumerate(golden)], mode="prefill")
    assert _run(tmp_path).cases[0].replay_mode == "prefill"
    # swapped sides (the replayed dump given as -gp) is still recognised
    swapped = run_compare(CompareOptions(tmp_path / "mine", tmp_path / "golden", tmp_path / "out2"), now=NOW)
    assert swapped.cases[0].replay_mode == "prefill" and swapped.cases[0].verdict == "consistent"


# ---- metrics behind the changes ---------------------------------------------------------------


def test_rank_and_margins_of_a_change() -> None:
    g = np.array([5.0, 4.0, 4.0, 3.0, 1.0], dtype=np.float32)
    m = np.array([4.5, 3.0, 2.0, 6.0, 1.0], dtype=np.float32)
    metrics = pair_metrics(g, m, Thresholds())
    assert (metrics.golden_top1, metrics.my_top1) == (0, 3)
    assert metrics.flip_margin == 2.0 and metrics.my_flip_margin == 1.5
    assert metrics.my_top1_rank_in_golden == 4  # 5, 4, 4 ahead of 3
    assert metrics.golden_top1_rank_in_mine == 2
    assert rank_of(g, 2) == 3 and rank_of(g, 1) == 2  # equal values: the lower index first (argmax order)
    same = pair_metrics(g, g.copy(), Thresholds())
    assert (same.my_flip_margin, same.my_top1_rank_in_golden, same.golden_top1_rank_in_mine) == (0.0, 1, 1)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile_high(values, 0.95) == 95.0 and percentile_low(values, 0.95) == 6.0
    assert percentile_high([3.0], 0.95) == 3.0 and percentile_high([], 0.5) is None
    assert percentile_high([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0


# ---- outputs ----------------------------------------------------------------------------------


def test_case_csv_and_json_fields(replay_dirs: Path) -> None:
    write_vocab(replay_dirs / "golden", [f"tok{i}" for i in range(V)])
    summary = _run(replay_dirs)
    with open(summary.cases_csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CASE_COLUMNS
    for name in ("replay_mode", "changed_steps", "flip_margins", "my_flip_margins", "my_ranks_in_golden",
                 "golden_ranks_in_mine", "mean_kl", "p95_kl", "mean_cosine", "p95_cosine"):
        assert name in CASE_COLUMNS
    by_key = {row["key"]: row for row in rows}
    assert by_key["3"]["replay_mode"] == "step" and by_key["3"]["changed_steps"] == "1 4"
    assert [float(v) for v in by_key["3"]["flip_margins"].split()] == pytest.approx([0.05, 0.05], abs=1e-3)
    assert by_key["3"]["my_ranks_in_golden"] == "2 2" and by_key["1"]["changed_steps"] == ""
    assert float(by_key["5"]["p95_kl"]) >= float(by_key["5"]["mean_kl"]) > 0
    assert {row["noise_floor"] for row in rows} == {"flags: bf16"}  # the floor each verdict used
    document = json.loads(summary.cases_json_path.read_text(encoding="utf-8"))
    assert {k: document["options"][k] for k in FLOOR} == FLOOR
    assert document["floor"]["source"] == "flags" and document["floor"]["tolerances"]["noise_kl"] == 0.13
    case = next(c for c in document["cases"] if c["key"] == 4)
    assert case["replay_mode"] == "step" and case["changed_steps"] == [1, 3]
    change = case["changes"][1]
    assert set(change) >= {"token", "golden_token", "my_token", "flip_margin", "my_flip_margin", "my_rank_in_golden",
                           "golden_rank_in_mine", "golden_token_text", "my_token_text"}
    assert change["golden_token_text"] == f"tok{change['golden_token']}"
    assert case["my_manifest"]["replay"]["mode"] == "step" and case["golden_manifest"]["replay"] is None
    assert {"my_flip_margin", "my_top1_rank_in_golden", "golden_top1_rank_in_mine"} <= set(case["steps"][3])
    free = json.loads(run_compare(CompareOptions(replay_dirs / "golden", replay_dirs / "golden",
                                                 replay_dirs / "o2"), now=NOW).cases_json_path.read_text())
    assert all(c["replay_mode"] is None for c in free["cases"])


# ---- calibration and --tolerances -------------------------------------------------------------


def _noise_pair(root: Path, cases: int = 12, steps: int = 8) -> None:
    """A known-good pair: golden plus small noise, some near-ties flipped by it."""
    for key in range(cases):
        golden, mine = [], []
        for s in range(steps):
            if (key + s) % 5 == 0:
                g, m = _near_tie(200 + key * steps + s, margin=0.02 + 0.01 * (s % 3))
            else:
                g = _base(200 + key * steps + s)
                m = _noisy(g, 0.02, key * steps + s)
            golden.append(g)
            mine.append(m)
        write_replay_case(root, "cal", key, golden, mine)


def test_calibrate_suggests_factor_times_the_p99(tmp_path: Path) -> None:
    _noise_pair(tmp_path)
    options = CompareOptions(tmp_path / "golden", tmp_path / "mine", tmp_path / "out")
    result = calibrate(options, safety_factor=2.0, now=NOW)
    assert result.path == tmp_path / "out" / "logits_cmp_tolerances_20240506070809.json"
    assert result.cases == result.replayed_cases == 12 and result.steps == 96
    assert result.change_margins.count == sum(1 for k in range(12) for s in range(8) if (k + s) % 5 == 0)
    # the rule: 2 x the nearest-rank 0.99 quantile, rounded up to two significant digits
    assert result.suggested["noise_kl"] >= 2 * result.kl.p99 and result.suggested["noise_kl"] <= 2.2 * result.kl.p99
    assert 2 * 0.04 <= result.suggested["tie_tolerance"] <= 2 * 0.045
    # the margin: what the changes measured, at least what noise at the KL bound overturns
    assert result.suggested["noise_margin"] == max(result.suggested["tie_tolerance"],
                                                   2 * math.sqrt(result.suggested["noise_kl"]))
    assert 1 - result.suggested["noise_cosine"] >= 2 * result.one_minus_cosine.p99
    text = format_calibration(result)
    assert "rule: each tolerance = 2 x the 0.99 quantile" in text and "--noise-kl" in text
    document = json.loads(result.path.read_text(encoding="utf-8"))
    assert document["schema"] == "logitsdump-tolerances" and document["measured"]["steps"] == 96
    # the suggestions make the known-good pair come out as noise or consistent
    loaded = load_tolerances(result.path)
    assert loaded == dict(result.suggested)
    summary = run_compare(CompareOptions(tmp_path / "golden", tmp_path / "mine", tmp_path / "o2", **loaded), now=NOW)
    assert all(c.verdict in ("consistent", "noise") for c in summary.cases)
    # a second calibration never overwrites the first
    assert calibrate(options, now=NOW).path.name.endswith("_1.json")


def test_calibrate_without_changes_or_replay_says_so(tmp_path: Path) -> None:
    golden = [_base(300 + s) for s in range(4)]
    write_replay_case(tmp_path, "t", 1, golden, [_noisy(g, 0.01, s) for s, g in enumerate(golden)], replayed=False)
    result = calibrate(CompareOptions(tmp_path / "golden", tmp_path / "mine", tmp_path / "out"), now=NOW)
    assert "noise_margin" not in result.suggested and "noise_kl" in result.suggested
    assert any("no argmax change" in n for n in result.notes) and any("no replayed case" in n for n in result.notes)


def test_cli_calibrate_then_tolerances_round_trip(tmp_path: Path, capsys) -> None:
    _noise_pair(tmp_path)
    args = ["compare", "-gp", str(tmp_path / "golden"), "-mp", str(tmp_path / "mine")]
    assert main([*args, "-o", str(tmp_path / "cal"), "--calibrate", "--safety-factor", "3"]) == 0
    out = capsys.readouterr().out
    assert "suggested:" in out and "x the 0.99 quantile" in out and "rule: each tolerance = 3 x" in out
    (file,) = (tmp_path / "cal").glob("logits_cmp_tolerances_*.json")
    assert not list((tmp_path / "cal").glob("logits_cmp_res_*"))  # calibrate writes no verdict files
    assert main([*args, "-o", str(tmp_path / "o"), "--tolerances", str(file), "--noise-kl", "0.5"]) == 0
    (cases_json,) = (tmp_path / "o").glob("logits_cmp_cases_*.json")
    options = json.loads(cases_json.read_text())["options"]
    saved = json.loads(file.read_text())["tolerances"]
    assert options["noise_margin"] == saved["noise_margin"] and options["tie_tolerance"] == saved["tie_tolerance"]
    assert options["noise_cosine"] == saved["noise_cosine"] and options["noise_kl"] == 0.5  # the flag wins


@pytest.mark.parametrize("content", ["{", "[]", '{"tolerances": 3}', '{"noise_kl": "x"}', '{"noise_kl": -1}',
                                     '{"noise_cosine": 2}', '{"other": 1}', '{"noise_margin": true}'])
def test_bad_tolerance_files_exit_1(tmp_path: Path, capsys, content: str) -> None:
    _noise_pair(tmp_path, cases=1, steps=1)
    bad = tmp_path / "tol.json"
    bad.write_text(content)
    with pytest.raises(DataError):
        load_tolerances(bad)
    args = ["compare", "-gp", str(tmp_path / "golden"), "-mp", str(tmp_path / "mine"), "-o", str(tmp_path / "o")]
    assert main([*args, "--tolerances", str(bad)]) == 1
    assert "--tolerances" in capsys.readouterr().err
    assert main([*args, "--tolerances", str(tmp_path / "missing.json")]) == 1


@pytest.mark.parametrize("flags", [["--noise-kl", "-1"], ["--noise-cosine", "1.5"], ["--noise-margin", "nan"],
                                   ["--safety-factor", "0.5"]])
def test_new_flag_ranges_exit_2(tmp_path: Path, flags: list[str]) -> None:
    _noise_pair(tmp_path, cases=1, steps=1)
    with pytest.raises(SystemExit) as info:
        main(["compare", "-gp", str(tmp_path / "golden"), "-mp", str(tmp_path / "mine"), "-o", str(tmp_path / "o"),
              *flags])
    assert info.value.code == 2


# ---- the noise floor: measured, flags, or the dtype's default -----------------------------------


def test_default_floor_is_scale_free_and_conservative() -> None:
    bf16, fp16, fp32 = (default_tolerances(d) for d in ("bf16", "fp16", "fp32"))
    # KL (on probabilities) anchored on llama.cpp's bf16 measurement on LLaMA-3-8B, scaled by eps^2
    assert bf16["noise_kl"] == 8e-4 and fp16["noise_kl"] == pytest.approx(8e-4 / 64, rel=1e-2)
    assert fp32["noise_kl"] < 1e-12
    for table in (bf16, fp16, fp32):  # the margin noise at the KL bound overturns
        assert table["noise_margin"] == pytest.approx(2 * math.sqrt(table["noise_kl"]), rel=1e-2)
        assert table["noise_cosine"] == -1.0 and table["noise_mean_kl"] is None
    bare = Tolerances()
    assert (bare.noise_kl, bare.noise_margin, bare.noise_cosine) == (
        bf16["noise_kl"], bf16["noise_margin"], bf16["noise_cosine"])
    assert least_precise(["fp32", "bf16", None], "fp32") == "bf16" and least_precise([], "fp16") == "fp16"
    # far below the old tiny-model constants a real model's bug would hide under (KL 0.13, margin 1.0)
    assert bf16["noise_kl"] < 0.13 / 100 and bf16["noise_margin"] < 1.0 / 10


def _drift_case(root: Path, key: int, scale: float, steps: int = 6) -> None:
    """A replayed case whose test logits are golden's times `scale` (sharper or flatter), no argmax change."""
    golden = [_base(500 + key * steps + s) for s in range(steps)]
    write_replay_case(root, "floor", key, golden, [g * scale for g in golden])


def test_without_a_floor_a_small_real_bug_is_not_called_noise(tmp_path: Path) -> None:
    _drift_case(tmp_path, 1, 0.75)  # a systematic bug: every step's distribution flattened
    _drift_case(tmp_path, 2, 1.0 + 1e-6)  # pure rounding-size noise
    default = {c.key: c for c in run_compare(CompareOptions(tmp_path / "golden", tmp_path / "mine",
                                                            tmp_path / "d"), now=NOW).cases}
    assert 0.01 < default[1].worst_kl < 0.13  # the premise: the old tiny-model default (0.13) called it noise
    # above the dtype's default but below the gross bound: without a reference neither noise nor accused
    assert default[1].verdict == "unreferenced" and "drift apart" in default[1].reason
    assert "dump a control" in default[1].reason and not default[1]
    assert default[2].verdict == "consistent"
    old = {c.key: c.verdict for c in _run(tmp_path).cases}
    assert old == {1: "consistent", 2: "consistent"}  # what the old constants said
    (document,) = [json.loads(p.read_text()) for p in (tmp_path / "d").glob("logits_cmp_cases_*.json")]
    floor = document["floor"]
    assert floor["source"] == "default" and floor["dtype"] == "bf16"  # the test manifests' dtype
    assert "logitsdump calibrate" in floor["description"] and floor["tolerances"]["noise_kl"] == 8e-4
    assert document["options"]["noise_kl"] == 8e-4 and document["options"]["noise_margin"] == 0.0566


def test_without_a_floor_a_gross_bug_is_still_accused(tmp_path: Path) -> None:
    _drift_case(tmp_path, 1, 0.05)  # every step's distribution nearly flat: beyond any healthy pair
    (case,) = run_compare(CompareOptions(tmp_path / "golden", tmp_path / "mine", tmp_path / "d"), now=NOW).cases
    assert case.worst_kl > gross_bound("bf16").kl
    assert case.verdict == "precision-suspect" and "beyond any healthy pair" in case.reason


def test_the_gross_bound_scales_with_the_dtype() -> None:
    bf16, fp16 = gross_bound("bf16"), gross_bound("fp16")
    assert (bf16.kl, bf16.margin) == (0.8, 1.6)  # 2 x the noisiest healthy pair measured (floor.py)
    assert fp16.kl == pytest.approx(0.8 / 64, rel=1e-2) and fp16.margin == pytest.approx(1.6 / 8, rel=1e-2)


def test_the_case_mean_kl_rule_scales_with_the_number_of_steps() -> None:
    tol = Tolerances(noise_kl=1.0, noise_mean_kl=0.01, noise_mean_kl_steps=16)
    assert tol.mean_kl_tolerance(16) == pytest.approx(0.01) and tol.mean_kl_tolerance(32) == pytest.approx(0.01)
    assert tol.mean_kl_tolerance(4) == pytest.approx(0.02) and Tolerances().mean_kl_tolerance(4) is None
    assert Tolerances(noise_kl=0.015, noise_mean_kl=0.01, noise_mean_kl_steps=16).mean_kl_tolerance(1) == 0.015


def test_calibrate_command_writes_the_floor_compare_names(tmp_path: Path, capsys) -> None:
    _noise_pair(tmp_path / "a", cases=6)
    _noise_pair(tmp_path / "b", cases=6)
    floor_file = tmp_path / "floor.json"
    pairs = ["-gp", str(tmp_path / "a" / "golden"), "-mp", str(tmp_path / "a" / "mine"),
             "-gp", str(tmp_path / "b" / "golden"), "-mp", str(tmp_path / "b" / "mine")]
    assert main(["calibrate", *pairs, "-o", str(tmp_path / "cal"), "--tolerances-file", str(floor_file)]) == 0
    out = capsys.readouterr().out
    assert "calibration: 12 case(s) (12 replayed), 96 judged step(s)" in out and f"tolerances: {floor_file}" in out
    document = json.loads(floor_file.read_text())
    assert document["measured"]["golden_path"] == [str(tmp_path / "a" / "golden"), str(tmp_path / "b" / "golden")]
    assert document["measured"]["dtype"] == "bf16" and document["tolerances"]["noise_mean_kl_steps"] == 8
    assert document["tolerances"]["noise_mean_kl"] > 0
    args = ["compare", "-gp", str(tmp_path / "a" / "golden"), "-mp", str(tmp_path / "a" / "mine")]
    assert main([*args, "-o", str(tmp_path / "o"), "--tolerances", str(floor_file)]) == 0
    out = capsys.readouterr().out
    assert f"floor: measured noise floor from {floor_file}, measured on 12 known-healthy case(s)" in out
    (cases_json,) = (tmp_path / "o").glob("logits_cmp_cases_*.json")
    result = json.loads(cases_json.read_text())
    assert result["floor"]["source"] == "measured" and result["floor"]["path"] == str(floor_file)
    assert result["options"]["tolerances_file"] == str(floor_file)
    assert all(c["verdict"] in ("consistent", "noise") for c in result["cases"])
    assert main(["calibrate", *pairs[:6], "-o", str(tmp_path / "cal")]) == 2  # unpaired folders: a usage error
    assert "give as many -mp as -gp" in capsys.readouterr().err


def test_a_floor_without_argmax_changes_takes_the_margin_from_its_kl(tmp_path: Path) -> None:
    floor_file = tmp_path / "floor.json"
    floor_file.write_text(json.dumps({"tolerances": {"noise_kl": 0.02, "noise_cosine": 0.99}}))
    floor = CompareOptions("g", "m", tolerances_file=floor_file).floor(["bf16"])
    assert floor.source == "measured"
    assert floor.tolerances.noise_margin == pytest.approx(2 * math.sqrt(0.02), rel=1e-2)
    assert floor.tolerances.noise_cosine == 0.99 and floor.tolerances.noise_mean_kl is None
    flags = CompareOptions("g", "m", noise_kl=0.5).floor(["fp32"])
    assert flags.source == "flags" and flags.tolerances.noise_kl == 0.5
    assert flags.tolerances.noise_margin == pytest.approx(2 * math.sqrt(0.5), rel=1e-2)
    assert CompareOptions("g", "m", dtype="fp16").floor([]).tolerances.noise_kl == pytest.approx(1.25e-5)


def test_free_runs_take_the_tie_tolerance_of_the_floor(tmp_path: Path) -> None:
    """A free run is a tie-flip only where noise at the floor could overturn golden's choice (issue 15)."""
    for dtype, margin in (("bf16", 0.0566), ("fp16", 0.00707)):
        floor = CompareOptions("g", "m", dtype=dtype).floor([])
        assert floor.tolerances.tie == floor.tolerances.noise_margin == pytest.approx(margin)
        assert f"tie <= {margin:.3g} logits" in floor.description
    assert CompareOptions("g", "m", noise_kl=0.01).floor(["bf16"]).tolerances.tie == pytest.approx(0.2)
    floor_file = tmp_path / "floor.json"
    floor_file.write_text(json.dumps({"tolerances": {"noise_kl": 0.02, "tie_tolerance": 0.3}}))
    assert CompareOptions("g", "m", tolerances_file=floor_file).floor(["bf16"]).tolerances.tie == 0.3
    given = CompareOptions("g", "m", tolerances_file=floor_file, tie_tolerance=0.05).floor(["bf16"])
    assert given.tolerances.tie == 0.05 and given.tolerances.noise_margin == pytest.approx(0.283, rel=1e-2)


# ---- the report of a replayed run -------------------------------------------------------------


def test_report_of_replayed_cases_plots_every_step(replay_dirs: Path) -> None:
    summary = _run(replay_dirs)
    path = write_report(summary)
    text = path.read_text(encoding="utf-8")
    cards = re.findall(r'<div class="card v-[^"]*" data-verdict="([^"]+)"', text)
    assert cards == list(REPLAY_VERDICTS)
    assert "were <b>replayed</b>" in text and "noise margin" in text
    sections = re.findall(r'<section class="case [^"]*" id="case-\d+".*?</section>', text, flags=re.S)
    assert len(sections) == 6
    by_key = {int(re.search(r"task #(\d+)", s).group(1)): s for s in sections}
    # all N steps plotted, nothing shaded as "not judged", every change marked in each of the 3 plots
    assert 'class="unjudged"' not in text
    for key, section in by_key.items():
        case = next(c for c in summary.cases if c.key == key)
        assert len(re.findall(r'<polyline class="series"', section)) >= 3
        assert section.count('<circle class="dot') >= 3 * 5
        extra = [t for t in case.changed_steps]
        focus = load_compare(summary).cases[[c.key for c in summary.cases].index(key)].focus_step
        minor = [t for t in extra if focus is None or t != focus]
        assert section.count('class="marker minor"') == 3 * len(minor)
    noise = by_key[3]
    assert noise.count('class="col changed') == 2 and "Argmax changes" in noise and "near-tie" in noise
    assert " own</span>" in noise  # the second row is the test's own choice
    suspect = by_key[4]
    assert "clear margin" in suspect and "the argmax change where golden was surest" in suspect
    assert "Top-10 candidates at token 3" in suspect  # the clear change, not the first (near-tie) one
    assert "the step with the largest KL" in by_key[5]
    # the terminal summary
    summary_text = format_summary(summary)
    assert "cases: 6 (identical 1, consistent 1, noise 1, precision-suspect 2, incomplete 1)" in summary_text
    assert "\nverdicts: 6 replayed case(s) by the noise floor (noise margin 1.0 logits" in summary_text
    # cases and token pairs counted apart; msit's thresholds named as what they decide
    assert re.search(r"^token pairs: \d+ \(against msit's per-token thresholds: passed", summary_text, flags=re.M)
    assert "(each token pair's pass/fail)" in summary_text and "replayed verdicts do not use them" in summary_text
    assert re.search(r"^  task #4 .* precision-suspect +3 ", summary_text, flags=re.M)


def test_report_of_a_mixed_run_shows_all_verdicts(tmp_path: Path) -> None:
    golden = [_base(400 + s) for s in range(3)]
    write_replay_case(tmp_path, "a", 1, golden, [_noisy(g, 0.01, s) for s, g in enumerate(golden)])
    golden = [_base(410 + s) for s in range(3)]
    write_replay_case(tmp_path, "b", 2, golden, [_noisy(g, 0.01, s) for s, g in enumerate(golden)], replayed=False)
    text = write_report(_run(tmp_path)).read_text(encoding="utf-8")
    cards = re.findall(r'<div class="card v-[^"]*" data-verdict="([^"]+)"', text)
    assert cards == ["identical", "consistent", "noise", "tie-flip", "divergent", "precision-suspect", "incomplete"]
    assert "1 of 2 cases were <b>replayed</b>" in text
