"""C-Eval (`ceval_few_shots`, `ceval_zero_shot`): `val/{subject}_val.csv` (header
id, question, A, B, C, D, answer) and `dev/{subject}_dev.csv` (the same plus explanation)."""

from __future__ import annotations

from logitsdump.runner.config import TaskConfig
from logitsdump.runner.tasks.common import FewShotChoiceTask, ZeroShotChoiceTask, mapping_value


class CEvalFewShotTask(FewShotChoiceTask):
    """C-Eval with `shots` dev examples; the prompt names the subject key, as for MMLU."""

    test_folder = "val"
    skip = 1


class CEvalZeroShotTask(ZeroShotChoiceTask):
    """C-Eval zero-shot; the prompt names the subject's Chinese name (`name_ch`)."""

    test_folder = "val"
    skip = 1

    def subject_name(self, config: TaskConfig, subject: str) -> str:
        return mapping_value(config, subject, "name_ch")
