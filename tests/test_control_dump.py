"""`dump --control KIND` on the tiny model: the control arm written beside the golden dump, named in its manifest,
found and used by compare; and the flags' usage errors."""

from __future__ import annotations

import os

import pytest

from logitsdump import store
from logitsdump.compare import CompareOptions, run_compare
from logitsdump.demo import examples

from helpers import cli_env, fake_programs, run_cli


def _runner(dtype: str, out) -> str:
    return (f"logitsdump eval --model_config_path {examples.model_config(dtype)} "
            f"--task_config_path {examples.task_config('gsm8k')} --output_dir {out}")


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "control_dtype", "words"), [
    ("impl", "bf16", "attention eager instead of sdpa"), ("dtype", "bf16", "bf16 instead of fp32")])
def test_dump_control_writes_the_control_beside_golden_and_compare_uses_it(tmp_path, kind, control_dtype, words):
    bad = tmp_path / "bad.csv"
    bad.write_text("key\n1\n4\n9\n")
    done = run_cli("dump", "-bcr", str(bad), "-tr", "6", "--control", kind, "-e", _runner("fp32", tmp_path / "g"))
    assert done.returncode == 0, done.stderr
    golden = next((tmp_path / "g").rglob("logits"))
    control = golden.parent / "control"
    assert f"control folder: {control} (3 cases, 18 files)" in done.stdout
    golden_records = {r.index: r for r in store.read_manifest(golden)}
    for record in store.read_manifest(control):
        gold = golden_records[record.index]
        assert record.files == gold.files  # replayed on golden's tokens:
        assert record.output_token_ids == gold.output_token_ids[: len(record.files)]
        made = record.extra["control"]
        assert made["kind"] == kind and made["dtype"] == control_dtype and words in made["description"]
        assert record.dtype == control_dtype
        assert gold.extra["control"] == {"dir": "../control", "kind": kind}  # named in golden's manifest
    test = run_cli("dump", "-bcr", str(bad), "-tr", "6", "--replay", str(golden), "-e",
                   _runner("bf16", tmp_path / "t"))
    assert test.returncode == 0, test.stderr
    mine = next((tmp_path / "t").rglob("logits"))
    summary = run_compare(CompareOptions(golden, mine, tmp_path / "o", workers=1))
    reference = summary.reference
    assert reference.source == "control" and reference.control.path == control and reference.control.replayed
    assert all(c.reference == "control" and c.paired is not None for c in summary.cases)
    # the healthy bf16 test side is noise against its control (the tiny demo's verdicts stay explainable)
    assert {c.verdict for c in summary.cases} <= {"identical", "consistent", "noise"}, [c.reason for c in summary.cases]
    assert reference.run is not None and reference.run.verdict == "noise"
    # a second control of the same golden dump replaces it when told to (--overwrite: the folder policy)
    again = run_cli("dump", "-bcr", str(bad), "-tr", "6", "--control", kind, "--replay", str(golden),
                    "--overwrite", "-e",
                    _runner("fp32", tmp_path / "g"))
    assert again.returncode == 0, again.stderr
    assert f"control folder: {control} (3 cases, 18 files)" in again.stdout
    assert "dumped 0 of" not in again.stdout
    if kind == "dtype":  # the control is derived from the golden side's YAML: another one is refused
        wrong = run_cli("dump", "-bcr", str(bad), "-tr", "6", "--control", kind, "--replay", str(golden), "-e",
                        _runner("bf16", tmp_path / "g"))
        assert wrong.returncode != 0 and "give the golden side's model YAML" in wrong.stdout + wrong.stderr


def test_control_flags_usage_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("key\n1\n")
    bin_dir = fake_programs(tmp_path / "bin", "modeltest")
    env = cli_env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    modeltest = run_cli("dump", "-bcr", str(bad), "--control", "impl", "-e", "modeltest --x 1", env=env)
    assert modeltest.returncode == 2 and "--control needs our runner" in modeltest.stderr
    assert not (bin_dir / "record.json").exists()  # refused before anything ran
    alone = run_cli("dump", "-bcr", str(bad), "--control-dtype", "fp32", "-e", _runner("fp32", tmp_path / "g"))
    assert alone.returncode == 2 and "--control-dtype goes with --control" in alone.stderr
    wrong = run_cli("dump", "-bcr", str(bad), "--control", "threads", "-e", _runner("fp32", tmp_path / "g"))
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr
    assert not any(tmp_path.glob("g/**/*.pth"))
