"""Result CSVs: reading them, finding bad cases (`bcanalyze`) and turning keys into a dump request.

Pure csv-module code (no pandas, no torch). Files read here are modeltest debug CSVs
(`key,queries,input_token_ids,output_token_ids,test_result,golden_result,pass`), the older
harness's timestamped debug CSVs (same columns), pass_k `..._bad_case_debug_info.csv` files
(`key,passed`) and our own / msit's `msit_bad_case_result_<ts>.csv`.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What bcanalyze takes and gives, shared with lm-eval's samples (lmeval/badcases.py) from their own module.
from logitsdump.bcresult import (  # noqa: F401  (re-exported: `from logitsdump.badcase import ...`)
    DEFAULT_ANALYZER_DIR,
    RESULT_PREFIX,
    SHOWN_KEYS,
    BcanalyzeOptions,
    BcanalyzeResult,
    Flips,
    first_keys,
)
from logitsdump.csvsafe import original, write_csv
from logitsdump.errors import DataError, UsageError
from logitsdump.fsutil import (
    check_can_write,
    check_path_fits,
    check_regular,
    claim_stamped,
    ensure_writable_dir,
    open_input,
    timestamp,
)
from logitsdump.logs import get_logger
from logitsdump.progress import Progress
from logitsdump.protocol import HUMANEVALX_PREFIXES, DumpRequest

_TRUE = {"true", "correct", "1", "1.0"}
_FALSE = {"false", "wrong", "0", "0.0"}
_INT_KEY = re.compile(r"-?[0-9]{1,18}")  # bounded: int() refuses very long digit strings
_PREFIXED_KEY = re.compile(r"([^/]+)/(-?[0-9]{1,18})")
_HUMANEVAL = "HumanEval"

log = get_logger("badcase")


# ---- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultRow:
    """One data row: its line number (1-based, as an editor shows it) and its cells by column."""

    line: int
    cells: dict[str, str]


@dataclass(frozen=True)
class ResultTable:
    """A result CSV read whole. `pass` is renamed `passed`; `passed` is normalised (`true`/`false`)."""

    path: Path
    columns: tuple[str, ...]
    rows: tuple[ResultRow, ...]


def normalise_passed(value: str) -> str:
    """msit's rule, widened: lower-case; correct/1 -> true, wrong/0 -> false; other text kept lower-cased."""
    text = value.strip().lower()
    if text in _TRUE:
        return "true"
    if text in _FALSE:
        return "false"
    return text


def canonical_key(value: str) -> str:
    """A key as compared: stripped; an int key without leading zeros or `+`."""
    text = value.strip()
    if text.isdigit() and text.isascii() and text[0] != "0":  # the common case, without a regex
        return text
    if _INT_KEY.fullmatch(text):
        return str(int(text))
    return text


def check_csv_path(path: str | os.PathLike[str]) -> Path:
    """An existing, non-empty `.csv` file, else a one-line DataError."""
    csv_path = Path(path)
    check_path_fits(csv_path, "input file")
    if csv_path.suffix.lower() != ".csv":
        raise DataError(f"{csv_path} is not a .csv file: give the CSV written by eval/modeltest or bcanalyze")
    if not csv_path.exists():
        raise DataError(f"{csv_path} does not exist")
    if not csv_path.is_file():
        raise DataError(f"{csv_path} is not a file")
    if csv_path.stat().st_size == 0:
        raise DataError(f"{csv_path} is empty (0 bytes): expected a CSV with a header line")
    return csv_path


_NOT_UTF8 = "{path} is not UTF-8 text: save it as UTF-8 (CSV UTF-8 in a spreadsheet program)"


