"""The compare driver: pair the files, measure each pair, judge each case, write the results.

Files are read by a small thread pool with a bounded number of pairs in
flight, so memory stays flat in the number of files; rows come back in msit's
order. Outputs, in `<output_dir>` (checked writable before any work):
- `logits_cmp_res_<ts>.csv`: msit's ten columns, then ours;
- `logits_cmp_cases_<ts>.csv` and `.json`: one verdict per case.
Names are never reused: `_1`, `_2`, ... are added when a file exists.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import multiprocessing.context
import os
import re
import sys
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from logitsdump import __version__
from logitsdump.compare.metrics import (
    DTYPES,
    Thresholds,
    Workspace,
    bitwise_equal,
    check_pair,
    pair_metrics,
    scan,
)
from logitsdump.compare.pairing import FilePair, pair_files
from logitsdump.compare.verdict import (
    DEFAULT_NOISE_COSINE,
    DEFAULT_NOISE_KL,
    DEFAULT_NOISE_MARGIN,
    DEFAULT_TIE_TOLERANCE,
    VERDICTS,
    CaseVerdict,
    Replay,
    RowResult,
    Tolerances,
    judge_cases,
)
from logitsdump.csvsafe import write_csv
from logitsdump.errors import DataError, FileFormatError, UsageError
from logitsdump.fsutil import atomic_write_text, ensure_writable_dir
from logitsdump.logs import get_logger
from logitsdump.store import CaseManifest, read_manifest, read_vocab
from logitsdump.tensorio import ReadBuffer, load_logits

#: msit's columns, in msit's order.
MSIT_COLUMNS = (
    "file_name", "key", "token_id", "cosine_similarity", "kl_divergence", "l1_norm",
    "ulp_max_diff", "ulp", "passed", "cmp_fail_reason",
)
#: Our columns, after msit's.
EXTRA_COLUMNS = ("max_abs_diff", "golden_top1", "my_top1", "top1_match", "topk_overlap", "golden_margin")
CSV_COLUMNS = MSIT_COLUMNS + EXTRA_COLUMNS
CASE_COLUMNS = (
    "subject", "key", "verdict", "passed", "tokens_total", "tokens_compared", "tokens_judged",
    "first_diff_token", "golden_token", "my_token", "golden_token_text", "my_token_text",
    "flip_margin", "worst_cosine", "worst_kl", "reason",
    "replay_mode", "changed_steps", "golden_margins", "my_margins", "my_ranks_in_golden",
    "golden_ranks_in_mine", "mean_kl", "p95_kl", "mean_cosine", "p95_cosine",
)
CASES_SCHEMA_VERSION = 1
NA = "NA"

_log = get_logger("compare")


@dataclass(frozen=True)
class CompareOptions:
    """What `logitsdump compare` (msit `logitscmp`) needs."""

    golden_path: str | os.PathLike[str]
    my_path: str | os.PathLike[str]
    output_dir: str | os.PathLike[str] = "./output"
    cosine: float = 0.999
    kl: float = 0.0001
    l1: float = 0.01
    dtype: str = "fp16"
    topk: int = 10
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE
    #: Replayed cases: an argmax change is noise when golden's margin is at most noise_margin (logits),
    #: and a step is close when KL <= noise_kl and cosine >= noise_cosine.
    noise_margin: float = DEFAULT_NOISE_MARGIN
    noise_kl: float = DEFAULT_NOISE_KL
    noise_cosine: float = DEFAULT_NOISE_COSINE
    #: Reader threads; None: the CPU count, at most 8.
    workers: int | None = None

    def thresholds(self) -> Thresholds:
        return Thresholds(cosine=self.cosine, kl=self.kl, l1=self.l1, dtype=self.dtype)

    def tolerances(self) -> Tolerances:
        return Tolerances(tie=self.tie_tolerance, noise_margin=self.noise_margin, noise_kl=self.noise_kl,
                          noise_cosine=self.noise_cosine)

    def validate(self) -> None:
        """Raise UsageError (exit 2) for a value out of range, as msit checks its flags."""
        if not (-1.0 <= self.cosine <= 1.0):
            raise UsageError(f"-cs/--cosine-similarity must be in [-1, 1], found {self.cosine}")
        if not (self.kl >= 0.0 and math.isfinite(self.kl)):
            raise UsageError(f"-kl/--kl-divergence must be a finite number >= 0, found {self.kl}")
        if not (self.l1 >= -1.0 and math.isfinite(self.l1)):
            raise UsageError(f"-l1/--l1-norm must be a finite number >= -1, found {self.l1}")
        if self.dtype not in DTYPES:
            raise UsageError(f"-d/--dtype must be one of {', '.join(DTYPES)}, found {self.dtype!r}")
        if self.topk < 1:
            raise UsageError(f"--topk must be >= 1, found {self.topk}")
        if not (self.tie_tolerance >= 0.0 and math.isfinite(self.tie_tolerance)):
            raise UsageError(f"--tie-tolerance must be a finite number >= 0, found {self.tie_tolerance}")
        if not (self.noise_margin >= 0.0 and math.isfinite(self.noise_margin)):
            raise UsageError(f"--noise-margin must be a finite number >= 0, found {self.noise_margin}")
        if not (self.noise_kl >= 0.0 and math.isfinite(self.noise_kl)):
            raise UsageError(f"--noise-kl must be a finite number >= 0, found {self.noise_kl}")
        if not (-1.0 <= self.noise_cosine <= 1.0):
            raise UsageError(f"--noise-cosine must be in [-1, 1], found {self.noise_cosine}")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"workers must be >= 1, found {self.workers}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "golden_path": str(self.golden_path),
            "my_path": str(self.my_path),
            "output_dir": str(self.output_dir),
            "cosine_similarity": self.cosine,
            "kl_divergence": self.kl,
            "l1_norm": self.l1,
            "dtype": self.dtype,
            "topk": self.topk,
            "tie_tolerance": self.tie_tolerance,
            "noise_margin": self.noise_margin,
            "noise_kl": self.noise_kl,
            "noise_cosine": self.noise_cosine,
        }


@dataclass(frozen=True)
class CompareSummary:
    """What a compare run produced: output paths, row counts, verdict counts, the cases."""

    csv_path: Path
    cases_csv_path: Path
    cases_json_path: Path
    rows: int
    compared: int
    passed: int
    failed: int
    na: int
    parse_errors: int
    #: verdict -> number of cases, every verdict present (0 when none).
    verdicts: Mapping[str, int]
    cases: tuple[CaseVerdict, ...] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "csv_path": str(self.csv_path),
            "cases_csv_path": str(self.cases_csv_path),
            "cases_json_path": str(self.cases_json_path),
            "rows": self.rows,
            "compared": self.compared,
            "passed": self.passed,
            "failed": self.failed,
            "na": self.na,
            "parse_errors": self.parse_errors,
            "verdicts": dict(self.verdicts),
        }


@dataclass(frozen=True)
class Measured:
    """The measuring half of a compare run: every row and every case's verdict, nothing written yet."""

    golden_dir: Path
    my_dir: Path
    out_dir: Path
    rows: list[RowResult]
    cases: list[CaseVerdict]
    texts: _Texts


