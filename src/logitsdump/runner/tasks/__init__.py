"""The task registry: `task_name` -> task class, imported lazily by dotted path.

Listing the names imports nothing. modeltest finds a task's module from the
first `_`-separated word of its name; here every name is listed explicitly.
"""

from __future__ import annotations

import difflib
import importlib

from logitsdump.errors import ConfigError
from logitsdump.runner.tasks.base import Task

#: task_name -> "module:Class" under logitsdump.runner.tasks
REGISTRY: dict[str, str] = {
    "boolq": "boolq:BoolQTask",
    "gsm8k": "gsm8k:GSM8KTask",
    "mmlu_few_shots": "mmlu:MMLUFewShotTask",
    "mmlu_zero_shot": "mmlu:MMLUZeroShotTask",
    "ceval_few_shots": "ceval:CEvalFewShotTask",
    "ceval_zero_shot": "ceval:CEvalZeroShotTask",
    "humaneval": "humaneval:HumanEvalTask",
    "humanevalx": "humanevalx:HumanEvalXTask",
    "cmmlu": "cmmlu:CMMLUTask",
    "needlebench": "needlebench:NeedleBenchTask",
    "longbench": "longbench:LongBenchTask",
    "longbench_e": "longbench:LongBenchETask",
    "truthfulqa": "truthfulqa:TruthfulQATask",
    "aime2024": "aime2024:AIME2024Task",
    "gpqa": "gpqa:GPQATask",
}

#: modeltest's multimodal tasks (image, video and audio inputs through MindIE's multimodal runners):
#: named here so that their YAML files get a clear refusal rather than "unknown task_name".
MULTIMODAL: tuple[str, ...] = ("textvqa", "videobench", "vocalsound")


def task_names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(REGISTRY)


def get_task(name: str) -> Task:
    """An instance of the task registered as `name`; ConfigError with a suggestion otherwise."""
    target = REGISTRY.get(name)
    if name in MULTIMODAL:
        raise ConfigError(f"not supported yet: multimodal task {name} (logitsdump eval runs text-only tasks)")
    if target is None:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known tasks: {', '.join(task_names())}"
        raise ConfigError(f"unknown task_name {name!r}{hint}")
    module_name, class_name = target.split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)()