@contextlib.contextmanager
def _rows(path: Path) -> Iterator[tuple[list[str], Iterator[tuple[int, list[str]]]]]:
    """(header, iterator of (line, cells)) of a CSV; blank lines skipped; errors as DataError."""
    with _reader(path) as (header, reader):

        def body() -> Iterator[tuple[int, list[str]]]:
            with _row_errors(path, reader) as where:
                for cells in reader:
                    if cells and any(cells):
                        yield reader.line_num, cells
                    where[0] = reader.line_num + 1

        yield header, body()


@contextlib.contextmanager
def _reader(path: Path) -> Iterator[tuple[list[str], Any]]:
    """(header, csv reader positioned after it) of a regular CSV file; errors as DataError."""
    old_limit = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long queries (LongBench) exceed 128 KiB
    try:
        with open_input(path, "input file", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, strict=True)  # a stray quote must not swallow the rest
            try:
                header = next(reader, None)
            except UnicodeDecodeError:
                raise DataError(_NOT_UTF8.format(path=path)) from None
            except csv.Error as err:
                raise DataError(f"{path}: cannot read the header line: {err}") from None
            if header is None or not any(cell.strip() for cell in header):
                raise DataError(f"{path} has no header line")
            yield [cell.strip() for cell in header], reader
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    finally:
        csv.field_size_limit(old_limit)


@contextlib.contextmanager
def _row_errors(path: Path, reader: Any) -> Iterator[list[int]]:
    """Turn a decoding or CSV error of the rows into a DataError naming the line where the bad row starts
    (the caller keeps `where[0]` at the line after the last good row)."""
    where = [reader.line_num + 1]
    try:
        yield where
    except UnicodeDecodeError:  # decoded ahead in blocks: the line number would be wrong
        raise DataError(_NOT_UTF8.format(path=path)) from None
    except csv.Error as err:
        raise DataError(f"{path}: the row starting on line {where[0]} is not valid CSV: {err}") from None


def read_result_csv(path: str | os.PathLike[str]) -> ResultTable:
    """Read a result CSV; require `key` and `pass`/`passed` (DataError naming the file otherwise)."""
    table = _read_table(path)
    rows = tuple(ResultRow(line, dict(zip(table.columns, cells, strict=False)))
                 for line, cells in zip(table.lines, table.rows, strict=True))
    return ResultTable(table.path, table.columns, rows)


@dataclass(frozen=True)
class _Table:
    """A result CSV as bcanalyze joins it: each row's cells (padded to the header), `passed` normalised.

    Lists of cells, not a dict per row: a million-row file is read in about a second.
    """

    path: Path
    columns: tuple[str, ...]
    lines: list[int]
    rows: list[list[str]]

    def column(self, name: str) -> int:
        return self.columns.index(name)


#: Rows between two progress updates while a CSV is read.
_PROGRESS_ROWS = 1 << 16


def _read_table(path: str | os.PathLike[str]) -> _Table:
    csv_path = check_csv_path(path)
    with _reader(csv_path) as (header, reader):
        columns = tuple("passed" if name == "pass" and "passed" not in header else name for name in header)
        missing = [name for name in ("key", "passed") if name not in columns]
        if missing:
            raise DataError(
                f"{csv_path} has no {' or '.join(repr(m) for m in missing)} column "
                f"(found: {', '.join(header)}); expected a debug CSV with key and pass/passed"
            )
        width, passed = len(columns), columns.index("passed")
        lines: list[int] = []
        rows: list[list[str]] = []
        verdicts: dict[str, str] = {}  # raw pass cell -> normalised: a few distinct values
        with Progress(f"reading {csv_path.name}", None, "row", logger=log) as progress, \
                _row_errors(csv_path, reader) as where:
            for cells in reader:
                if cells and (cells[0] or any(cells)):
                    if len(cells) < width:
                        cells += [""] * (width - len(cells))
                    raw = cells[passed]
                    verdict = verdicts.get(raw)
                    if verdict is None:
                        verdict = verdicts[raw] = normalise_passed(raw)
                    cells[passed] = verdict
                    lines.append(reader.line_num)
                    rows.append(cells)
                    if not len(rows) % _PROGRESS_ROWS:
                        progress.update(_PROGRESS_ROWS)
                where[0] = reader.line_num + 1
            progress.update(len(rows) % _PROGRESS_ROWS)
    return _Table(csv_path, columns, lines, rows)


