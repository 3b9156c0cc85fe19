"""compare end to end on real files: pairing, msit's rows, verdicts, safety, outputs."""

from __future__ import annotations

import csv
import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from logitsdump.compare import CompareOptions, run_compare
from logitsdump.compare.outputs import CSV_COLUMNS
from logitsdump.compare.pairing import pair_files
from logitsdump.errors import DataError, UsageError, UserError
from logitsdump.report import format_summary
from logitsdump.store import CaseManifest, append_manifest, write_vocab

from helpers import ROW7_G, ROW7_M

NOW = datetime(2024, 5, 6, 7, 8, 9)
V = 32


def _save(folder: Path, name: str, values) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(torch.as_tensor(np.asarray(values)).reshape(1, -1), folder / name)


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def _base(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(V) * 2).astype(np.float32)


def _run(tmp_path: Path, **kwargs):
    options = CompareOptions(tmp_path / "golden", tmp_path / "mine", tmp_path / "out", **kwargs)
    return run_compare(options, now=NOW)


# ---- msit's example rows ----------------------------------------------------------------------


def test_msit_example_rows_literally(tmp_path: Path) -> None:
    golden, mine = tmp_path / "golden", tmp_path / "mine"
    same = np.array([8.5, 1.0, -2.0], dtype=np.float16)
    _save(golden, "logits_dev.jsonl_1352_0.pth", same)
    _save(mine, "logits_dev.jsonl_1352_0.pth", same)
    _save(golden, "logits_dev.jsonl_7_0.pth", ROW7_G)
    _save(mine, "logits_dev.jsonl_7_0.pth", ROW7_M)
    _save(golden, "logits_dev.jsonl_20_0.pth", [1.0, 2.0])
    _save(mine, "logits_dev.jsonl_20_0.pth", [1.0, float("nan")])
    _save(golden, "logits_dev.jsonl_40_0.pth", [1.0, 2.0])
    summary = _run(tmp_path)
    rows = _read_csv(summary.csv_path)
    assert tuple(rows[0]) == CSV_COLUMNS
    msit = [",".join(row[:10]) for row in rows[1:]]
    assert msit == [
        "logits_dev.jsonl_7_0.pth,7,0,0.9863877285,0.1400146484375,0.015430923412590891,0.6015625,0.0078125,False,",
        "logits_dev.jsonl_20_0.pth,20,0,NA,NA,NA,NA,NA,NA,my_data includes NAN or inf.",
        "logits_dev.jsonl_1352_0.pth,1352,0,1.0,0,0.0,0.0,0.0078125,True,",
        "logits_dev.jsonl_40_0.pth,NA,NA,NA,NA,NA,NA,NA,NA,only_in_golden_path",
    ]
    assert (summary.rows, summary.compared, summary.passed, summary.failed, summary.na) == (4, 2, 1, 1, 2)


# ---- pairing ----------------------------------------------------------------------------------


def test_pairing_order_and_problem_rows(tmp_path: Path) -> None:
    golden, mine = tmp_path / "golden", tmp_path / "mine"
    names = [
        "logits_humanevalx_python_3_0.pth", "logits_humanevalx_cpp_10_1.pth", "logits_humanevalx_cpp_2_0.pth",
        "logits_boolq_10_0.pth", "logits_boolq_2_1.pth", "logits_boolq_2_0.pth", "logits_bad.pth",
    ]
    for name in names:
        _save(golden, name, _base())
        _save(mine, name, _base())
    _save(mine, "logits_boolq_1_0.pth", _base())
    (golden / "notes.txt").write_text("x")
    (golden / "logits_boolq_3_0.pth.bak").write_text("x")
    pairs = pair_files(golden, mine)
    assert [p.file_name for p in pairs] == [
        "logits_boolq_2_0.pth", "logits_boolq_2_1.pth", "logits_boolq_10_0.pth",
        "logits_humanevalx_cpp_2_0.pth", "logits_humanevalx_cpp_10_1.pth", "logits_humanevalx_python_3_0.pth",
        "logits_bad.pth", "logits_boolq_1_0.pth",
    ]
    assert pairs[-2].problem.startswith("parse_error:")
    assert pairs[-1].problem == "only_in_my_path"
    assert pairs[3].key == "cpp/2" and pairs[3].subject == "humanevalx_cpp"


# ---- verdicts ---------------------------------------------------------------------------------


