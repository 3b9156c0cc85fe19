"""Model and task YAML parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from logitsdump.errors import ConfigError, DataError
from logitsdump.runner.config import (
    load_model_config,
    load_task_config,
    resolve_dataset_root,
)

from helpers import SPEC_BOOLQ

SPEC_MODEL = """\
model_name: llama3_8b
model_path: /home/data/LLaMA3-8B
model_type: pa
data_type: fp16
use_chat_template: false
max_position_embedding: -1
block_size: 128
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_spec_task_example_parses(tmp_path):
    config = load_task_config(write(tmp_path, "boolq.yaml", SPEC_BOOLQ))
    assert config.task_name == "boolq"
    assert config.need_logits is True
    assert config.requested_max_input_length == 3072
    assert config.requested_max_output_length == 1
    assert config.choices == ("true", "false")
    assert config.subjects == ["dev.jsonl"]
    assert config.prompt.endswith("\nAnswer:")


def test_spec_model_example_parses(tmp_path):
    config = load_model_config(write(tmp_path, "model.yaml", SPEC_MODEL))
    assert (config.model_name, config.model_type, config.data_type) == ("llama3_8b", "pa", "fp16")
    assert config.use_chat_template is False and config.block_size == 128
    assert config.requested_gpu_framework == "Huggingface"


def test_defaults_and_unknown_keys(tmp_path):
    config = load_task_config(write(tmp_path, "t.yaml", "task_name: gsm8k\nsomething_new: 3\n"))
    assert config.requested_max_input_length == 256
    assert config.requested_max_output_length == 256
    assert config.shots == 0 and config.need_logits is False


def test_subject_mapping_keeps_file_order(tmp_path):
    text = "task_name: mmlu_few_shots\nsubject_mapping:\n  zeta: {name: z}\n  alpha: {name: a}\n  mid: {name: m}\n"
    assert load_task_config(write(tmp_path, "t.yaml", text)).subjects == ["zeta", "alpha", "mid"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("task_name: [1, 2]\n", "'task_name' must be str"),
        ("task_name: boolq\nshots: many\n", "'shots' must be int"),
        ("task_name: boolq\nneed_logits: 3\n", "'need_logits' must be bool"),
        ("task_type: performance\ntask_name: boolq\n", "'task_type' must be precision"),
        ("task_name: boolq\nrequested_max_output_length: 0\n", "requested_max_output_length"),
        ("shots: 1\n", "'task_name' is required"),
        ("- a\n- b\n", "must hold a mapping"),
        ("task_name: boolq\nprompt: [unclosed\n", "not valid YAML at line"),
    ],
)
def test_bad_task_files(tmp_path, text, needle):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_task_config(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_all_problems_reported_at_once(tmp_path):
    path = write(tmp_path, "bad.yaml", "task_name: boolq\nshots: x\nneed_logits: 2\n")
    with pytest.raises(ConfigError) as err:
        load_task_config(path)
    assert "'shots'" in str(err.value) and "'need_logits'" in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("model_path: /x\ndata_type: int8\n", "'data_type' must be one of fp16, bf16, fp32"),
        ("model_name: m\n", "'model_path' is required"),
        ("model_path: /x\nrequested_gpu_framework: onnx\n", "requested_gpu_framework"),
        ("model_path: /x\ntrust_remote_code: maybe\n", "'trust_remote_code' must be bool"),
    ],
)
def test_bad_model_files(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        load_model_config(write(tmp_path, "m.yaml", text))
    assert needle in str(err.value)


def test_data_type_case_insensitive(tmp_path):
    assert load_model_config(write(tmp_path, "m.yaml", "model_path: /x\ndata_type: BF16\n")).data_type == "bf16"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_model_config(tmp_path / "nope.yaml")


def test_dataset_root_relative_to_yaml_and_parent(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "data").mkdir()
    config = load_task_config(write(tmp_path / "cfg", "t.yaml", "task_name: boolq\nlocal_dataset_path: data\n"))
    monkeypatch.chdir(tmp_path)
    assert resolve_dataset_root(config).resolve() == (tmp_path / "cfg" / "data").resolve()
    (tmp_path / "work").mkdir()
    (tmp_path / "ds").mkdir()
    config = load_task_config(write(tmp_path / "cfg", "u.yaml", "task_name: boolq\nlocal_dataset_path: ds\n"))
    monkeypatch.chdir(tmp_path / "work")
    assert resolve_dataset_root(config).resolve() == (tmp_path / "ds").resolve()  # tried as ../ds
    config = load_task_config(write(tmp_path / "cfg", "v.yaml", "task_name: boolq\nlocal_dataset_path: none\n"))
    with pytest.raises(DataError, match="not found"):
        resolve_dataset_root(config)


@pytest.mark.parametrize("section", ["mm_model: {path: run_pa, classname: PARunner}", "mm_model:\n  path: qwen2_audio"])
def test_multimodal_model_is_refused(tmp_path, section):
    path = write(tmp_path, "vl.yaml", SPEC_MODEL + section + "\n")
    with pytest.raises(ConfigError, match=r"vl\.yaml: not supported yet: multimodal model llama3_8b \(") as info:
        load_model_config(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("section", ["mm_model:", "mm_model: {}", "mm_model: null"])
def test_empty_mm_model_is_a_text_model(tmp_path, section):
    assert load_model_config(write(tmp_path, "m.yaml", SPEC_MODEL + section + "\n")).model_name == "llama3_8b"


@pytest.mark.parametrize("name", ["textvqa", "videobench", "vocalsound"])
def test_multimodal_task_names_are_refused(name):
    from logitsdump.runner.tasks import get_task

    with pytest.raises(ConfigError, match=rf"^not supported yet: multimodal task {name} \("):
        get_task(name)