def bcanalyze(
    golden_csv: str | os.PathLike[str],
    test_csv: str | os.PathLike[str],
    output_dir: str | os.PathLike[str] = DEFAULT_ANALYZER_DIR,
) -> Path | None:
    """Write the bad cases of `test_csv` against `golden_csv`; return the file (None: no difference)."""
    return analyze(BcanalyzeOptions(str(golden_csv), str(test_csv), str(output_dir))).output_path


def analyze(options: BcanalyzeOptions) -> BcanalyzeResult:
    """msit's bcanalyze (msit-cli.md §2) without its bugs; warnings are logged and returned.

    Two lm-eval `--log_samples` files (recognised by their content) go to `lmeval.badcases`.
    """
    from logitsdump.lmeval.samples import is_samples_file

    check_can_write(options.output_dir)  # before any work (the folder is created only for a result)
    for flag, path in (("-gp/--golden-path", options.golden_path), ("-mp/--my-path", options.test_path)):
        check_path_fits(path, "input file")
        check_regular(path, flag)  # a FIFO would block the content sniffing below

    kinds = [is_samples_file(p) for p in (options.golden_path, options.test_path)]
    if any(kinds):
        if not all(kinds):
            which = options.golden_path if kinds[0] else options.test_path
            raise DataError(f"{which} is an lm-eval samples file but the other input is not: give two "
                            "samples_<task>_*.jsonl files of the same task, or two result CSVs")
        from logitsdump.lmeval.badcases import analyze_samples

        return analyze_samples(options)
    if options.metric is not None or options.lm_eval_filter is not None:
        raise UsageError("--metric and --filter apply to lm-eval samples files only, not to result CSVs")
    with _collector_paused():  # millions of small lists and no cycle: the cyclic GC would take a third
        return _analyze_tables(options, _read_table(options.golden_path), _read_table(options.test_path))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _analyze_tables(options: BcanalyzeOptions, golden: _Table, test: _Table) -> BcanalyzeResult:
    """The join of two result tables, the bad-case CSV and McNemar's test."""
    warnings: list[str] = []
    preflight = _preflight(options, golden, test)

    join = ["key"]
    if "queries" in golden.columns:
        if "queries" in test.columns:
            join.append("queries")
        else:
            warnings.append(f"{test.path} has no 'queries' column: matching rows on 'key' only")
    with_ids = "input_token_ids" in golden.columns and "output_token_ids" in golden.columns
    header = ["key"] + (["queries"] if "queries" in golden.columns else [])
    compared = ["input_token_ids", "output_token_ids", "passed"] if with_ids else ["passed"]
    for name in compared:
        header += [f"{name}_golden", f"{name}_test"]

    golden_index = _index(golden, join, warnings)
    test_index = _index(test, join, warnings)
    same_cases = golden_index.keys() == test_index.keys()  # a set comparison in C: the common case
    missing = [] if same_cases else [ident for ident in golden_index if ident not in test_index]
    extra = [] if same_cases else [ident for ident in test_index if ident not in golden_index]
    if missing:
        warnings.append(
            f"{len(missing)} golden case(s) not found in {test.path}, "
            f"e.g. keys {first_keys(k for k, *_ in missing)}"
        )
    if extra:
        warnings.append(
            f"{len(extra)} test case(s) not found in {golden.path}, e.g. keys {first_keys(k for k, *_ in extra)}"
        )

    out_rows: list[list[str]] = []
    unjudged: list[str] = []
    count = 0
    pairs: dict[tuple[str, str], int] = {}  # (golden, test) pass cells -> cases
    g_key, g_passed, t_passed = golden.column("key"), golden.column("passed"), test.column("passed")
    g_queries = golden.column("queries") if "queries" in golden.columns else None
    taken = [(golden.column(name), test.column(name) if name in test.columns else None) for name in compared]
    progress = Progress("matching golden and test rows", len(golden_index), "row", logger=log)
    for seen, (ident, g_cells) in enumerate(golden_index.items(), 1):
        if not seen % _PROGRESS_ROWS:
            progress.update(_PROGRESS_ROWS)
        t_cells = test_index.get(ident)
        if t_cells is None:
            continue
        count += 1
        g_pass, t_pass = g_cells[g_passed], t_cells[t_passed]
        if not g_pass or not t_pass:
            unjudged.append(ident[0])
            continue
        pairs[g_pass, t_pass] = pairs.get((g_pass, t_pass), 0) + 1
        if g_pass == t_pass:
            continue
        row = [g_cells[g_key].strip()] + ([g_cells[g_queries]] if g_queries is not None else [])
        for g_col, t_col in taken:
            row += [g_cells[g_col], t_cells[t_col] if t_col is not None else ""]
        out_rows.append(row)
    progress.close()
    if unjudged:
        warnings.append(
            f"{len(unjudged)} case(s) have an empty pass/passed cell, e.g. keys {first_keys(unjudged)}"
        )

    flips = _flips(pairs)
    for message in warnings:
        log.warning(message)
    log.info("%s", flips.describe())
    if not out_rows:
        log.warning("no difference between the golden and the test results: no file written")
        return BcanalyzeResult(None, 0, count, tuple(warnings), flips, preflight)
    folder = ensure_writable_dir(options.output_dir)
    if len(out_rows) >= _PROGRESS_ROWS:
        log.info("writing %d bad cases", len(out_rows))
    with claim_stamped(folder, timestamp(), lambda tag: (f"{RESULT_PREFIX}{tag}.csv",)) as (path,):
        write_csv(path, header, out_rows)
    log.debug("%d bad case(s) of %d compared written to %s", len(out_rows), count, path)
    return BcanalyzeResult(path, len(out_rows), count, tuple(warnings), flips, preflight)


