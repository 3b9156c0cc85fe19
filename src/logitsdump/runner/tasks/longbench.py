"""LongBench (`longbench`) and LongBench-E (`longbench_e`): long-context generation scored per subset.

Files (modeltest's layout): `<root>/{subset}.jsonl`, rows with `input`, `context`, `answers` (list),
`length`, `all_classes` (and LongBench's other fields). Each subject_mapping entry carries `type`
(`longbench` or `longbench_e`: a task uses only the subsets of its own name, as modeltest does),
`maxlen` (tokens to generate for that subset), `prompt` (formatted with the row's fields) and
`metric` (one of `METRICS`).

Long queries are cut in the middle to `requested_max_input_length` tokens when `need_truncate_input`
is true (the runner keeps the first half and the last half of the token ids; modeltest cuts the text
the same way through decode). modeltest's YAML says `need_logits: true`, but LongBench is scored on
generated text, so its cases always generate.

A case's score is the best metric value over its answers (0..1); it passes when the score reaches
`PASS_THRESHOLD`. test_result is the score, golden_result the answers; the generated text is in the
infer-results file. modeltest reports the mean score per subset (and for LongBench-E per length
bucket); the result file here gives the pass rate per subset.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from logitsdump.errors import ConfigError, DataError
from logitsdump.runner.config import TaskConfig
from logitsdump.runner.tasks.base import Case, Generation, Judgement, Tokenizer
from logitsdump.runner.tasks.common import read_jsonl

FIELDS = ("input", "context", "answers")
#: A case passes when its score reaches this.
PASS_THRESHOLD = 0.5
#: Subsets whose prediction is only its first line (modeltest's list).
FIRST_LINE_SUBSETS = ("trec", "trec_e", "triviaqa", "triviaqa_e", "samsum", "samsum_e", "lsht")
_ZH_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿"
    "–—‘’‛“”„‟…‧﹏."
)


def _zh_words(text: str) -> list[str]:
    """Chinese words: jieba's cut where jieba is installed, else one token per character."""
    try:
        import jieba  # type: ignore[import-not-found]
    except ImportError:
        return [ch for ch in text if not ch.isspace()]
    return list(jieba.cut(text, cut_all=False))


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalize_zh_answer(text: str) -> str:
    """Lower case, no punctuation (ASCII and Chinese), no spaces."""
    drop = set(string.punctuation + _ZH_PUNCTUATION)
    return "".join(ch for ch in text.lower() if ch not in drop and not ch.isspace())