def measure(options: CompareOptions) -> Measured:
    """Check the options and folders (the output folder too, before any work), measure every pair,
    judge every case (replayed cases as replays)."""
    options.validate()
    golden_dir, my_dir = _input_dir(options.golden_path, "-gp/--golden-path"), _input_dir(
        options.my_path, "-mp/--my-path"
    )
    out_dir = ensure_writable_dir(options.output_dir)
    pairs = pair_files(golden_dir, my_dir)
    _log.info("comparing %d file names from %s and %s", len(pairs), golden_dir, my_dir)
    rows = list(_measure_all(pairs, options))
    texts = _Texts(golden_dir, my_dir)
    cases = judge_cases(rows, options.tolerances(), texts.replays(rows))
    return Measured(golden_dir, my_dir, out_dir, rows, cases, texts)


def run_compare(options: CompareOptions, *, now: datetime | None = None) -> CompareSummary:
    """Compare two folders of logits files and write the CSVs and the case JSON."""
    measured = measure(options)
    out_dir, rows, cases, texts = measured.out_dir, measured.rows, measured.cases, measured.texts
    stamp = (now or datetime.now()).strftime("%Y%m%d%H%M%S")
    csv_path, cases_csv, cases_json = _free_names(out_dir, stamp)
    write_csv(csv_path, CSV_COLUMNS, (_csv_row(row) for row in rows))
    write_csv(cases_csv, CASE_COLUMNS, (_case_row(case, texts) for case in cases))
    counts = {v: 0 for v in VERDICTS}
    for case in cases:
        counts[case.verdict] += 1
    summary = CompareSummary(
        csv_path=csv_path,
        cases_csv_path=cases_csv,
        cases_json_path=cases_json,
        rows=len(rows),
        compared=sum(1 for r in rows if r.metrics is not None),
        passed=sum(1 for r in rows if r.metrics is not None and r.metrics.passed),
        failed=sum(1 for r in rows if r.metrics is not None and not r.metrics.passed),
        na=sum(1 for r in rows if r.metrics is None),
        parse_errors=sum(1 for r in rows if r.pair.key is None),
        verdicts=counts,
        cases=tuple(cases),
    )
    document = _cases_document(summary, options, texts, stamp)
    atomic_write_text(cases_json, _json_text(document))
    _log.info("wrote %s", csv_path)
    return summary


