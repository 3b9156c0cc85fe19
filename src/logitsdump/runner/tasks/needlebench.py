"""NeedleBench (single needle): a needle sentence hidden at a given depth of a haystack of essays
of a given length; the model must retrieve it.

Files (modeltest's layout, supplied by the user): `<root>/needles.jsonl` (rows with `needle`,
`retrieval_question`, `arg2` (the keyword) and `language`: `English` or `Chinese`) and the haystacks
`<root>/PaulGrahamEssays.jsonl` (English) and `<root>/zh_finance.jsonl` (Chinese), rows with `text`.

Sub-datasets are built at run time, named `{file}_{length}_{depth}` as modeltest names them, 10 rows
each. Row `r` (0..9) shuffles the haystack lines with seed `r` (cumulatively, as modeltest does),
picks the needle with seed `r`, takes `length - length_buffer - len(needle)` tokens of haystack,
inserts the needle's tokens at `depth` percent, and asks the retrieval question.

Which sub-datasets: when subject_mapping is empty (modeltest's YAML), modeltest's built-in plan for
`requested_max_input_length // 1000` (`4k`, `8k`, `32k`, `128k`, `200k`, `256k`, `1000k`). Our
extension: a subject_mapping whose keys are such names selects exactly those sub-datasets; a value
may set `language` (needed for other file names), `length_buffer` and `repeats`.

Token counts: modeltest counts with tiktoken's gpt-4 encoding (cl100k_base). Where tiktoken or its
encoding file is not available (offline), the model's tokenizer counts them (so the haystacks differ
from modeltest's); without a tokenizer at all (only listing cases), UTF-8 bytes stand for tokens.

Scoring (modeltest's): 1 when the keyword is in the answer, else 0.2 x (1 - edit distance / length)
between the answer (whitespace removed, trimmed near the needle's length) and the needle. The case
passes when the keyword is found (score 1); test_result is the score.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitsdump.errors import ConfigError, DataError
from logitsdump.logs import get_logger
from logitsdump.runner.config import TaskConfig
from logitsdump.runner.tasks.base import Case, Generation, Judgement, Tokenizer
from logitsdump.runner.tasks.common import read_jsonl

log = get_logger("needlebench")

NEEDLES_FILE = "needles.jsonl"
REPEATS = 10
ENGLISH_FILE, CHINESE_FILE = "PaulGrahamEssays.jsonl", "zh_finance.jsonl"
LANGUAGE_OF = {ENGLISH_FILE: "English", CHINESE_FILE: "Chinese"}
#: Default length buffer per language (modeltest's; English 32k uses 3000).
BUFFERS = {"English": 600, "Chinese": 200}


def linear_depths(count: int) -> list[float]:
    """`count` evenly spaced depth percents from 0 to 100 (floats, as modeltest names them)."""
    step = 100 / (count - 1)
    return [0 + step * i for i in range(count)]


_LINEAR20 = linear_depths(20)
_SPARSE = [0, 10, 21, 31, 42, 52, 63, 73, 84, 94, 100]
#: size -> (lengths, depths, English buffer)
PLANS: dict[str, tuple[list[int], list[Any], int]] = {
    "4k": (list(range(1000, 5000, 1000)), _LINEAR20, 600),
    "8k": (list(range(5000, 9000, 1000)), _LINEAR20, 600),
    "32k": ([9000, 13000, 17000, 21000, 25000, 29000, 31000, 32000], _SPARSE, 3000),
    "128k": ([16000, 32000, 48000, 64000, 80000, 96000, 112000, 128000], _SPARSE, 600),
    "200k": ([16000, 48000, 80000, 112000, 128000, 144000, 176000, 200000], _SPARSE, 600),
    "256k": ([32000, 128000, 256000], _SPARSE, 600),
    "1000k": ([20000, 160000, 300000, 440000, 580000, 720000, 860000, 1000000], _SPARSE, 600),
}


@dataclass(frozen=True)
class SubDataset:
    name: str
    file: str
    length: int
    depth: float
    language: str
    length_buffer: int
    repeats: int = REPEATS


@dataclass(frozen=True)
class Counter:
    """How lengths are counted: token ids of a text and back."""

    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    name: str


def length_counter(tokenizer: Any = None) -> Counter:
    """tiktoken's gpt-4 encoding where available; else the model's tokenizer; else UTF-8 bytes."""
    try:
        import tiktoken  # type: ignore[import-not-found]

        encoding = tiktoken.encoding_for_model("gpt-4")
        return Counter(encoding.encode, encoding.decode, "tiktoken gpt-4")
    except Exception:  # not installed, or its encoding file cannot be fetched offline
        pass
    if tokenizer is not None:
        return Counter(
            lambda text: list(tokenizer.encode(text, add_special_tokens=False)),
            lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
            "the model's tokenizer",
        )
    return Counter(lambda text: list(text.encode("utf-8")), lambda ids: bytes(ids).decode("utf-8", "replace"), "bytes")


def plan(config: TaskConfig) -> list[SubDataset]:
    """The sub-datasets of a run, in order (see the module docstring)."""
    where = f"task config {config.source or config.task_name}"
    if not config.subject_mapping:
        size = f"{config.requested_max_input_length // 1000}k"
        if size not in PLANS:
            raise ConfigError(
                f"{where}: requested_max_input_length {config.requested_max_input_length} selects no NeedleBench "
                f"plan ({size}); use one of {', '.join(PLANS)} (x1000) or list the sub-datasets in subject_mapping"
            )
        lengths, depths, english_buffer = PLANS[size]
        result = []
        for file, language in LANGUAGE_OF.items():
            buffer = english_buffer if language == "English" else BUFFERS["Chinese"]
            for length in lengths:
                for depth in depths:
                    result.append(SubDataset(f"{file}_{length}_{depth}", file, length, depth, language, buffer))
        return result
    result = []
    for name, value in config.subject_mapping.items():
        value = value if isinstance(value, Mapping) else {}
        parts = name.rsplit("_", 2)
        try:
            file, length, depth = parts[0], int(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            pattern = "{file}_{length}_{depth}"
            raise ConfigError(f"{where}: subject_mapping key {name!r} must be {pattern!r}") from None
        language = str(value.get("language", LANGUAGE_OF.get(file, "")))
        if language not in BUFFERS:
            raise ConfigError(f"{where}: subject_mapping.{name} needs language: English or Chinese")
        buffer = int(value.get("length_buffer", BUFFERS[language]))
        result.append(SubDataset(name, file, length, depth, language, buffer, int(value.get("repeats", REPEATS))))
    return result


def guided_question(question: str, language: str) -> str:
    """modeltest's retrieval question with its "think first" sentence inserted."""
    marker, guide = (
        ("请按照", "在回答之前，请思考文档中与此问题最相关的内容是什么。请按照")
        if language == "Chinese"
        else ("Please answer in the format",
              "Before answering, please consider what in the document is most relevant to this question. "
              "Please answer in the format")
    )  # fmt: skip
    head, found, tail = question.partition(marker)
    if not found:
        raise DataError(f"{NEEDLES_FILE}: retrieval_question {question!r} lacks {marker!r}")
    return head + guide + tail