def _preflight(options: BcanalyzeOptions, golden: _Table, test: _Table) -> Any:
    """The parity preflight of the two debug CSVs (and the provenance files beside them), from the rows
    already read; a provenance file that cannot be read is a warning."""
    from logitsdump.triage.preflight import preflight
    from logitsdump.triage.sides import load_eval_pair

    try:
        return preflight(*load_eval_pair(Path(options.golden_path), Path(options.test_path), _rows_by_key(golden),
                                         _rows_by_key(test)))
    except DataError as err:
        log.warning("preflight skipped: %s", err)
        return None


def _rows_by_key(table: _Table) -> dict[str, tuple[str | None, str | None]]:
    """The rows as `triage.sides.rows_by_key` reads them from the file: key -> (query, input_token_ids)."""
    key = table.column("key")
    query = table.column("queries") if "queries" in table.columns else None
    ids = table.column("input_token_ids") if "input_token_ids" in table.columns else None
    if query is not None and ids is not None:
        found = {cells[key].strip(): (cells[query], cells[ids]) for cells in table.rows}
    else:
        found = {cells[key].strip(): (cells[query] if query is not None else None,
                                      cells[ids] if ids is not None else None) for cells in table.rows}
    found.pop("", None)  # rows without a key
    return found


def _flips(pairs: dict[tuple[str, str], int]) -> Flips:
    """McNemar's counts from the cases per (golden, test) normalised pass cell: only true/false are
    passes and fails; other values are not judged."""
    judged = {k: v for k, v in pairs.items() if k[0] in ("true", "false") and k[1] in ("true", "false")}
    return Flips(
        golden_passed=sum(v for (g, _), v in judged.items() if g == "true"),
        test_passed=sum(v for (_, t), v in judged.items() if t == "true"),
        judged=sum(judged.values()),
        pass_to_fail=judged.get(("true", "false"), 0),
        fail_to_pass=judged.get(("false", "true"), 0),
    )