def _json_text(document: dict[str, Any]) -> str:
    """The case JSON, one line per case: json's C encoder writes each line (with `indent`, json uses its
    pure-Python encoder, ten times slower on thousands of cases)."""
    head = json.dumps({k: v for k, v in document.items() if k != "cases"}, ensure_ascii=False, indent=1,
                      allow_nan=False)
    cases = ",\n".join(json.dumps(case, ensure_ascii=False, allow_nan=False) for case in document["cases"])
    return f'{head[:-2]},\n "cases": [\n{cases}\n ]\n}}\n' if cases else f'{head[:-2]},\n "cases": []\n}}\n'


def _input_dir(path: str | os.PathLike[str], flag: str) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise DataError(f"{flag}: folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{flag}: {folder} is not a folder")
    return folder


#: The output files of one compare run: `{prefix}{tag}{suffix}`, tag = `<YYYYmmddHHMMSS>[_N]`.
RESULT_CSV = ("logits_cmp_res_", ".csv")
CASES_CSV = ("logits_cmp_cases_", ".csv")
CASES_JSON = ("logits_cmp_cases_", ".json")
#: Matches any of them; groups: timestamp, N.
OUTPUT_NAME = re.compile(r"^logits_cmp_(?:res|cases)_(\d{14})(?:_(\d+))?\.(?:csv|json)$")


def output_name(kind: tuple[str, str], tag: str) -> str:
    """The file name of one compare output (`RESULT_CSV`, `CASES_CSV` or `CASES_JSON`) for `tag`."""
    return f"{kind[0]}{tag}{kind[1]}"


def _free_names(out_dir: Path, stamp: str) -> tuple[Path, Path, Path]:
    """The three output paths for `stamp`, with `_N` added until none of them exists."""
    for n in range(10_000):
        tag = stamp if n == 0 else f"{stamp}_{n}"
        paths = tuple(out_dir / output_name(kind, tag) for kind in (RESULT_CSV, CASES_CSV, CASES_JSON))
        if not any(p.exists() for p in paths):
            return paths
    raise DataError(f"too many result files for {stamp} in {out_dir}")


