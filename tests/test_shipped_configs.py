"""Every YAML file shipped under demo/assets/configs (recursively) loads and points at real data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from logitsdump.demo import examples
from logitsdump.runner.config import load_model_config, load_task_config, resolve_dataset_root
from logitsdump.runner.tasks import REGISTRY, get_task

CONFIGS = examples.ASSETS / "configs"
YAMLS = sorted([*CONFIGS.rglob("*.yaml"), *CONFIGS.rglob("*.yml")])
#: The least number of rows each shipped sample dataset must have, by YAML file name.
MIN_ROWS = {
    "boolq": 20,
    "gsm8k": 20,
    "mmlu_few_shots": 15,
    "mmlu_zero_shot": 15,
    "ceval_few_shots": 15,
    "ceval_zero_shot": 15,
    "humaneval": 10,
    "aime2024": 8,
    "gpqa": 8,  # two of each rotation of the options
    "boolq_edge": 6,
    "gsm8k_edge": 6,
}


def _ids(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def test_configs_are_found():
    names = {p.name for p in YAMLS}
    assert {f"{name}.yaml" for name in MIN_ROWS} <= names


def test_every_registered_task_ships_a_config():
    shipped = {load_task_config(p).task_name for p in YAMLS if "task_name" in yaml.safe_load(p.read_text())}
    assert set(REGISTRY) <= shipped


@pytest.mark.parametrize("path", YAMLS, ids=_ids)
def test_shipped_yaml(path: Path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    if "task_name" in data:
        config = load_task_config(path)
        assert config.task_name in REGISTRY
        task = get_task(config.task_name)
        root = resolve_dataset_root(config)
        cases = task.load_cases(config, root)
        assert len(cases) >= MIN_ROWS.get(path.stem, 1)
        assert len({c.key for c in cases}) == len(cases)
        assert {c.subject for c in cases} == set(config.subjects)  # every sub-dataset has rows
    else:
        assert "model_path" in data, f"{path}: neither a task (task_name) nor a model (model_path) YAML"
        config = load_model_config(path)
        model_dir = Path(config.model_path)
        if not model_dir.is_absolute():
            model_dir = path.parent / model_dir
        assert (model_dir / "config.json").is_file()
