"""`logitsdump eval` and `examples` as a user runs them: the installed command, in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from logitsdump.demo import examples

from helpers import cli_env, run_cli


def test_help_does_not_import_torch():
    """The one start-up test: `--help` of every command (and alias) imports neither torch nor transformers."""
    code = (
        "import sys\n"
        "from logitsdump.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for cmd in ('eval', 'bcanalyze', 'dump', 'logitsdump', 'compare', 'logitscmp', 'report', 'demo',"
        " 'examples', 'preflight', 'probe', 'ablate'):\n"
        "    try:\n        main([cmd, '--help'])\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--model_config_path" in done.stdout and "--task-config-path" in done.stdout


def test_console_script_and_module_agree():
    done = subprocess.run(["logitsdump", "--version"], capture_output=True, text=True, timeout=60, env=cli_env())
    assert done.returncode == 0 and done.stdout.startswith("logitsdump ")
    assert run_cli("--version").stdout == done.stdout


@pytest.mark.slow
def test_eval_with_modeltest_flags(tmp_path):
    done = run_cli(
        "eval", "--model_config_path", str(examples.model_config("fp32")),
        "--task_config_path", str(examples.task_config("boolq")),
        "--batch_size", "1", "--tp", "1", "--output_dir", str(tmp_path), "--save_debug_enable", "--lcoc_disable",
    )
    assert done.returncode == 0, done.stderr
    debug = tmp_path / "debug/CPU/precision_test/boolq/fp32/tiny_llama/boolq_pa_batch1_tp1_debug_info.csv"
    assert debug.is_file()
    assert "accuracy per sub-dataset" in done.stdout and str(debug) in done.stdout


@pytest.mark.slow
def test_hyphenated_flags_and_batches(tmp_path):
    done = run_cli(
        "eval", "--model-config-path", str(examples.model_config("bf16")),
        "--task-config-path", str(examples.task_config("gsm8k")),
        "--batch-size", "4", "--tp", "2", "--output-dir", str(tmp_path), "--save-debug-enable",
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "debug/CPU/precision_test/gsm8k/bf16/tiny_llama/gsm8k_pa_batch4_tp2_debug_info.csv").is_file()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


BAD_INPUTS = {
    "missing model yaml": (lambda t: (t / "none.yaml", examples.task_config("boolq")), 1, "none.yaml"),
    "malformed model yaml": (
        lambda t: (write(t / "m.yaml", "model_path: [\n"), examples.task_config("boolq")), 1, "not valid YAML"),
    "unknown task": (
        lambda t: (examples.model_config("fp32"), write(t / "t.yaml", "task_name: boolk\nlocal_dataset_path: .\n")),
        1, "did you mean 'boolq'"),
    "missing dataset": (
        lambda t: (examples.model_config("fp32"), write(t / "t.yaml", "task_name: boolq\nlocal_dataset_path: nope\n")),
        1, "nope"),
    "missing model_path": (
        lambda t: (write(t / "m.yaml", "model_name: x\nmodel_path: /no/such/model\n"), examples.task_config("boolq")),
        1, "/no/such/model"),
    "unknown data_type": (
        lambda t: (write(t / "m.yaml", "model_path: /x\ndata_type: int4\n"), examples.task_config("boolq")),
        1, "'data_type'"),
}


@pytest.mark.parametrize(
    "case",  # a missing model_path is found by the model loader: that case loads transformers
    [pytest.param(c, marks=pytest.mark.slow) if c == "missing model_path" else c for c in sorted(BAD_INPUTS)],
)
def test_bad_input_gives_one_line(tmp_path, case):
    make, code, needle = BAD_INPUTS[case]
    model, task = make(tmp_path)
    done = run_cli("eval", "--model_config_path", str(model), "--task_config_path", str(task),
                   "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == code, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert needle in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_missing_dataset_file_names_it(tmp_path):
    (tmp_path / "ds").mkdir()
    task = write(tmp_path / "t.yaml", "task_name: gsm8k\nlocal_dataset_path: ds\nsubject_mapping: {GSM8K.jsonl: {}}\n")
    done = run_cli("eval", "--model_config_path", str(examples.model_config("fp32")), "--task_config_path", str(task),
                   cwd=tmp_path)
    assert done.returncode == 1 and "GSM8K.jsonl" in done.stderr and "Traceback" not in done.stderr


def test_debug_level_keeps_traceback(tmp_path):
    done = run_cli("eval", "--model_config_path", str(tmp_path / "none.yaml"),
                   "--task_config_path", str(examples.task_config("boolq")), "-l", "debug")
    assert done.returncode == 1 and "Traceback" in done.stderr


@pytest.mark.parametrize("flag", [["--batch_size", "0"], ["--tp", "-1"], ["--batch_size", "x"]])
def test_usage_errors_exit_2(flag):
    done = run_cli("eval", "--model_config_path", "m.yaml", "--task_config_path", "t.yaml", *flag)
    assert done.returncode == 2


def test_examples_copies_and_never_overwrites(tmp_path):
    target = tmp_path / "ex"
    done = run_cli("examples", str(target))
    assert done.returncode == 0, done.stderr
    assert (target / "model/tiny_llama/model.safetensors").is_file()
    assert (target / "configs/model/tiny_llama_fp32.yaml").is_file()
    assert (target / "configs/task/mmlu_few_shots.yaml").is_file()
    again = run_cli("examples", str(target))
    assert again.returncode == 1 and "not an empty folder" in again.stderr


@pytest.mark.slow
def test_examples_copy_runs_as_is(tmp_path):
    target = tmp_path / "ex"
    assert run_cli("examples", str(target)).returncode == 0
    done = run_cli("eval", "--model_config_path", str(target / "configs/model/tiny_llama_fp32.yaml"),
                   "--task_config_path", str(target / "configs/task/mmlu_few_shots.yaml"),
                   "--output_dir", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
