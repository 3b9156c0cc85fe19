"""One side of the preflight: a run's provenance and each case's inputs, read from what the run left.

Three kinds of input, all torch-free:
- a dump folder (`manifest.jsonl`, and `provenance.json` from a logitsdump runner): each case's
  inputs from its manifest line;
- an evaluation's debug CSV (`*_debug_info.csv`, and `*_provenance.json` beside it from a logitsdump
  runner): each case's inputs from the provenance, else from the CSV's `input_token_ids` cells;
- an evaluation's output folder (one debug CSV below it, or one per task: `find_debug_csvs`).
What a real modeltest (or an older logitsdump) did not record is listed in `Side.not_recorded`, and
the preflight says "not recorded" for it; it never fails for a missing field.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logitsdump import store
from logitsdump.errors import DataError, FileFormatError
from logitsdump.runner.outputs import DEBUG_COLUMNS

#: How many leading token ids of each case a side keeps, for the findings' examples.
HEAD_IDS = 8
#: The largest debug CSV cell read (a long-context prompt's token ids).
MAX_CSV_FIELD = 64 * 1024 * 1024


@dataclass(frozen=True)
class Side:
    """What one side's run recorded."""

    #: Where it was read from (shown in the findings).
    source: Path
    #: "dump" or "eval".
    kind: str
    #: `RunProvenance.run`; None when the run wrote none (a real modeltest, an older logitsdump).
    run: Mapping[str, Any] | None
    #: case key -> its inputs (what was recorded, or derived from its token ids).
    cases: Mapping[str, store.CaseInputs] = field(default_factory=dict)
    #: case key -> the first HEAD_IDS prompt token ids (examples in the findings).
    heads: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    #: case key -> the query text's hash (before any template).
    queries: Mapping[str, str] = field(default_factory=dict)
    #: logits file name -> case key (dumps: how compare's cases find theirs).
    file_keys: Mapping[str, str] = field(default_factory=dict)
    #: What this side's files do not hold, in words.
    not_recorded: tuple[str, ...] = ()
    #: Keys whose inputs both sides are known to share, so the preflight skips them (`load_eval_pair`).
    alike: frozenset[str] = frozenset()


def load_side(path: str | os.PathLike[str], flag: str = "PATH") -> Side:
    """The side at `path`: a dump folder, a debug CSV, or an evaluation's output folder (one debug CSV)."""
    source = Path(path)
    if not source.exists():
        raise DataError(f"{flag}: {source} does not exist")
    if source.is_file():
        return load_eval_csv(source)
    if (source / store.MANIFEST_NAME).is_file() or (source / store.PROVENANCE_NAME).is_file():
        return load_dump(source)
    found = find_debug_csvs(source)
    if len(found) == 1:
        return load_eval_csv(next(iter(found.values())))
    if not found:
        raise DataError(f"{flag}: {source} holds no manifest.jsonl (a dump folder) and no *{store.DEBUG_CSV_SUFFIX} "
                        "(an evaluation's output folder, run with --save_debug_enable)")
    raise DataError(f"{flag}: {source} holds the debug CSVs of {len(found)} tasks ({', '.join(sorted(found))}): "
                    "give one task's debug CSV or folder")


def find_debug_csvs(folder: Path) -> dict[str, Path]:
    """task name -> its debug CSV, below an evaluation's output folder (modeltest's layout:
    debug/{dev}/precision_test/{task}/{dtype}/{model}/{stem}_debug_info.csv)."""
    found: dict[str, Path] = {}
    for csv_path in sorted(folder.rglob(f"*{store.DEBUG_CSV_SUFFIX}")):
        if csv_path.name.endswith("_bad_case" + store.DEBUG_CSV_SUFFIX):
            continue
        parts = csv_path.relative_to(folder).parts
        task = parts[parts.index("precision_test") + 1] if "precision_test" in parts[:-1] else csv_path.stem
        found.setdefault(task, csv_path)
    return found


