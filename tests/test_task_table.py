"""docs/tasks.md's table of modeltest's tasks is what the runner does, row by row.

The rows are read from the document, so the table and these tests cannot drift apart:
every supported row's sample YAML (modeltest's form, on the shipped sample data) parses and
loads its cases here, and is evaluated through the tiny model by test_evaluate.py, which takes
its cases from the same rows; every multimodal row's YAML, as modeltest ships it
(tests/data/modeltest/), is refused with a one-line "not supported yet". The files under
tests/data/modeltest/ are copies of MindIE-LLM's `modeltest/config/` files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from logitsdump.cli import main
from logitsdump.demo import examples
from logitsdump.runner.config import load_task_config, resolve_dataset_root
from logitsdump.runner.tasks import MULTIMODAL, REGISTRY, get_task

from helpers import TaskRow, run_cli, task_table_rows

MODELTEST = Path(__file__).resolve().parent / "data" / "modeltest"
#: The task YAML files of modeltest's `modeltest/config/task/` (MindIE-LLM master, dev and v3.0.0 alike).
MODELTEST_TASK_YAMLS = {
    "aime2024.yaml", "boolq.yaml", "boolq_edge.yaml", "ceval_few_shots.yaml", "ceval_zero_shot.yaml",
    "cmmlu.yaml", "gpqa.yaml", "gsm8k.yaml", "gsm8k_edge.yaml", "humaneval.yaml", "humaneval_x.yaml",
    "longbench.yaml", "mmlu_few_shots.yaml", "mmlu_zero_shot.yaml", "needlebench.yaml", "textvqa.yaml",
    "truthfulqa.yaml", "videobench.yaml", "vocalsound.yaml",
}  # fmt: skip


ROWS = task_table_rows()
SUPPORTED = [r for r in ROWS if r.supported]
REFUSED = [r for r in ROWS if not r.supported]


def _id(row: TaskRow) -> str:
    return row.id


def test_one_row_per_modeltest_task():
    assert {r.modeltest_yaml for r in ROWS if r.modeltest_yaml} == MODELTEST_TASK_YAMLS
    # each shipped task YAML is a supported row's, which test_evaluate.py evaluates through the tiny model
    assert sorted(Path(r.sample_yaml).stem for r in SUPPORTED) == examples.shipped_task_names()
    assert len({_id(r) for r in ROWS}) == len(ROWS)
    assert {r.task_name for r in SUPPORTED} == set(REGISTRY)  # every task we run has its row, and only those
    assert {r.task_name for r in REFUSED} == set(MULTIMODAL)
    assert all(r.status.startswith("not supported yet (multimodal") and not r.sample_yaml for r in REFUSED)


@pytest.mark.parametrize("row", SUPPORTED, ids=_id)
def test_supported_row_parses_and_loads_its_sample(row):
    path = examples.TASK_CONFIGS / row.sample_yaml
    config = load_task_config(path)
    assert config.task_name == row.task_name
    cases = get_task(config.task_name).load_cases(config, resolve_dataset_root(config))
    assert cases and {c.subject for c in cases} == set(config.subjects)


@pytest.mark.parametrize("row", [r for r in ROWS if (MODELTEST / r.modeltest_yaml).is_file()], ids=_id)
def test_modeltest_file_names_the_rows_task(row):
    assert load_task_config(MODELTEST / row.modeltest_yaml).task_name == row.task_name


def _eval(capsys, model: Path, task: Path) -> tuple[int, str]:
    status = main(["eval", "--model_config_path", str(model), "--task_config_path", str(task), "--device", "cpu"])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("row", REFUSED, ids=_id)
def test_multimodal_row_is_refused_in_one_line(capsys, row):
    status, err = _eval(capsys, examples.model_config("fp32"), MODELTEST / row.modeltest_yaml)
    assert status == 1
    assert err.count("\n") == 1 and f"not supported yet: multimodal task {row.task_name} (" in err


@pytest.mark.parametrize("model", ["model_qwen2_vl.yaml", "model_qwen2_audio.yaml"])
def test_multimodal_model_yaml_is_refused_in_one_line(capsys, model):
    status, err = _eval(capsys, MODELTEST / model, examples.task_config("boolq"))
    assert status == 1
    name = model.removeprefix("model_").removesuffix(".yaml")
    assert err.count("\n") == 1 and f"not supported yet: multimodal model {name} (" in err


@pytest.mark.slow
def test_multimodal_refusal_through_the_command(tmp_path):
    done = run_cli("eval", "--model_config_path", str(MODELTEST / "model_qwen2_vl.yaml"),
                   "--task_config_path", str(MODELTEST / "videobench.yaml"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().endswith("logitsdump eval runs text-only models)")
    assert not any(tmp_path.iterdir())  # nothing written