def build_prompt(context: str, question: str, language: str) -> str:
    """modeltest's prompt with the question at the end."""
    question = guided_question(question, language)
    if language == "Chinese":
        return ("你是一个善于回答用户问题的智能AI助手\n"
                "请保持你的回答简洁清楚。不要说和下面文档中的无关的话，或重复你的回答\n"
                f"用户现在给你的文档是{context}\n\n现在请问：{question}")  # fmt: skip
    return ("You are an intelligent AI assistant skilled in answering user questions.\n"
            "Please keep your answers concise and clear. Do not talk about irrelevant topics or repeat your answers.\n"
            f"The document given to you by the user is {context}\n\nNow, the question is: {question}")  # fmt: skip


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def trim_prediction(prediction: str, reference: str) -> str:
    """Cut the prediction near the reference's length, at the reference's last character if found."""
    low, high = int(0.8 * len(reference)), int(1.2 * len(reference))
    trimmed = prediction[:high]
    if reference and len(trimmed) > low and reference[-1] in trimmed[low:]:
        trimmed = trimmed[: low + trimmed[low:].index(reference[-1]) + 1]
    return trimmed


def needle_score(prediction: str, needle: str, keyword: str) -> float:
    """modeltest's score (see the module docstring)."""
    if keyword in prediction:
        return 1.0
    pred = trim_prediction(re.sub(r"\s+", "", prediction), re.sub(r"\s+", "", needle))
    ref = re.sub(r"\s+", "", needle)
    longest = max(len(pred), len(ref))
    similarity = 1 - levenshtein(pred, ref) / longest if longest else 1.0
    return 0.2 * similarity