def load_dump(folder: Path) -> Side:
    """A dump folder: its provenance.json and each manifest line's inputs."""
    run = _read_run(folder / store.PROVENANCE_NAME)
    records = store.read_manifest(folder)
    cases: dict[str, store.CaseInputs] = {}
    heads: dict[str, tuple[int, ...]] = {}
    queries: dict[str, str] = {}
    file_keys: dict[str, str] = {}
    derived = 0
    for record in records:
        key = str(record.key)
        recorded = store.CaseInputs.from_dict(record.inputs)
        if recorded.input_sha256 is None:
            derived += 1
            recorded = _derived(record.input_token_ids, run)
        cases[key] = recorded
        heads[key] = tuple(record.input_token_ids[:HEAD_IDS])
        queries[key] = store.text_sha256(record.query)
        file_keys.update({name: key for name in record.files})
    missing = []
    if run is None:
        missing.append(f"the run's settings ({store.PROVENANCE_NAME}: written by logitsdump's runner, not by a "
                       "real modeltest or an older logitsdump)")
    if not records:
        missing.append(f"the cases' inputs (no {store.MANIFEST_NAME})")
    elif derived:
        missing.append(f"{derived} case(s)' rendered prompt, few-shot examples and limits (their manifest lines "
                       "predate them; compared by token ids only)")
    return Side(folder, "dump", run, cases, heads, queries, file_keys, tuple(missing))


def load_eval_csv(csv_path: Path) -> Side:
    """An evaluation's debug CSV and the provenance beside it."""
    run_file = store.provenance_path_for_csv(csv_path)
    provenance = _read_provenance(run_file)
    run = provenance.run if provenance is not None else None
    recorded = provenance.cases if provenance is not None else {}
    cases: dict[str, store.CaseInputs] = {}
    heads: dict[str, tuple[int, ...]] = {}
    queries: dict[str, str] = {}
    derived = 0
    for key, query, ids in _debug_rows(csv_path):
        inputs = store.CaseInputs.from_dict(recorded.get(key))
        if inputs.input_sha256 is None and ids is not None:
            derived += 1
            inputs = _derived(ids, run)
        cases[key] = inputs
        if ids is not None:
            heads[key] = tuple(ids[:HEAD_IDS])
        if query is not None:
            queries[key] = store.text_sha256(query)
    return Side(csv_path, "eval", run, cases, heads, queries, {}, _eval_not_recorded(csv_path, run, derived))


def _eval_not_recorded(csv_path: Path, run: Mapping[str, Any] | None, derived: int) -> tuple[str, ...]:
    """What an evaluation's side lacks, in words: the run's settings, and the inputs of `derived` cases."""
    missing = []
    if run is None:
        missing.append(f"the run's settings ({store.provenance_path_for_csv(csv_path).name}: written by logitsdump "
                       "eval --save_debug_enable, not by a real modeltest or an older logitsdump)")
    if derived:
        missing.append(f"{derived} case(s)' rendered prompt, few-shot examples, limits and stop reason (compared by "
                       "the debug CSV's token ids only)")
    return tuple(missing)


#: A case neither side recorded whose two rows hold the same query and prompt ids: nothing to tell apart.
_SAME_ROWS = store.CaseInputs()

#: case key -> (query, the input_token_ids cell as written) of a debug CSV (None: no such column).
Rows = Mapping[str, tuple[str | None, str | None]]


def rows_by_key(csv_path: Path) -> dict[str, tuple[str | None, str | None]]:
    """`Rows` of a debug CSV (`debug_cells`; a key seen twice: its last row)."""
    return {key: (query, ids) for key, query, ids in debug_cells(csv_path)}