# ---- measuring --------------------------------------------------------------------------------


#: Below this many pairs, threads (no start-up cost); from it on, worker processes (no GIL).
PROCESS_MIN_PAIRS = 256
#: Pairs per task sent to a worker process (amortises the hand-off; results are small records).
BATCH = 16


def _measure_all(pairs: Sequence[FilePair], options: CompareOptions) -> Iterator[RowResult]:
    """Rows in the order of `pairs`; memory is flat in the number of pairs.

    One worker: in this thread. Few pairs: a thread pool with at most 2 x workers
    pairs in flight. Many pairs: worker processes that read and measure batches of
    pairs themselves and send back only the rows, at most 2 x workers batches in
    flight. Every pair is measured by the same code whatever the pool, so the
    results do not depend on it.
    """
    workers = options.workers or min(8, os.cpu_count() or 1)
    thresholds = options.thresholds()
    if workers == 1:
        scratch = _Scratch()
        for pair in pairs:
            yield measure_pair(pair, thresholds, options.topk, scratch)
        return
    context = _process_context() if len(pairs) >= PROCESS_MIN_PAIRS else None
    if context is not None:
        yield from _measure_in_processes(pairs, thresholds, options.topk, workers, context)
        return
    scratch = _Scratch()
    pending: deque[Future[RowResult]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="logitscmp") as pool:
        for pair in pairs:
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
            pending.append(pool.submit(measure_pair, pair, thresholds, options.topk, scratch))
        while pending:
            yield pending.popleft().result()


def _process_context() -> multiprocessing.context.BaseContext | None:
    """`fork` where it is safe and cheap (Linux, no other Python thread running); else None (threads).

    `fork` starts a worker in milliseconds and the workers inherit the loaded
    modules; with other threads running, a forked child could inherit a held lock.
    """
    if sys.platform != "linux" or threading.active_count() > 1:
        return None
    try:
        return multiprocessing.get_context("fork")
    except ValueError:
        return None


def _measure_in_processes(
    pairs: Sequence[FilePair],
    thresholds: Thresholds,
    topk: int,
    workers: int,
    context: multiprocessing.context.BaseContext,
) -> Iterator[RowResult]:
    pending: deque[Future[list[RowResult]]] = deque()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for start in range(0, len(pairs), BATCH):
            if len(pending) >= 2 * workers:
                yield from pending.popleft().result()
            pending.append(pool.submit(_measure_batch, pairs[start : start + BATCH], thresholds, topk))
        while pending:
            yield from pending.popleft().result()


_PROCESS_SCRATCH: _Scratch | None = None


def _measure_batch(pairs: Sequence[FilePair], thresholds: Thresholds, topk: int) -> list[RowResult]:
    """A worker process's task: measure some pairs with the process's own buffers."""
    global _PROCESS_SCRATCH
    if _PROCESS_SCRATCH is None:
        _PROCESS_SCRATCH = _Scratch()
    return [measure_pair(pair, thresholds, topk, _PROCESS_SCRATCH) for pair in pairs]


class _Scratch(threading.local):
    """Per-thread read buffers and metric workspace: no large allocation per pair."""

    def __init__(self) -> None:
        self.golden = ReadBuffer()
        self.mine = ReadBuffer()
        self.workspace = Workspace()


