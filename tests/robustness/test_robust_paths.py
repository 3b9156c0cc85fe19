# ruff: noqa: E501  (the coverage table in the docstring)
"""Names from YAML and dataset files never lead a write outside --output_dir: subject keys, model
names and types with `../`, absolute paths and odd characters, through a real eval + dump.

Already covered elsewhere:
| case | covered by |
|---|---|
| store.subject_token of `../../etc`, `/abs/path`, `a\\b`, `..`, NUL | tests/test_store.py::test_subjects_cannot_escape |
| fsutil.safe_component | tests/test_fsutil.py::test_safe_component |
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from robust_helpers import files_under

from logitsdump.cli import main
from logitsdump.demo import examples

ROW = '{"question": "q?", "answer": "#### 1"}\n'


def _run(tmp_path: Path, monkeypatch, *, model_name: str = "tiny", model_type: str = "pa",
         subject: str = "GSM8K.jsonl", task_name: str = "gsm8k") -> tuple[int, Path]:
    """eval under the dump protocol (logits files named by subject) with the given names."""
    work = tmp_path / "a" / "b" / "c"
    data = work / "data" / "inner"
    data.mkdir(parents=True)
    dataset = (data / subject) if not subject.startswith("/") else Path(subject)
    dataset.parent.mkdir(parents=True, exist_ok=True)
    dataset.write_text(ROW)
    model = work / "m.yaml"
    model.write_text(examples.model_config("fp32").read_text().replace("model_name: tiny_llama",
                                                                        f"model_name: {json.dumps(model_name)}")
                     .replace("model_type: pa", f"model_type: {json.dumps(model_type)}")
                     .replace("../../model/tiny_llama", str(examples.TINY_MODEL)))
    task = work / "t.yaml"
    task.write_text(f"task_name: {json.dumps(task_name)}\nlocal_dataset_path: {data}\nrequested_max_output_length: 2\n"
                    f"subject_mapping:\n  {json.dumps(subject)}: {{}}\n")
    for name, value in {"BAD_CASE_LOGITS_DUMP": "True", "LOGITS_DUMP_TOKEN_MAX_LENGTH": "2",
                        "BAD_CASE_LIST": "[0]"}.items():
        monkeypatch.setenv(name, value)
    before = files_under(tmp_path)
    out = work / "out"
    code = main(["eval", "--model_config_path", str(model), "--task_config_path", str(task), "--output_dir",
                 str(out), "--save_debug_enable", "--device", "cpu"])
    new = files_under(tmp_path) - before
    outside = [p for p in new if out not in p.parents]
    assert not outside, f"written outside --output_dir: {outside}"
    return code, out


CASES = {
    "model_name climbing out": {"model_name": "../../../../../../../../escaped"},
    "model_name absolute": {"model_name": "/tmp/escaped-model"},
    "model_type climbing out": {"model_type": "../../../../../../x"},
    "subject key climbing out": {"subject": "../../../escaped.jsonl"},
    "subject key absolute": {"subject": "/ABSOLUTE/abs.jsonl"},
    "subject key with odd characters": {"subject": "a b\n;=$(x)|\\*.jsonl"},
    "model_name `..`": {"model_name": ".."},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_names_cannot_escape_output_dir(tmp_path: Path, monkeypatch, case: str) -> None:
    names = dict(CASES[case])
    if names.get("subject", "").startswith("/ABSOLUTE"):
        names["subject"] = str(tmp_path / "elsewhere" / "abs.jsonl")
    code, out = _run(tmp_path, monkeypatch, **names)
    assert code == 0
    logits = list(out.glob("data/CPU/precision_test/gsm8k/fp32/*/logits/logits_*_0_0.pth"))
    assert len(logits) == 1, sorted(map(str, files_under(out)))
    assert not (Path("/tmp/escaped-model")).exists()


def test_task_name_climbing_out_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    code, out = _run(tmp_path, monkeypatch, task_name="../../../../gsm8k")
    assert code == 1 and "unknown task_name" in capsys.readouterr().err
    assert not out.exists()