def _index(table: _Table, join: Sequence[str], warnings: list[str]) -> dict[tuple[str, ...], list[str]]:
    """First row per join identity; empty keys and duplicates reported in `warnings`."""
    index: dict[tuple[str, ...], list[str]] = {}
    duplicates: list[str] = []
    empty: list[str] = []
    key_col = table.column("key")
    query_col = table.column("queries") if len(join) > 1 else None
    for line, cells in zip(table.lines, table.rows, strict=True):
        key = canonical_key(cells[key_col])
        if not key:
            empty.append(str(line))
            continue
        # queries as first written: ours are formula-neutralised ('=...), modeltest's are not
        if query_col is None:
            ident: tuple[str, ...] = (key,)
        else:
            query = cells[query_col]
            ident = (key, original(query) if query[:1] == "'" else query)
        if ident in index:
            duplicates.append(key)
        else:
            index[ident] = cells
    if empty:
        warnings.append(
            f"{table.path}: {len(empty)} row(s) with an empty key skipped, on lines {first_keys(empty)}"
        )
    if duplicates:
        warnings.append(
            f"{table.path}: {len(duplicates)} duplicated key(s), only the first row of each is used: "
            f"{first_keys(duplicates)}"
        )
    return index


# ---- bad-case CSV -> dump request ---------------------------------------------------------------


@dataclass(frozen=True)
class BadCaseKeys:
    """The parsed `key` column: msit's BAD_CASE_LIST indices, and the keys seen more than once."""

    indices: tuple[int, ...] | tuple[tuple[int, ...], ...]
    duplicates: tuple[str, ...]


def read_key_rows(path: str | os.PathLike[str]) -> list[ResultRow]:
    """Every data row of a bad-case CSV (cells by column, `key` stripped); DataError on a missing
    `key` column, an empty key cell, or no rows."""
    csv_path = check_csv_path(path)
    rows: list[ResultRow] = []
    with _rows(csv_path) as (header, body):
        if "key" not in header:
            raise DataError(f"{csv_path} has no 'key' column (found: {', '.join(header)})")
        column = header.index("key")
        for line, cells in body:
            values = dict(zip(header, cells, strict=False))
            values["key"] = cells[column].strip() if column < len(cells) else ""
            if not values["key"]:
                raise DataError(f"{csv_path}: empty key cell on line {line}")
            rows.append(ResultRow(line, values))
    if not rows:
        raise DataError(f"{csv_path} has a header but no bad cases: nothing to dump")
    return rows


