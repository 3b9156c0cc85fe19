"""End to end with the real lm-evaluation-harness: `lm_eval --log_samples` on the tiny model in fp32 and bf16,
then bcanalyze -> dump --from-samples -> compare -> report.

The tasks are local YAML files over tests/data/lmeval/arith.jsonl (48 docs): arith_mc (multiple choice,
loglikelihood, acc/acc_norm) and arith_gen (generate_until, exact_match). The tiny model has random
weights, so which docs flip between fp32 and bf16 is whatever the two runs logged: the test reads the
flips from the samples files itself and checks that the chain names exactly those docs.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from logitsdump.cli import main
from logitsdump.demo import examples

from helpers import cli_env

pytest.importorskip("lm_eval", reason="the lmeval test extra (pip install -e '.[test,lmeval]')")
pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "lmeval"
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
TOKENS = 4


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(task, dtype) -> the samples file of one `lm_eval` run per dtype, both tasks in each run."""
    work = tmp_path_factory.mktemp("lm_eval")
    tasks = work / "tasks"
    shutil.copytree(DATA, tasks)
    env = cli_env(HF_DATASETS_OFFLINE="1", HF_HOME=str(work / "hf"), HF_DATASETS_CACHE=str(work / "hf" / "ds"),
                  TOKENIZERS_PARALLELISM="false")
    found = {}
    for dtype, torch_name in DTYPES.items():
        out = work / dtype
        command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                   f"pretrained={examples.TINY_MODEL},dtype={torch_name}", "--tasks", "arith_mc,arith_gen",
                   "--include_path", ".", "--device", "cpu", "--batch_size", "1", "--log_samples",
                   "--output_path", str(out)]
        done = subprocess.run(command, cwd=tasks, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        for task in ("arith_mc", "arith_gen"):
            (path,) = out.rglob(f"samples_{task}_*.jsonl")
            found[(task, dtype)] = path
    return found


def logged(path: Path) -> dict[int, dict]:
    """doc_id -> the sample, read with json alone (independently of logitsdump's reader)."""
    return {line["doc_id"]: line for line in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def logits_dir(root: Path, task: str, dtype: str) -> Path:
    return root / "data" / "CPU" / "precision_test" / task / dtype / "tiny_llama" / "logits"


def dump(samples_file: Path, bad: Path, dtype: str, root: Path, *extra: str) -> None:
    assert main(["dump", "--from-samples", str(samples_file), "-bcr", str(bad), "--model_config_path",
                 str(examples.model_config(dtype)), "-tr", str(TOKENS), "--output_dir", str(root),
                 "--device", "cpu", *extra]) == 0


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def test_multiple_choice_flips_are_found_dumped_and_named(samples, tmp_path, capsys):
    golden_log, test_log = logged(samples[("arith_mc", "fp32")]), logged(samples[("arith_mc", "bf16")])
    flipped = sorted(d for d in golden_log if golden_log[d]["acc"] != test_log[d]["acc"])
    assert flipped, "no acc flip between fp32 and bf16: the test needs at least one (grow arith.jsonl)"

    assert main(["bcanalyze", "-gp", str(samples[("arith_mc", "fp32")]), "-mp", str(samples[("arith_mc", "bf16")]),
                 "-o", str(tmp_path / "bc")]) == 0
    (bad,) = (tmp_path / "bc").glob("msit_bad_case_result_*.csv")
    with open(bad, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["key"]) for r in rows] == flipped
    assert {(r["task"], r["metric"]) for r in rows} == {("arith_mc", "acc")}
    for row in rows:
        doc = golden_log[int(row["key"])]
        assert row["doc_hash"] == doc["doc_hash"]
        assert (row["passed_golden"], row["passed_test"]) == (
            str(bool(doc["acc"])).lower(), str(bool(test_log[int(row["key"])]["acc"])).lower())

    capsys.readouterr()
    dump(samples[("arith_mc", "fp32")], bad, "fp32", tmp_path / "golden")
    cases = 4 * len(flipped)
    assert f"dumped {cases} of {cases} cases of {len(flipped)} bad docs (one case per logged request)" in (
        capsys.readouterr().out)
    dump(samples[("arith_mc", "bf16")], bad, "bf16", tmp_path / "test")
    golden_dir, test_dir = logits_dir(tmp_path / "golden", "arith_mc", "fp32"), logits_dir(tmp_path / "test",
                                                                                             "arith_mc", "bf16")
    for folder, log in ((golden_dir, golden_log), (test_dir, test_log)):
        records = manifest(folder)
        assert sorted({r["key"] for r in records}, key=int) == [str(d) for d in flipped]
        assert len(records) == 4 * len(flipped)  # one case per choice
        assert (folder / "vocab.json").is_file()
        for record in records:
            info = record["extra"]["lm_eval"]
            logged_value = float(log[info["doc_id"]]["resps"][info["request"]][0][0])
            assert info["logged_loglikelihood"] == logged_value
            assert info["agrees_with_log"], info  # our replay scores what lm-eval scored
            assert record["extra"]["replay"]["mode"] == "prefill"
            assert record["output_text"] == log[info["doc_id"]]["arguments"][f"gen_args_{info['request']}"]["arg_1"]
            assert len(record["files"]) == min(TOKENS, len(record["output_token_ids"]))
    # fp32 replays lm-eval's own fp32 numbers to float precision
    for record in manifest(golden_dir):
        info = record["extra"]["lm_eval"]
        assert abs(info["loglikelihood"] - info["logged_loglikelihood"]) <= 1e-4 * abs(info["logged_loglikelihood"])

    capsys.readouterr()
    assert main(["compare", "-gp", str(golden_dir), "-mp", str(test_dir), "-o", str(tmp_path / "cmp"),
                 "-d", "bf16"]) == 0
    (cases_json,) = (tmp_path / "cmp").glob("logits_cmp_cases_*.json")
    cases = json.loads(cases_json.read_text(encoding="utf-8"))["cases"]
    assert sorted({int(c["key"]) for c in cases}) == flipped
    assert all(c["replay_mode"] == "prefill" and c["verdict"] for c in cases)
    assert main(["report", str(tmp_path / "cmp"), "-o", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    named = {int(n) for n in re.findall(r"arith_mc_choice\d #(\d+)", page)}
    assert named == set(flipped)


def test_generation_replay_reproduces_the_logged_answers(samples, tmp_path, capsys):
    golden_log, test_log = logged(samples[("arith_gen", "fp32")]), logged(samples[("arith_gen", "bf16")])
    # a random model never answers the sums: exact_match is 0 on both, so bcanalyze finds no bad case...
    assert main(["bcanalyze", "-gp", str(samples[("arith_gen", "fp32")]), "-mp", str(samples[("arith_gen", "bf16")]),
                 "-o", str(tmp_path / "bc")]) == 0
    assert "no bad cases: the 48 cases" in capsys.readouterr().out
    # ...so the generation path is checked on the docs whose logged answers differ between the dtypes
    differing = sorted(d for d in golden_log if golden_log[d]["resps"] != test_log[d]["resps"])[:5]
    assert differing
    bad = tmp_path / "bad.csv"
    bad.write_text("key\n" + "".join(f"{d}\n" for d in differing), encoding="utf-8")
    dump(samples[("arith_gen", "fp32")], bad, "fp32", tmp_path / "golden")
    dump(samples[("arith_gen", "bf16")], bad, "bf16", tmp_path / "test")
    golden_dir, test_dir = logits_dir(tmp_path / "golden", "arith_gen", "fp32"), logits_dir(tmp_path / "test",
                                                                                              "arith_gen", "bf16")
    for folder, log in ((golden_dir, golden_log), (test_dir, test_log)):
        records = manifest(folder)
        assert [int(r["key"]) for r in records] == differing
        for record in records:
            info = record["extra"]["lm_eval"]
            assert info["response"] == log[int(record["key"])]["resps"][0][0]  # the logged answer, greedily
            assert info["agrees_with_log"] is True
            assert info["until"] == ["\n", "."] and info["max_gen_toks"] == 6
            assert len(record["files"]) == min(TOKENS, len(record["output_token_ids"]))
    # the test device fed the golden tokens (teacher forcing) compares step t with step t
    dump(samples[("arith_gen", "bf16")], bad, "bf16", tmp_path / "forced", "--replay", str(golden_dir))
    forced_dir = logits_dir(tmp_path / "forced", "arith_gen", "bf16")
    golden_tokens = {r["key"]: r["output_token_ids"][:TOKENS] for r in manifest(golden_dir)}
    for record in manifest(forced_dir):
        assert record["output_token_ids"] == golden_tokens[record["key"]]
        assert record["extra"]["replay"]["mode"] == "step"
    assert main(["compare", "-gp", str(golden_dir), "-mp", str(forced_dir), "-o", str(tmp_path / "cmp"),
                 "-d", "bf16"]) == 0
    assert main(["report", str(tmp_path / "cmp"), "-o", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert {int(n) for n in re.findall(r"arith_gen #(\d+)", page)} == set(differing)