def load_eval_pair(golden_csv: Path, test_csv: Path, golden_rows: Rows | None = None,
                   test_rows: Rows | None = None) -> tuple[Side, Side]:
    """Both sides of two debug CSVs, as `load_eval_csv` reads each, in seconds for a million rows a side.

    A case that neither provenance recorded and whose two rows hold the same query and the same token-id
    cell is not parsed: derived from the same ids, its inputs cannot differ, so both sides hold the same
    empty `CaseInputs` for it (the preflight skips them: `Side.alike`). `golden_rows`,
    `test_rows`: the rows when the caller has read them already (bcanalyze), else `rows_by_key` of each.
    """
    provenances = [_read_provenance(store.provenance_path_for_csv(p)) for p in (golden_csv, test_csv)]
    if any(p is not None and p.cases for p in provenances):  # recorded inputs: compared field by field
        return load_eval_csv(golden_csv), load_eval_csv(test_csv)
    golden_rows = rows_by_key(golden_csv) if golden_rows is None else golden_rows
    test_rows = rows_by_key(test_csv) if test_rows is None else test_rows
    golden_row = golden_rows.get
    alike = frozenset(key for key, row in test_rows.items() if golden_row(key) == row)  # most of a healthy pair
    listed = sum(1 for _, cell in test_rows.values() if cell and cell.lstrip()[:1] == "[")  # `_ids`'s first test
    same_derived = listed - sum(1 for key in test_rows.keys() - alike
                                if (cell := test_rows[key][1]) and cell.lstrip()[:1] == "[")
    sides = []
    for path, rows, provenance in ((golden_csv, golden_rows, provenances[0]), (test_csv, test_rows, provenances[1])):
        run = provenance.run if provenance is not None else None
        cases: dict[str, store.CaseInputs] = dict.fromkeys(rows, _SAME_ROWS)  # the file's order, as load_eval_csv
        heads: dict[str, tuple[int, ...]] = {}
        queries: dict[str, str] = {}
        derived = same_derived
        for key in rows.keys() - alike:
            query, cell = rows[key]
            ids = _ids(cell)
            cases[key] = _derived(ids, run) if ids is not None else store.CaseInputs()
            derived += ids is not None
            if ids is not None:
                heads[key] = tuple(ids[:HEAD_IDS])
            if query is not None:
                queries[key] = store.text_sha256(query)
        sides.append(Side(path, "eval", run, cases, heads, queries, {}, _eval_not_recorded(path, run, derived),
                          alike))
    return sides[0], sides[1]


def _derived(ids: tuple[int, ...] | list[int], run: Mapping[str, Any] | None) -> store.CaseInputs:
    """The inputs a case's token ids tell by themselves (the BOS count when the run names its BOS id)."""
    tokenizer = run.get("tokenizer") if isinstance(run, Mapping) else None
    bos = tokenizer.get("bos_token_id") if isinstance(tokenizer, Mapping) else None
    return store.CaseInputs(
        input_sha256=store.token_ids_sha256(ids), input_length=len(ids),
        bos_count=sum(1 for i in ids if i == bos) if isinstance(bos, int) else None,
    )


def _read_provenance(path: Path) -> store.RunProvenance | None:
    try:
        return store.read_provenance(path)
    except FileFormatError as err:
        raise DataError(str(err)) from None


def _read_run(path: Path) -> Mapping[str, Any] | None:
    provenance = _read_provenance(path)
    return provenance.run if provenance is not None else None


def _debug_rows(csv_path: Path):
    """(key, query or None, token ids or None) of each row of a debug CSV."""
    for key, query, ids in debug_cells(csv_path):
        yield key, query, _ids(ids)


def debug_cells(csv_path: Path) -> Iterator[tuple[str, str | None, str | None]]:
    """(key, query, the input_token_ids cell as written) of each row of a debug CSV (None: no such column)."""
    csv.field_size_limit(MAX_CSV_FIELD)
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or "key" not in header:
                raise DataError(f"{csv_path}: not a debug CSV (no 'key' column; expected {', '.join(DEBUG_COLUMNS)})")
            column = {name: header.index(name) for name in ("key", "queries", "input_token_ids") if name in header}
            for cells in reader:
                if len(cells) <= column["key"] or not cells[column["key"]].strip():
                    continue
                yield (cells[column["key"]].strip(), _cell(cells, column.get("queries")),
                       _cell(cells, column.get("input_token_ids")))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {csv_path}: {getattr(err, 'strerror', None) or err}") from None


def _cell(cells: list[str], index: int | None) -> str | None:
    return cells[index] if index is not None and index < len(cells) else None


def _ids(text: str | None) -> list[int] | None:
    """A `[1, 2, 3]` cell as ints; None when it is not such a list."""
    if not text or not text.lstrip().startswith("["):
        return None
    try:
        value = json.loads(text)  # Python's repr of a list of ints is JSON
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return None
    return value