def f1_score(prediction: Sequence[str], truth: Sequence[str]) -> float:
    """Token-multiset F1."""
    same = sum((Counter(prediction) & Counter(truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, truth: str, **_: Any) -> float:
    return f1_score(normalize_answer(prediction).split(), normalize_answer(truth).split())


def qa_f1_zh_score(prediction: str, truth: str, **_: Any) -> float:
    pred = [w for w in (normalize_zh_answer(t) for t in _zh_words(prediction)) if w]
    gold = [w for w in (normalize_zh_answer(t) for t in _zh_words(truth)) if w]
    return f1_score(pred, gold)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous = 0
        for j, y in enumerate(b, start=1):
            current = row[j]
            row[j] = previous + 1 if x == y else max(row[j], row[j - 1])
            previous = current
    return row[-1]


def rouge_score(prediction: str, truth: str, **_: Any) -> float:
    """ROUGE-L F1 on whitespace tokens (0 for an empty side, as modeltest's `rouge` errors give)."""
    pred, gold = prediction.split(), truth.split()
    if not pred or not gold:
        return 0.0
    lcs = _lcs(pred, gold)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(gold)
    return 2 * precision * recall / (precision + recall)


def rouge_zh_score(prediction: str, truth: str, **_: Any) -> float:
    return rouge_score(" ".join(_zh_words(prediction)), " ".join(_zh_words(truth)))


def _share_of(numbers: list[str], wanted: str) -> float:
    return sum(1 for n in numbers if n == wanted) / len(numbers) if numbers else 0.0


def count_score(prediction: str, truth: str, **_: Any) -> float:
    """The share of numbers in the prediction that equal the answer."""
    return _share_of(re.findall(r"\d+", prediction), str(truth))


def retrieval_score(prediction: str, truth: str, **_: Any) -> float:
    """The share of numbers in the prediction that equal the answer's `Paragraph N`."""
    found = re.findall(r"Paragraph (\d+)", truth)
    return _share_of(re.findall(r"\d+", prediction), found[0]) if found else 0.0


def retrieval_zh_score(prediction: str, truth: str, **_: Any) -> float:
    found = re.findall(r"段落(\d+)", truth)
    return _share_of(re.findall(r"\d+", prediction), found[0]) if found else 0.0


def code_sim_score(prediction: str, truth: str, **_: Any) -> float:
    """fuzz.ratio / 100 of the first line that is not a comment or fence, against the answer."""
    line = next((x for x in prediction.lstrip("\n").split("\n") if "`" not in x and "#" not in x and "//" not in x), "")
    return round(100 * difflib.SequenceMatcher(None, line, truth).ratio()) / 100


def classification_score(prediction: str, truth: str, all_classes: Sequence[str] = (), **_: Any) -> float:
    """1 / (number of classes named) when the answer is among the classes named in the prediction."""
    named = [c for c in all_classes if c in prediction]
    named = [c for c in named if not (c in truth and c != truth)]
    return 1.0 / len(named) if truth in named else 0.0


METRICS: dict[str, Callable[..., float]] = {
    "qa_f1_score": qa_f1_score,
    "qa_f1_zh_score": qa_f1_zh_score,
    "rouge_score": rouge_score,
    "rouge_zh_score": rouge_zh_score,
    "classification_score": classification_score,
    "retrieval_score": retrieval_score,
    "retrieval_zh_score": retrieval_zh_score,
    "count_score": count_score,
    "code_sim_score": code_sim_score,
}


def score_case(subset: str, metric: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str]) -> float:
    """The best score over the answers (the first line only for modeltest's few-shot subsets)."""
    if Path(subset).stem in FIRST_LINE_SUBSETS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    function = METRICS[metric]
    return max((function(prediction, str(a), all_classes=all_classes) for a in answers), default=0.0)


class LongBenchTask:
    """The subsets of `type: longbench`."""

    pass_labels: tuple[str, str] = ("True", "False")
    writes_bad_case_csv: bool = False
    subset_type = "longbench"

    def entry(self, config: TaskConfig, subset: str) -> dict[str, Any]:
        value = config.subject_mapping.get(subset)
        where = f"task config {config.source or config.task_name}: subject_mapping.{subset}"
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping with type, maxlen, prompt and metric")
        missing = [k for k in ("type", "maxlen", "prompt", "metric") if k not in value]
        if missing:
            raise ConfigError(f"{where} needs {', '.join(map(repr, missing))}")
        if value["metric"] not in METRICS:
            raise ConfigError(f"{where}: unknown metric {value['metric']!r}; expected one of {', '.join(METRICS)}")
        if not isinstance(value["maxlen"], int) or value["maxlen"] <= 0:
            raise ConfigError(f"{where}: maxlen must be an int > 0, found {value['maxlen']!r}")
        return value

    def subsets(self, config: TaskConfig) -> list[str]:
        return [s for s in config.subjects if self.entry(config, s)["type"] == self.subset_type]

    def load_cases(self, config: TaskConfig, dataset_root: Path) -> list[Case]:
        cases: list[Case] = []
        for subset in self.subsets(config):
            entry = self.entry(config, subset)
            path = dataset_root / subset
            for line, row in read_jsonl(path, FIELDS, "LongBench JSON lines: " + ", ".join(FIELDS)):
                answers = row["answers"]
                if not isinstance(answers, list) or not answers:
                    raise DataError(f"{path}, line {line}: field 'answers' must be a non-empty list")
                try:
                    query = str(entry["prompt"]).format(**row)
                except (KeyError, IndexError, ValueError) as err:
                    raise ConfigError(
                        f"task config {config.source}: subject_mapping.{subset}.prompt cannot be filled from "
                        f"{path}, line {line} ({type(err).__name__}: {err})"
                    ) from None
                data = {"metric": entry["metric"], "length": row.get("length", 0),
                        "all_classes": list(row.get("all_classes") or []), "line": line}  # fmt: skip
                index = len(cases)
                cases.append(Case(index, subset, str(index), query, [str(a) for a in answers], data,
                                  max_new_tokens=int(entry["maxlen"]), forward_only=False))  # fmt: skip
        return cases

    def judge(self, case: Case, generation: Generation, tokenizer: Tokenizer) -> Judgement:
        score = score_case(case.subject, str(case.data["metric"]), generation.text, case.reference,
                           case.data.get("all_classes", []))  # fmt: skip
        return Judgement(score >= PASS_THRESHOLD, round(score, 4), case.reference)


class LongBenchETask(LongBenchTask):
    """The subsets of `type: longbench_e` (modeltest also groups their scores by length: 0-4k, 4-8k, 8k+)."""

    subset_type = "longbench_e"