def read_keys(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """(line, key text) of every data row of a bad-case CSV; DataError on a missing column or empty cell."""
    return [(row.line, row.cells["key"]) for row in read_key_rows(path)]


def parse_keys(keys: Sequence[tuple[int, str]], source: str = "the bad-case CSV") -> BadCaseKeys:
    """msit's rule (msit-cli.md §3.2): all ints -> one list; `HumanEval/N` -> ints;
    `CPP|Go|Java|JavaScript|Python/N` -> five lists. Anything else raises DataError."""
    if not keys:
        raise DataError(f"{source} has no bad cases: nothing to dump")
    ints: dict[int, None] = {}
    humaneval: dict[int, None] = {}
    per_language: list[dict[int, None]] = [{} for _ in HUMANEVALX_PREFIXES]
    first_of_kind: dict[str, tuple[int, str]] = {}
    duplicates: list[str] = []
    prefixes = {p.lower(): i for i, p in enumerate(HUMANEVALX_PREFIXES)}
    for line, raw in keys:
        text = raw.strip()
        if _INT_KEY.fullmatch(text):
            kind, number, target = "int", int(text), ints
        else:
            match = _PREFIXED_KEY.fullmatch(text)
            if match is None:
                raise DataError(_unknown_key(source, line, text))
            prefix, number = match.group(1), int(match.group(2))
            if prefix.lower() == _HUMANEVAL.lower():
                kind, target = "HumanEval", humaneval
            elif prefix.lower() in prefixes:
                kind, target = "HumanEval-X", per_language[prefixes[prefix.lower()]]
            else:
                raise DataError(_unknown_key(source, line, text))
        if number < 0:
            raise DataError(f"{source}: negative key {text!r} on line {line}: keys are 0-based row indices")
        first_of_kind.setdefault(kind, (line, text))
        if len(first_of_kind) > 1:
            raise DataError(_mixed(source, first_of_kind))
        if number in target:
            duplicates.append(text)
        target[number] = None
    if "HumanEval-X" in first_of_kind:
        indices: tuple = tuple(tuple(sorted(group)) for group in per_language)
    else:
        indices = tuple(sorted(ints if "int" in first_of_kind else humaneval))
    return BadCaseKeys(indices, tuple(duplicates))


def _unknown_key(source: str, line: int, text: str) -> str:
    shown = text if len(text) <= 60 else text[:57] + "..."
    return (
        f"{source}: key {shown!r} on line {line} is not a row index: expected an int >= 0, HumanEval/N or "
        f"{'|'.join(HUMANEVALX_PREFIXES)}/N (keys like subject_N from the old harness cannot be dumped: "
        "re-run eval and analyse its debug CSV)"
    )


def _mixed(source: str, first_of_kind: dict[str, tuple[int, str]]) -> str:
    (kind_a, (line_a, key_a)), (kind_b, (line_b, key_b)) = list(first_of_kind.items())[:2]
    what = (
        "HumanEval and HumanEval-X" if {kind_a, kind_b} == {"HumanEval", "HumanEval-X"} else "int and string"
    )
    return (
        f"{source} mixes {what} keys ({key_a!r} on line {line_a}, {key_b!r} on line {line_b}): "
        "use one bad-case CSV per task"
    )


#: A bcanalyze output name: `msit_bad_case_result_<YYYYmmddHHMMSS>[_N].csv`.
RESULT_NAME = re.compile(rf"^{RESULT_PREFIX}(\d{{14}})(?:_(\d+))?\.csv$")


def resolve_bad_case_csv(path: str | os.PathLike[str]) -> tuple[Path, int]:
    """`-bcr`: a bad-case CSV as given, or in a bcanalyze output folder its newest
    `msit_bad_case_result_<ts>.csv` (by the time stamp in the name, then the `_N` suffix); also how many
    result files the folder holds (1 for a file). Raises DataError when a folder holds none."""
    given = Path(path)
    if not given.is_dir():
        return given, 1
    results = []
    for entry in given.iterdir():
        match = RESULT_NAME.match(entry.name)
        if match is not None and entry.is_file():
            results.append(((match.group(1), int(match.group(2) or 0)), entry))
    if not results:
        raise DataError(f"-bcr {given}: no {RESULT_PREFIX}<timestamp>.csv in this folder: give bcanalyze's "
                        "output folder or a bad-case CSV")
    return max(results)[1], len(results)


def read_bad_case_request(
    path: str | os.PathLike[str],
    token_max_length: int = 1,
    *,
    resume: bool = False,
    logits_fp32: bool = False,
) -> DumpRequest:
    """The DumpRequest for a bad-case CSV (duplicated keys logged as a warning)."""
    keys = parse_keys(read_keys(path), source=str(path))
    if keys.duplicates:
        log.warning(
            "%s: %d duplicated key(s) dumped once: %s", path, len(keys.duplicates), first_keys(keys.duplicates)
        )
    return DumpRequest(
        token_max_length=token_max_length, indices=keys.indices, resume=resume, logits_fp32=logits_fp32
    )
