"""Reading lm-eval's `--log_samples` files: `samples_<task>_<date>.jsonl`, one JSON object per doc and filter.

The fields, as lm_eval 0.4 writes them (`evaluator.evaluate`, `EvaluationTracker.save_results_samples`):
`doc_id` (the dataset row), `doc_hash` (sha256 of the doc as JSON), `prompt_hash` (sha256 of the first
request's context), `arguments` (`{"gen_args_<i>": {"arg_0": context, "arg_1": continuation or generation
kwargs}}`, one entry per request), `resps` / `filtered_resps`, `filter` (the filter's name; a task with
several filters logs each doc once per filter), `metrics` (the names of the per-doc metric fields) and one
top-level field per metric (`acc`, `exact_match`, ...). The task name is only in the file name.

No torch here: bcanalyze reads these files too.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logitsdump.errors import DataError
from logitsdump.fsutil import open_input

#: `samples_<task>_<date>.jsonl`, the date as lm-eval's `date_id` (`2025-01-17T13-49-59.123456`).
_FILE_NAME = re.compile(r"samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9-]+(?:\.\d+)?)\.jsonl")
#: lm-eval's default `max_gen_toks` when a task's generation kwargs give none (`HFLM.max_gen_toks`).
DEFAULT_MAX_GEN_TOKS = 256
#: How much of a file's start is read to tell a JSON-lines file from anything else.
SNIFF_BYTES = 64 * 1024

GENERATE = "generate_until"
LOGLIKELIHOOD = "loglikelihood"
ROLLING = "loglikelihood_rolling"


@dataclass(frozen=True)
class Request:
    """One logged request of a doc: its context and, by kind, the continuation or generation settings."""

    kind: str  # GENERATE, LOGLIKELIHOOD or ROLLING
    context: str
    continuation: str = ""  # LOGLIKELIHOOD: the text scored after the context
    until: tuple[str, ...] = ()  # GENERATE: stop strings
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS  # GENERATE
    do_sample: bool = False  # GENERATE: True means lm-eval sampled, which a greedy replay cannot reproduce


@dataclass(frozen=True)
class Sample:
    """One line of a samples file: a doc under one filter."""

    line: int
    doc_id: int
    doc_hash: str
    prompt_hash: str
    filter: str
    requests: tuple[Request, ...]
    #: metric name -> logged value, in the order of the line's `metrics` list
    metrics: Mapping[str, Any]
    #: `resps` as logged: per request, a list of repeats (loglikelihood: `[logprob, is_greedy]` as text)
    responses: tuple[Any, ...] = field(default_factory=tuple)

    @property
    def prompt(self) -> str:
        """The context of the first request (what `prompt_hash` hashes)."""
        return self.requests[0].context if self.requests else ""


@dataclass(frozen=True)
class SamplesFile:
    """A samples file read whole: the task (from the file name) and its lines."""

    path: Path
    task: str
    samples: tuple[Sample, ...]

    def filters(self) -> list[str]:
        """The filters logged, in first-seen order."""
        return list(dict.fromkeys(s.filter for s in self.samples))


def task_of(path: str | os.PathLike[str]) -> str:
    """The lm-eval task name in a samples file's name (`samples_<task>_<date>.jsonl`), else the stem."""
    name = Path(path).name
    match = _FILE_NAME.fullmatch(name)
    if match:
        return match.group("task")
    stem = Path(name).stem
    return stem.removeprefix("samples_") or "lm_eval"


def is_samples_file(path: str | os.PathLike[str]) -> bool:
    """Whether `path` holds lm-eval samples: its first non-blank line is a JSON object with `doc_id`
    and `doc_hash` (by content, whatever its name)."""
    try:
        with open_input(path, "input file", "rb") as handle:
            if not handle.read(SNIFF_BYTES).lstrip().startswith(b"{"):
                return False  # a CSV, or anything else, without reading on
            handle.seek(0)
            first = b""
            while not first.strip():
                first = handle.readline()  # whole: a few-shot prompt can make it long
                if not first:
                    return False
    except (OSError, DataError):  # missing, unreadable, or not a regular file: the caller's check says which
        return False
    try:
        data = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "doc_id" in data and "doc_hash" in data