def measure_pair(
    pair: FilePair, thresholds: Thresholds, topk: int, scratch: _Scratch | None = None
) -> RowResult:
    """Load one pair and measure it; problems become the row's reason, never an exception."""
    if pair.problem or pair.golden is None or pair.mine is None:
        return RowResult(pair, None, pair.problem, unavailable=True)
    scratch = scratch or _Scratch()
    golden, golden_error = _load(pair.golden, scratch.golden)
    mine, my_error = _load(pair.mine, scratch.mine)
    if golden is None or mine is None:
        reasons = [f"golden_data unreadable: {golden_error}."] if golden_error else []
        reasons += [f"my_data unreadable: {my_error}."] if my_error else []
        return RowResult(pair, None, " ".join(reasons), unavailable=True)
    if golden.shape != mine.shape:
        return RowResult(pair, None, check_pair(golden, mine), same_values=False)
    g_scan, m_scan = scan(golden, max(topk, 2)), scan(mine, max(topk, 2))
    problem = check_pair(golden, mine, (g_scan.finite, m_scan.finite))
    if problem or g_scan.top is None or m_scan.top is None:
        return RowResult(pair, None, problem, same_values=bitwise_equal(golden, mine))
    metrics = pair_metrics(golden, mine, thresholds, topk, scratch.workspace, tops=(g_scan.top, m_scan.top))
    return RowResult(pair, metrics, "", same_values=metrics.identical)


def _load(path: Path, buffer: ReadBuffer) -> tuple[np.ndarray | None, str]:
    try:
        return load_logits(path, buffer=buffer), ""
    except FileFormatError as err:
        return None, str(err)


# ---- writing ----------------------------------------------------------------------------------


def _num(value: float) -> str:
    return repr(float(value))


def _csv_row(row: RowResult) -> list[Any]:
    pair = row.pair
    keyed = not (pair.problem or pair.key is None)
    key = str(pair.key) if keyed else NA
    token = pair.token_id if keyed else NA
    m = row.metrics
    if m is None:
        return [pair.file_name, key, token, *([NA] * 6), row.reason, *([NA] * len(EXTRA_COLUMNS))]
    kl = "0" if m.kl_divergence == 0.0 else _num(m.kl_divergence)  # msit's max(0, kl) prints 0
    return [
        pair.file_name, key, token, float(m.cosine_similarity), kl, float(m.l1_norm),
        float(m.ulp_max_diff), float(m.ulp), str(m.passed), "",
        float(m.max_abs_diff), m.golden_top1, m.my_top1, str(m.top1_match), float(m.topk_overlap),
        float(m.golden_margin),
    ]


class _Texts:
    """Token texts (vocab.json) and case records (manifest.jsonl) of both folders, when present."""

    def __init__(self, golden_dir: Path, my_dir: Path) -> None:
        self.golden_dir, self.my_dir = golden_dir, my_dir
        self.golden_vocab = read_vocab(golden_dir)
        self.my_vocab = read_vocab(my_dir)
        self.golden_cases = _by_file(read_manifest(golden_dir))
        self.my_cases = _by_file(read_manifest(my_dir))

    def token(self, token_id: int | None, *, golden: bool) -> str | None:
        vocabs = (self.golden_vocab, self.my_vocab) if golden else (self.my_vocab, self.golden_vocab)
        for vocab in vocabs:
            if token_id is not None and vocab is not None and 0 <= token_id < len(vocab):
                return vocab[token_id]
        return None

    def replays(self, rows: Sequence[RowResult]) -> dict[tuple[str, int | str], Replay]:
        """(subject, key) -> the replay record of each replayed case (the test's manifest, else golden's).

        A replay made from another folder than the one compared with is accepted when its
        forced tokens are that folder's generated tokens (the dump was moved); otherwise
        (it replayed another dump) the case is judged as a free run, with a warning.
        """
        out: dict[tuple[str, int | str], Replay] = {}
        seen: set[tuple[str, int | str]] = set()
        for row in rows:
            pair = row.pair
            if pair.key is None:
                continue
            case = (pair.subject or "", pair.key)
            if case in seen:
                continue
            seen.add(case)
            sides = (
                (self.my_cases, self.golden_cases, self.golden_dir),
                (self.golden_cases, self.my_cases, self.my_dir),
            )
            for table, other_table, other_dir in sides:
                record = table.get(pair.file_name)
                replay = Replay.from_extra(record.extra, len(record.files)) if record is not None else None
                if record is None or replay is None:
                    continue
                if not _same_folder(replay.golden_dir, other_dir):
                    # replayed from another folder: the same dump moved, or another dump?
                    other = other_table.get(pair.file_name)
                    forced = list(record.output_token_ids)
                    if other is None or list(other.output_token_ids[: len(forced)]) != forced:
                        _log.warning("case %s #%s: replayed from %s, whose tokens are not those of %s: judged as "
                                     "a free run", case[0], case[1], replay.golden_dir or "?", other_dir)
                        break
                out[case] = replay
                break
        return out

    def manifest(self, case: CaseVerdict, *, golden: bool) -> dict[str, Any] | None:
        table = self.golden_cases if golden else self.my_cases
        for row in case.rows:
            record = table.get(row.pair.file_name)
            if record is not None:
                return _manifest_summary(record)
        return None


