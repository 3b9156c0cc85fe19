"""Task YAML files written exactly as MindIE-LLM ships them run unchanged, datasets in modeltest's layout."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from logitsdump.demo import examples

from helpers import SPEC_BOOLQ, run_cli

pytestmark = pytest.mark.slow  # every test runs `logitsdump eval` on the tiny model


def model_yaml(folder: Path) -> Path:
    """The spec's model YAML shape, pointing at the embedded model."""
    path = folder / "llama.yaml"
    path.write_text(
        f"model_name: llama3_8b\nmodel_path: {examples.TINY_MODEL}\nmodel_type: pa\ndata_type: fp16\n"
        "use_chat_template: false\nmax_position_embedding: -1\nblock_size: 128\n"
    )
    return path


def test_spec_boolq_yaml_runs_unchanged(tmp_path):
    shutil.copytree(examples.DATASETS / "boolq", tmp_path / "data" / "boolq")
    (tmp_path / "boolq.yaml").write_text(SPEC_BOOLQ)
    done = run_cli("eval", "--model_config_path", str(model_yaml(tmp_path)), "--task_config_path", "boolq.yaml",
                   "--batch_size", "1", "--tp", "1", "--save_debug_enable", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    debug = tmp_path / "debug/CPU/precision_test/boolq/fp16/llama3_8b/boolq_pa_batch1_tp1_debug_info.csv"
    with open(debug, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["key"] for row in rows] == [str(i) for i in range(22)]


@pytest.mark.parametrize("task", ["mmlu_few_shots", "ceval_zero_shot", "gsm8k", "humaneval"])
def test_shipped_yaml_with_modeltest_paths(tmp_path, task):
    """Our YAML files differ from modeltest's only in local_dataset_path; with modeltest's
    `data/<name>` path (tried from the working folder, then as ../data/<name>) they run as they are."""
    folder = examples.task_config(task).read_text().split("local_dataset_path:")[1].split()[0].strip('"')
    name = Path(folder).name
    shutil.copytree(examples.DATASETS / name, tmp_path / "data" / name)
    text = examples.task_config(task).read_text().replace(folder, f"data/{name}")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / f"{task}.yaml").write_text(text)
    done = run_cli("eval", "--model_config_path", str(model_yaml(tmp_path)), "--task_config_path", f"{task}.yaml",
                   "--save_debug_enable", cwd=tmp_path / "work")  # the dataset is found as ../data/<name>
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "work" / "debug").rglob("*_debug_info.csv"))


MODELTEST = Path(__file__).resolve().parent / "data" / "modeltest"  # MindIE-LLM's config files, verbatim


def debug_rows(folder: Path, task_name: str) -> list[dict[str, str]]:
    (debug,) = (folder / "debug").rglob(f"{task_name}_*_debug_info.csv")
    with open(debug, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(("variant", "task_name", "file"), [("boolq_edge", "boolq", "dev.jsonl"),
                                                            ("gsm8k_edge", "gsm8k", "GSM8K.jsonl")])
def test_modeltest_edge_yaml_runs_unchanged(tmp_path, variant, task_name, file):
    """modeltest's boolq_edge.yaml / gsm8k_edge.yaml as shipped: task_name boolq / gsm8k on data/<variant>."""
    shutil.copytree(examples.DATASETS / variant, tmp_path / "data" / variant)
    shutil.copy(MODELTEST / f"{variant}.yaml", tmp_path / f"{variant}.yaml")
    # all six rows in one batch: gsm8k_edge asks for up to 512 new tokens
    done = run_cli("eval", "--model_config_path", str(model_yaml(tmp_path)), "--task_config_path", f"{variant}.yaml",
                   "--batch_size", "6", "--save_debug_enable", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = debug_rows(tmp_path, task_name)
    lines = (tmp_path / "data" / variant / file).read_text().splitlines()
    assert [row["key"] for row in rows] == [str(i) for i in range(len(lines))]
    assert rows[0]["queries"].startswith("Ice -- " if task_name == "boolq" else "What is 2 + 3?")
    assert {row["pass"] for row in rows} <= {"True", "False"}