def read_samples(path: str | os.PathLike[str]) -> SamplesFile:
    """Read a samples file; a malformed line or a missing field is a DataError naming the file and line."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file} does not exist or is not a file")
    samples: list[Sample] = []
    try:
        with open_input(file, "samples file", encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                if text.strip():
                    samples.append(_parse_line(file, number, text))
    except UnicodeDecodeError:
        raise DataError(f"{file} is not UTF-8 text (lm-eval writes its samples as UTF-8)") from None
    except OSError as err:
        raise DataError(f"cannot read {file}: {err.strerror or err}") from None
    if not samples:
        raise DataError(f"{file} has no samples (an empty file): give a samples_<task>_<date>.jsonl of --log_samples")
    return SamplesFile(file, task_of(file), tuple(samples))


def _parse_line(file: Path, number: int, text: str) -> Sample:
    where = f"{file}, line {number}"
    try:
        data = json.loads(text)
    except ValueError as err:
        raise DataError(f"{where}: not valid JSON ({getattr(err, 'msg', err)}): a samples file has one object "
                        "per line (was it cut short or edited?)") from None
    except RecursionError:
        raise DataError(f"{where}: nested too deeply") from None
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(data).__name__}")
    missing = [name for name in ("doc_id", "doc_hash", "prompt_hash", "arguments", "metrics") if name not in data]
    if missing:
        raise DataError(f"{where}: no {', '.join(missing)} field: not a sample of lm_eval --log_samples "
                        "(lm-eval 0.4 writes doc_id, doc_hash, prompt_hash, arguments and metrics)")
    doc_id = data["doc_id"]
    if isinstance(doc_id, bool) or not isinstance(doc_id, int) or doc_id < 0:
        raise DataError(f"{where}: doc_id must be an int >= 0, found {doc_id!r}")
    for name in ("doc_hash", "prompt_hash"):
        if not isinstance(data[name], str) or not data[name]:
            raise DataError(f"{where}: {name} must be a non-empty string")
    names = data["metrics"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{where}: metrics must be a list of metric names")
    absent = [n for n in names if n not in data]
    if absent:
        raise DataError(f"{where}: the metric field(s) {', '.join(absent)} listed in metrics are missing")
    filter_name = data.get("filter", "none")
    if not isinstance(filter_name, str):
        raise DataError(f"{where}: filter must be a string")
    responses = data.get("resps", [])
    return Sample(
        line=number,
        doc_id=doc_id,
        doc_hash=data["doc_hash"],
        prompt_hash=data["prompt_hash"],
        filter=filter_name,
        requests=_requests(where, data["arguments"]),
        metrics={n: data[n] for n in names},
        responses=tuple(responses) if isinstance(responses, list) else (),
    )


def _requests(where: str, arguments: Any) -> tuple[Request, ...]:
    """The requests of `arguments` (`{"gen_args_<i>": {"arg_<j>": ...}}`), in request order."""
    if not isinstance(arguments, dict) or not arguments:
        raise DataError(f"{where}: arguments must be a non-empty object of gen_args_<i> entries")
    ordered = sorted(arguments.items(), key=lambda item: _ordinal(where, item[0], "gen_args_"))
    requests = []
    for name, args in ordered:
        if not isinstance(args, dict) or not isinstance(args.get("arg_0"), str):
            raise DataError(f"{where}: arguments.{name} must hold arg_0, the context text")
        context, second = args["arg_0"], args.get("arg_1")
        if second is None:
            requests.append(Request(ROLLING, context))
        elif isinstance(second, str):
            requests.append(Request(LOGLIKELIHOOD, context, continuation=second))
        elif isinstance(second, dict):
            requests.append(_generation(where, name, context, second))
        else:
            raise DataError(f"{where}: arguments.{name}.arg_1 must be a continuation (text) or generation kwargs")
    return tuple(requests)


def _generation(where: str, name: str, context: str, kwargs: Mapping[str, Any]) -> Request:
    until = kwargs.get("until")
    if until is None:
        until = []
    elif isinstance(until, str):
        until = [until]
    if not isinstance(until, list) or not all(isinstance(u, str) for u in until):
        raise DataError(f"{where}: arguments.{name}.arg_1.until must be a string or a list of strings")
    limit = next((kwargs[k] for k in ("max_gen_toks", "max_new_tokens", "max_tokens") if k in kwargs),
                 DEFAULT_MAX_GEN_TOKS)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise DataError(f"{where}: arguments.{name}.arg_1.max_gen_toks must be an int > 0, found {limit!r}")
    return Request(GENERATE, context, until=tuple(until), max_gen_toks=limit,
                   do_sample=bool(kwargs.get("do_sample", False)))


def _ordinal(where: str, name: str, prefix: str) -> int:
    if not name.startswith(prefix) or not name[len(prefix):].isdigit():
        raise DataError(f"{where}: unexpected arguments entry {name!r} (expected {prefix}<i>)")
    return int(name[len(prefix):])


def pass_value(value: Any) -> bool | None:
    """A logged metric value as pass/fail: bool, or a number equal to 0 or 1; None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    return None


def pass_fail_metrics(groups: Sequence[Sequence[Sample]]) -> list[str]:
    """The metrics every sample of `groups` logs as pass/fail (0/1 or bool), in the first sample's order."""
    first = groups[0][0]
    return [
        name for name in first.metrics
        if all(name in s.metrics and pass_value(s.metrics[name]) is not None for group in groups for s in group)
    ]