def _same_folder(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _by_file(records: list[CaseManifest]) -> dict[str, CaseManifest]:
    return {name: record for record in records for name in record.files}


def _manifest_summary(record: CaseManifest) -> dict[str, Any]:
    return {
        "task": record.task,
        "index": record.index,
        "query": record.query,
        "input_token_ids": list(record.input_token_ids),
        "output_token_ids": list(record.output_token_ids),
        "output_tokens": list(record.output_tokens),
        "output_text": record.output_text,
        "model_name": record.model_name,
        "dtype": record.dtype,
        "logits_dtype": record.logits_dtype,
        "device": record.device,
        "logits_kind": record.logits_kind,
        "replay": _replay_summary(record),
    }


def _replay_summary(record: CaseManifest) -> dict[str, Any] | None:
    replay = Replay.from_extra(record.extra)
    if replay is None:
        return None
    return {"mode": replay.mode, "golden_dir": replay.golden_dir, "own_tokens": list(replay.own_tokens)}


def _case_row(case: CaseVerdict, texts: _Texts) -> dict[str, Any]:
    data = case.to_dict(with_rows=False)
    data["key"] = str(case.key)
    del data["changes"]
    data["changed_steps"] = " ".join(str(t) for t in case.changed_steps)
    data["golden_margins"] = " ".join(_num(c.golden_margin) for c in case.changes)
    data["my_margins"] = " ".join(_num(c.my_margin) for c in case.changes)
    data["my_ranks_in_golden"] = " ".join(str(c.my_rank_in_golden) for c in case.changes)
    data["golden_ranks_in_mine"] = " ".join(str(c.golden_rank_in_mine) for c in case.changes)
    data["golden_token_text"] = texts.token(case.golden_token, golden=True)
    data["my_token_text"] = texts.token(case.my_token, golden=False)
    return {k: ("" if v is None else v) for k, v in data.items()}


def _cases_document(summary: CompareSummary, options: CompareOptions, texts: _Texts, stamp: str) -> dict:
    cases = []
    for case in summary.cases:
        data = case.to_dict()
        data["golden_token_text"] = texts.token(case.golden_token, golden=True)
        data["my_token_text"] = texts.token(case.my_token, golden=False)
        for change in data["changes"]:
            change["golden_token_text"] = texts.token(change["golden_token"], golden=True)
            change["my_token_text"] = texts.token(change["my_token"], golden=False)
        for step in data["steps"]:
            step["golden_top1_text"] = texts.token(step.get("golden_top1"), golden=True)
            step["my_top1_text"] = texts.token(step.get("my_top1"), golden=False)
        data["golden_manifest"] = texts.manifest(case, golden=True)
        data["my_manifest"] = texts.manifest(case, golden=False)
        cases.append(data)
    return {
        "schema_version": CASES_SCHEMA_VERSION,
        "tool": f"logitsdump {__version__}",
        "timestamp": stamp,
        "options": options.to_dict(),
        "summary": summary.to_dict(),
        "cases": cases,
    }