def _case(golden: Path, mine: Path, subject: str, key: int, steps: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for t, (g, m) in enumerate(steps):
        if g is not None:
            _save(golden, f"logits_{subject}_{key}_{t}.pth", g)
        if m is not None:
            _save(mine, f"logits_{subject}_{key}_{t}.pth", m)


def _verdict_dirs(tmp_path: Path) -> None:
    golden, mine = tmp_path / "golden", tmp_path / "mine"
    base = _base()
    base[3] = 9.0  # a clear top-1
    noisy = base + np.float32(1e-5)
    tie = base.copy()
    tie[5] = 8.95  # golden margin 0.05 between token 3 and token 5
    tie_swapped = tie.copy()
    tie_swapped[3], tie_swapped[5] = 8.95, 9.0
    far = base.copy()
    far[7] = 20.0  # test picks token 7, far behind token 3 in golden
    _case(golden, mine, "task", 1, [(base, base), (base, base)])
    _case(golden, mine, "task", 2, [(base, noisy), (base, noisy)])
    _case(golden, mine, "task", 3, [(base, base), (tie, tie_swapped), (base, far)])
    _case(golden, mine, "task", 4, [(base, noisy), (base, far)])
    _case(golden, mine, "task", 5, [(base, 0.5 * base), (base, base)])
    _case(golden, mine, "task", 6, [(base, base), (base, None), (base, base)])
    _case(golden, mine, "task", 7, [(base, base), (base, base)])
    (mine / "logits_task_7_1.pth").write_bytes(b"PK\x03\x04 not really")
    _case(golden, mine, "task", 8, [(tie, tie_swapped), (base, None)])  # missing after the flip


def test_verdicts(tmp_path: Path) -> None:
    _verdict_dirs(tmp_path)
    summary = _run(tmp_path, tie_tolerance=0.1)
    verdicts = {case.key: case for case in summary.cases}
    assert {k: v.verdict for k, v in verdicts.items()} == {
        1: "identical", 2: "consistent", 3: "tie-flip", 4: "divergent", 5: "divergent",
        6: "incomplete", 7: "incomplete", 8: "tie-flip",
    }
    tie = verdicts[3]
    assert tie and tie.first_diff_token == 1 and tie.golden_token == 3 and tie.my_token == 5
    assert tie.flip_margin == pytest.approx(0.05, abs=1e-5)
    assert tie.tokens_judged == 2 and tie.tokens_total == 3
    assert not verdicts[4] and verdicts[4].flip_margin > 1.0 and verdicts[4].my_token == 7
    assert "fails the thresholds" in verdicts[5].reason
    assert "unreadable" in verdicts[7].reason
    assert dict(summary.verdicts) == {
        "identical": 1, "consistent": 1, "noise": 0, "tie-flip": 2, "divergent": 2, "precision-suspect": 0,
        "incomplete": 2, "setup-differs": 0, "unreferenced": 0,
    }
    # a tighter tolerance turns the tie into a divergence
    assert {c.key: c.verdict for c in _run(tmp_path, tie_tolerance=0.01).cases}[3] == "divergent"
    # the default (fp16's conservative 0.00707 logits, no manifests: -d fp16) would call it divergent, but with
    # no reference for this model's noise a change below the gross bound is unreferenced; a gross one is not
    default = _run(tmp_path)
    assert default.floor.tolerances.tie == pytest.approx(0.00707)
    by_key = {c.key: c for c in default.cases}
    assert by_key[3].verdict == "unreferenced" and "dump a control" in by_key[3].reason
    assert by_key[4].verdict == "divergent" and "beyond any healthy pair" in by_key[4].reason


def test_case_outputs(tmp_path: Path) -> None:
    _verdict_dirs(tmp_path)
    golden = tmp_path / "golden"
    write_vocab(golden, [f"tok{i}" for i in range(V)])
    append_manifest(golden, CaseManifest(
        task="boolq", subject="task", key=3, index=3,
        files=("logits_task_3_0.pth", "logits_task_3_1.pth", "logits_task_3_2.pth"),
        input_token_ids=(1, 2), output_token_ids=(3, 3, 3), output_tokens=("a", "b", "c"), output_text="abc",
        query="q?", prompt_sha256="0" * 64, model_name="tiny", model_path="/m", dtype="fp32",
        logits_dtype="float32", vocab_size=V, device="cpu",
    ))
    summary = _run(tmp_path, tie_tolerance=0.1)
    document = json.loads(summary.cases_json_path.read_text(encoding="utf-8"))
    assert document["schema_version"] == 3
    assert document["options"]["tie_tolerance"] == 0.1
    assert document["options"]["dtype"] == "fp32"  # -d not given: the manifest's dtype
    case = next(c for c in document["cases"] if c["key"] == 3)
    assert case["verdict"] == "tie-flip" and case["passed"] is True
    assert case["golden_token_text"] == "tok3" and case["my_token_text"] == "tok5"
    assert case["golden_manifest"]["output_text"] == "abc" and case["my_manifest"] is None
    assert [s["token_id"] for s in case["steps"]] == [0, 1, 2]
    assert case["steps"][1]["my_top1_text"] == "tok5"
    cases_csv = _read_csv(summary.cases_csv_path)
    assert cases_csv[0][:3] == ["subject", "key", "verdict"]
    assert len(cases_csv) == 1 + len(summary.cases)


# ---- safety and robustness -------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_not_run_and_the_run_goes_on(tmp_path: Path) -> None:
    golden, mine = tmp_path / "golden", tmp_path / "mine"
    marker = tmp_path / "marker"
    _case(golden, mine, "t", 1, [(_base(), _base())])
    _save(golden, "logits_t_2_0.pth", _base())
    mine.mkdir(exist_ok=True)
    torch.save(_Evil(marker), mine / "logits_t_2_0.pth")
    torch.save(torch.zeros(2, V), golden / "logits_t_3_0.pth")  # 2-D: its own row
    torch.save(torch.zeros(2, V), mine / "logits_t_3_0.pth")
    summary = _run(tmp_path)
    assert not marker.exists()
    rows = {row[0]: row for row in _read_csv(summary.csv_path)[1:]}
    assert rows["logits_t_1_0.pth"][8] == "True"
    assert rows["logits_t_2_0.pth"][8] == "NA" and "my_data unreadable" in rows["logits_t_2_0.pth"][9]
    assert "golden_data unreadable" in rows["logits_t_3_0.pth"][9]


def test_formula_file_names_are_neutralised(tmp_path: Path) -> None:
    _case(tmp_path / "golden", tmp_path / "mine", "=HYPERLINK(x)", 1, [(_base(), _base())])
    _save(tmp_path / "golden", "=cmd_1;2_3_0.pth", _base())
    summary = _run(tmp_path)
    text = summary.csv_path.read_text(encoding="utf-8")
    assert "\n=" not in text and "'=cmd_1;2_3_0.pth" in text


def test_never_overwrites_and_is_deterministic(tmp_path: Path) -> None:
    _verdict_dirs(tmp_path)
    first = _run(tmp_path)
    before = first.csv_path.read_bytes()
    second = _run(tmp_path, workers=1)
    assert second.csv_path != first.csv_path and second.csv_path.name.endswith("_1.csv")
    assert first.csv_path.read_bytes() == before == second.csv_path.read_bytes()
    assert first.cases_csv_path.read_bytes() == second.cases_csv_path.read_bytes()


def test_output_problems_found_before_work(tmp_path: Path) -> None:
    _verdict_dirs(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        run_compare(CompareOptions(tmp_path / "golden", tmp_path / "mine", blocker))


def test_input_and_option_errors(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match="does not exist"):
        run_compare(CompareOptions(tmp_path / "nope", tmp_path / "mine", tmp_path / "out"))
    for bad in ({"cosine": 1.5}, {"kl": -1.0}, {"l1": -2.0}, {"dtype": "int8"}, {"topk": 0},
                {"tie_tolerance": -1.0}):
        with pytest.raises(UsageError):
            run_compare(CompareOptions(tmp_path / "mine", tmp_path / "mine", tmp_path / "out", **bad))
    assert not (tmp_path / "out").exists()


# ---- determinism across pools and thread counts -----------------------------------------------


def _mixed_dirs(tmp_path: Path, pairs: int = 40, vocab: int = 20_000) -> tuple[Path, Path]:
    """Pairs long enough for several chunks and BLAS blocks, in every float dtype, some identical,
    plus a NaN row, a missing file and an unreadable one."""
    golden, mine = tmp_path / "golden", tmp_path / "mine"
    rng = np.random.default_rng(5)
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    for i in range(pairs):
        g = rng.standard_normal(vocab) * 4 + (80 if i % 7 == 3 else 0)  # some need the shifted exp
        m = g if i % 5 == 0 else g + rng.standard_normal(vocab) * 10.0 ** -(1 + i % 4)
        name = f"logits_mix_{i // 4}_{i % 4}.pth"
        for folder, values in ((golden, g), (mine, m)):
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(torch.from_numpy(values).to(dtypes[i % 4]).unsqueeze(0), folder / name)
    _save(golden, "logits_mix_90_0.pth", [1.0, 2.0])
    _save(mine, "logits_mix_90_0.pth", [1.0, float("nan")])
    _save(golden, "logits_mix_91_0.pth", [1.0, 2.0])
    (mine / "logits_mix_92_0.pth").write_bytes(b"PK\x03\x04 truncated")
    _save(golden, "logits_mix_92_0.pth", [1.0, 2.0])
    return golden, mine


def _outputs(summary) -> tuple[bytes, bytes, dict]:
    document = json.loads(summary.cases_json_path.read_text(encoding="utf-8"))
    return summary.csv_path.read_bytes(), summary.cases_csv_path.read_bytes(), document["cases"]


def test_one_worker_threads_and_processes_give_identical_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from logitsdump.compare import measure as run_module

    golden, mine = _mixed_dirs(tmp_path)
    one = _outputs(run_compare(CompareOptions(golden, mine, tmp_path / "o1", workers=1), now=NOW))
    threads = _outputs(run_compare(CompareOptions(golden, mine, tmp_path / "o2", workers=3), now=NOW))
    monkeypatch.setattr(run_module, "PROCESS_MIN_PAIRS", 1)
    monkeypatch.setattr(run_module, "BATCH", 3)
    processes = _outputs(run_compare(CompareOptions(golden, mine, tmp_path / "o3", workers=2), now=NOW))
    assert one == threads == processes
    rows = _read_csv(tmp_path / "o1" / f"logits_cmp_res_{NOW:%Y%m%d%H%M%S}.csv")
    assert len(rows) == 1 + 43 and sum(row[8] == "NA" for row in rows[1:]) == 3


_THREADS_SCRIPT = """
import sys
import torch
torch.set_num_threads(int(sys.argv[3]))
from datetime import datetime
from logitsdump.compare import CompareOptions, run_compare
summary = run_compare(CompareOptions(sys.argv[1], sys.argv[2], sys.argv[4], workers=int(sys.argv[5])),
                      now=datetime(2024, 1, 1))
sys.stdout.write(summary.csv_path.read_text(encoding="utf-8"))
"""


def test_results_do_not_depend_on_blas_omp_or_torch_threads(tmp_path: Path) -> None:
    """msit bug 5.11: the same bytes with 1 or 2 BLAS/OpenMP/torch threads (vectors > 10000
    elements, where a threaded BLAS dot would split the sum differently)."""
    import subprocess
    import sys

    golden, mine = _mixed_dirs(tmp_path, pairs=12, vocab=30_000)
    outputs = set()
    for n, (threads, workers) in enumerate(((1, 1), (2, 1), (2, 2), (4, 3))):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
        result = subprocess.run(
            [sys.executable, "-c", _THREADS_SCRIPT, str(golden), str(mine), str(threads),
             str(tmp_path / f"out{n}"), str(workers)],
            capture_output=True, text=True, env=env, check=True,
        )
        outputs.add(result.stdout)
    assert len(outputs) == 1 and "logits_mix_0_1.pth" in outputs.pop()


def test_the_ulp_dtype_comes_from_the_manifests_unless_given(tmp_path: Path) -> None:
    """-d not given: the least precise dtype the manifests record (here bf16 beside fp32); msit's fp16 for
    folders without a manifest; a given -d wins."""
    _verdict_dirs(tmp_path)
    assert json.loads(_run(tmp_path).cases_json_path.read_text())["options"]["dtype"] == "fp16"  # no manifest
    for folder, dtype in (("golden", "fp32"), ("mine", "bf16")):
        append_manifest(tmp_path / folder, CaseManifest(
            task="boolq", subject="task", key=3, index=3, files=("logits_task_3_0.pth",), input_token_ids=(1,),
            output_token_ids=(3,), output_tokens=("a",), output_text="a", query="q?", prompt_sha256="0" * 64,
            model_name="tiny", model_path="/m", dtype=dtype, logits_dtype="float32", vocab_size=V, device="cpu"))
    summary = _run(tmp_path)
    assert json.loads(summary.cases_json_path.read_text())["options"]["dtype"] == "bf16"
    assert "within 1 ULP of bf16" in format_summary(summary)
    assert json.loads(_run(tmp_path, dtype="fp16").cases_json_path.read_text())["options"]["dtype"] == "fp16"
