"""Planted set-up differences: two sides that differ in one set-up mistake, not in numerics.

`plant(kind, ...)` writes a golden and a test side (model YAML, task YAML, and where needed a model
folder copy) that differ by one of `KINDS`, each the mistake the parity preflight must name
(`EXPECTED_CAUSE`, a cause code of `triage.fields.CAUSES`):
- `chat-template`: the test side applies the chat template, golden does not;
- `double-bos`: the test side's tokenizer prepends two BOS tokens (its tokenizer.json's post-processor);
- `few-shot`: the test side gives another number of worked examples;
- `max-new-tokens`: the test side may generate fewer tokens (requested_max_output_length cut short);
- `sampling`: the test side samples (the model YAML's `generation: {do_sample: true}`), golden is greedy;
- `tokenizer-file`: the test side's tokenizer.json lower-cases its input (a changed normalizer);
- `config-field`: the test side's config.json has another rms_norm_eps;
- `generation-config`: both sides apply generation_config.json; the test side's sets repetition_penalty;
- `context-limit` (beyond the issue's list, to measure false alarms per case): the test side's
  requested_max_input_length is `context_limit`, so only the prompts longer than it are cut;
- `clean`: no difference (the false-alarm check).
Model folders are copies with their weights hard-linked (no second copy of a large file).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitsdump.errors import ConfigError

KINDS = ("chat-template", "double-bos", "few-shot", "max-new-tokens", "sampling", "tokenizer-file",
         "config-field", "generation-config", "context-limit")
CLEAN = "clean"
#: The cause the preflight must name for each kind.
EXPECTED_CAUSE = {
    "chat-template": "chat-template", "double-bos": "bos", "few-shot": "few-shot",
    "max-new-tokens": "max-new-tokens", "sampling": "sampling", "tokenizer-file": "tokenizer-file",
    "config-field": "model-config", "generation-config": "generation-config", "context-limit": "truncation",
}
#: Kinds whose difference touches only the cases whose prompt tokens differ (the others touch every case).
PROMPT_KINDS = frozenset({"chat-template", "double-bos", "few-shot", "tokenizer-file", "context-limit"})
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass(frozen=True)
class SidePaths:
    """One side: its model YAML and task YAML."""

    model_yaml: Path
    task_yaml: Path


@dataclass(frozen=True)
class Planted:
    kind: str
    golden: SidePaths
    test: SidePaths


def plant(kind: str, model_dir: Path, task_yaml: Path, workdir: Path, *, model_name: str,
          golden_dtype: str = "fp32", test_dtype: str = "bf16", shots: int = 1, max_new_tokens: int = 4,
          context_limit: int | None = None) -> Planted:
    """Write both sides of `kind` (or `clean`) under `workdir` (a new folder): the base task YAML with
    `shots` and `max_new_tokens`, golden in `golden_dtype`, test in `test_dtype` (`context_limit`: the
    test's prompt limit of `context-limit`)."""
    if kind not in (*KINDS, CLEAN):
        raise ConfigError(f"unknown set-up difference {kind!r}: use one of {', '.join((*KINDS, CLEAN))}")
    if kind == "context-limit" and not (context_limit or 0) > 0:
        raise ConfigError("the context-limit difference needs a context_limit > 0")
    workdir.mkdir(parents=True, exist_ok=False)
    task = _task_yaml(task_yaml)
    task.update(shots=shots, requested_max_output_length=max_new_tokens)
    golden_task, test_task = dict(task), dict(task)
    golden_model, test_model = model_dir, model_dir
    golden_extra: dict[str, Any] = {}
    test_extra: dict[str, Any] = {}
    if kind == "chat-template":
        test_extra["use_chat_template"] = True
    elif kind == "double-bos":
        test_model = copy_model(model_dir, workdir / "test_model")
        _edit_json(test_model / "tokenizer.json", lambda t: _prepend_bos(t, test_model, count=2))
    elif kind == "few-shot":
        test_task["shots"] = shots + 2
    elif kind == "max-new-tokens":
        test_task["requested_max_output_length"] = 1
    elif kind == "sampling":
        test_extra["generation"] = {"do_sample": True, "temperature": 1.0, "top_k": 0, "seed": 0}
    elif kind == "tokenizer-file":
        test_model = copy_model(model_dir, workdir / "test_model")
        _edit_json(test_model / "tokenizer.json", _lowercase)
    elif kind == "config-field":
        test_model = copy_model(model_dir, workdir / "test_model")
        _edit_json(test_model / "config.json", lambda c: {**c, "rms_norm_eps": 1e-3})
    elif kind == "context-limit":
        test_task["requested_max_input_length"] = context_limit
    elif kind == "generation-config":
        golden_extra["generation"] = test_extra["generation"] = {"use_generation_config": True}
        test_model = copy_model(model_dir, workdir / "test_model")
        _edit_json(test_model / "generation_config.json", lambda g: {**g, "repetition_penalty": 1.3})
    golden = SidePaths(_model_yaml(workdir / "golden_model.yaml", golden_model, model_name, golden_dtype,
                                   golden_extra), _write_task(workdir / "golden_task.yaml", golden_task))
    test = SidePaths(_model_yaml(workdir / "test_model.yaml", test_model, model_name, test_dtype, test_extra),
                     _write_task(workdir / "test_task.yaml", test_task))
    return Planted(kind, golden, test)


def copy_model(source: Path, target: Path) -> Path:
    """A copy of a model folder whose weight files are hard links (copies across file systems)."""
    from logitsdump.demo.defects import _link_or_copy

    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_dir():
            shutil.copytree(item, target / item.name)
        elif item.name.endswith(WEIGHT_SUFFIXES):
            _link_or_copy(item, target / item.name)
        else:
            shutil.copyfile(item, target / item.name)
    return target


def _prepend_bos(tokenizer: dict[str, Any], folder: Path, count: int) -> dict[str, Any]:
    """tokenizer.json whose post-processor puts `count` BOS tokens before every sequence."""
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    bos = config.get("bos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    ids = [t["id"] for t in tokenizer.get("added_tokens", []) if t.get("content") == bos]
    if not bos or not ids:
        raise ConfigError(f"{folder}: the tokenizer names no BOS token")
    special = [{"SpecialToken": {"id": bos, "type_id": 0}}] * count
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [*special, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [*special, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [ids[0]], "tokens": [bos]}},
    }
    return tokenizer


def _lowercase(tokenizer: dict[str, Any]) -> dict[str, Any]:
    """tokenizer.json whose normalizer lower-cases the text first."""
    current = tokenizer.get("normalizer")
    steps = [{"type": "Lowercase"}] + ([current] if current else [])
    tokenizer["normalizer"] = {"type": "Sequence", "normalizers": steps}
    return tokenizer


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    path.unlink(missing_ok=True)  # a copy, never the hard-linked original
    path.write_text(json.dumps(change(data), indent=1) + "\n", encoding="utf-8")


def _task_yaml(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    local = data.get("local_dataset_path")
    if local and not Path(local).is_absolute():
        data["local_dataset_path"] = str((path.parent / local).resolve())
    return data


def _write_task(path: Path, data: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _model_yaml(path: Path, model_dir: Path, model_name: str, dtype: str, extra: dict[str, Any]) -> Path:
    import yaml

    data = {"model_name": model_name, "model_path": str(model_dir.resolve()), "model_type": "pa", "data_type": dtype,
            "use_chat_template": False, "trust_remote_code": False, "requested_gpu_framework": "Huggingface", **extra}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
