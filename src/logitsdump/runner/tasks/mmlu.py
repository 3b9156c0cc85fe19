"""MMLU (`mmlu_few_shots`, `mmlu_zero_shot`): `test/{subject}_test.csv` and `dev/{subject}_dev.csv`,
no header, columns question, A, B, C, D, answer."""

from __future__ import annotations

from logitsdump.runner.config import TaskConfig
from logitsdump.runner.tasks.common import FewShotChoiceTask, ZeroShotChoiceTask


class MMLUFewShotTask(FewShotChoiceTask):
    """MMLU with `shots` dev examples before each question."""

    test_folder = "test"
    skip = 0


class MMLUZeroShotTask(ZeroShotChoiceTask):
    """MMLU zero-shot; the prompt names the subject key with spaces (`college biology`)."""

    test_folder = "test"
    skip = 0

    def subject_name(self, config: TaskConfig, subject: str) -> str:
        return subject.replace("_", " ")