class NeedleBenchTask:
    """Sub-datasets built at run time from the user's essays and needles."""

    pass_labels: tuple[str, str] = ("True", "False")
    writes_bad_case_csv: bool = False
    needs_tokenizer: bool = True

    def load_cases(self, config: TaskConfig, dataset_root: Path, tokenizer: Tokenizer | None = None) -> list[Case]:
        counter = length_counter(tokenizer)
        log.info("needlebench: counting lengths with %s", counter.name)
        needles = [row for _, row in read_jsonl(dataset_root / NEEDLES_FILE, ("needle", "retrieval_question", "arg2",
                                                                              "language"), "needles: needle, "
                                                "retrieval_question, arg2, language")]  # fmt: skip
        haystacks: dict[str, list[str]] = {}
        cases: list[Case] = []
        for sub in plan(config):
            if sub.file not in haystacks:
                rows = read_jsonl(dataset_root / sub.file, ("text",), "haystack JSON lines with a 'text' field")
                haystacks[sub.file] = [str(row["text"]) for _, row in rows]
            pool = [n for n in needles if n["language"] == sub.language]
            if not pool:
                raise DataError(f"{dataset_root / NEEDLES_FILE}: no needle in {sub.language}")
            lines = list(haystacks[sub.file])
            for repeat in range(sub.repeats):
                random.Random(repeat).shuffle(lines)  # cumulative, as modeltest's
                chosen = random.Random(repeat).choice(pool)
                needle = "\n" + str(chosen["needle"]) + "\n"
                keyword = str(chosen["arg2"])
                query = self.build_query(sub, lines, needle, str(chosen["retrieval_question"]), counter)
                index = len(cases)
                reference = {"needle": needle, "keyword": keyword}
                cases.append(Case(index, sub.name, str(index), query, reference, {"repeat": repeat}))
        return cases

    @staticmethod
    def build_query(sub: SubDataset, lines: list[str], needle: str, question: str, counter: Counter) -> str:
        needle_ids = counter.encode(needle)
        target = max(sub.length - sub.length_buffer - len(needle_ids), 0)
        tokens: list[int] = []
        for line in lines:
            tokens.extend(counter.encode(line))
            if len(tokens) >= target:
                break
        tokens = tokens[:target]
        at = int(len(tokens) * (sub.depth / 100))
        context = counter.decode(tokens[:at] + needle_ids + tokens[at:])
        return build_prompt(context, question, sub.language)

    def judge(self, case: Case, generation: Generation, tokenizer: Tokenizer) -> Judgement:
        needle, keyword = case.reference["needle"], case.reference["keyword"]
        score = needle_score(generation.text, needle, keyword)
        return Judgement(score == 1.0, round(score, 4), f"{needle}*{keyword}")
