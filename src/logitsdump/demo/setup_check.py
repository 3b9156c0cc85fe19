"""Run a planted set-up difference end to end and score the preflight on it (bench/setup_diffs.py, tests).

For one `setup_plants.Planted` pair: evaluate both sides (debug CSVs and provenance), run the
preflight on the two debug CSVs (what bcanalyze sees), then dump every case on both sides and compare
them (what compare sees). The truth is taken from the outputs themselves, not from the preflight: a
prompt kind (`setup_plants.PROMPT_KINDS`) touches the cases whose prompt token ids differ in the two
debug CSVs, the other kinds touch every case, `clean` none. A hit is a touched case whose causes
include the planted one; a false alarm is an untouched case with any set-up cause.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from logitsdump.demo.setup_plants import CLEAN, EXPECTED_CAUSE, PROMPT_KINDS, Planted, SidePaths


@dataclass(frozen=True)
class Score:
    """How the preflight did on one planted pair, at the eval level (bcanalyze) and the dump level (compare)."""

    kind: str
    cases: int
    touched: int
    eval_hits: int
    eval_false: int
    dump_cases: int = 0
    dump_hits: int = 0
    dump_false: int = 0
    #: Every cause the eval-level preflight named, with how many cases it named it for.
    causes: dict[str, int] = field(default_factory=dict)
    #: The planted cause's finding sentence.
    finding: str = ""


def run_pair(planted: Planted, workdir: Path, *, tokens: int = 4, dump: bool = True,
             cache: dict[str, Path] | None = None) -> Score:
    """Evaluate, preflight, dump and compare one pair (on the CPU) under `workdir`. `cache`: the outputs of
    golden sides already run, by their YAML files' text (most kinds share their golden side)."""
    from logitsdump.triage.preflight import preflight
    from logitsdump.triage.sides import load_eval_csv

    cache = cache if cache is not None else {}
    golden_key = _key(planted.golden)
    golden_csv = cache.get("eval " + golden_key) or _evaluate(planted.golden, workdir / "eval" / "golden")
    cache["eval " + golden_key] = golden_csv
    test_csv = _evaluate(planted.test, workdir / "eval" / "test")
    result = preflight(load_eval_csv(golden_csv), load_eval_csv(test_csv))
    golden_ids, test_ids = _ids(golden_csv), _ids(test_csv)
    keys = [k for k in golden_ids if k in test_ids]
    touched = _touched(planted.kind, keys, golden_ids, test_ids)
    expected = EXPECTED_CAUSE.get(planted.kind)
    causes = Counter(c for k in keys for c in result.case_causes.get(k, ()))
    finding = next((f.text for f in result.setup if f.cause == expected), "")
    score = Score(
        planted.kind, len(keys), len(touched),
        eval_hits=sum(1 for k in touched if expected in result.case_causes.get(k, ())),
        eval_false=sum(1 for k in keys if k not in touched and result.case_causes.get(k)),
        causes=dict(causes), finding=finding,
    )
    if not dump:
        return score
    records = _dump_and_compare(planted, workdir, [int(k) for k in keys], tokens, cache)
    marked = {str(r.key): r for r in records}
    return Score(
        **{**score.__dict__, "dump_cases": len(records),
           "dump_hits": sum(1 for k in touched if k in marked and f"setup:{expected}" in marked[k].findings),
           "dump_false": sum(1 for k, r in marked.items() if k not in touched and r.verdict == "setup-differs")},
    )


def _touched(kind: str, keys: list[str], golden: dict[str, list[int]], test: dict[str, list[int]]) -> set[str]:
    if kind == CLEAN:
        return set()
    if kind in PROMPT_KINDS:
        return {k for k in keys if golden[k] != test[k]}
    return set(keys)


def _evaluate(side: SidePaths, out: Path) -> Path:
    from logitsdump.runner.evaluate import EvalOptions, run_eval

    options = EvalOptions(str(side.model_yaml), str(side.task_yaml), output_dir=str(out), save_debug=True,
                          device="cpu")
    with contextlib.redirect_stdout(io.StringIO()):
        return run_eval(options).layout.debug_file


def _ids(csv_path: Path) -> dict[str, list[int]]:
    import csv

    with open(csv_path, encoding="utf-8", newline="") as handle:
        return {row["key"]: json.loads(row["input_token_ids"]) for row in csv.DictReader(handle)}


def _key(side: SidePaths) -> str:
    return side.model_yaml.read_text(encoding="utf-8") + side.task_yaml.read_text(encoding="utf-8")


def _dump_and_compare(planted: Planted, workdir: Path, indices: list[int], tokens: int, cache: dict[str, Path]):
    from logitsdump.compare import CompareOptions
    from logitsdump.compare.run import measure
    from logitsdump.protocol import DumpRequest, child_environment
    from logitsdump.runner.evaluate import EvalOptions, run_eval
    from logitsdump.triage.rerun import environment

    request = DumpRequest(token_max_length=tokens, indices=tuple(sorted(indices)))
    env = child_environment({}, request)
    folders = []
    for name, side in (("golden", planted.golden), ("test", planted.test)):
        key = f"dump {tokens} {indices} " + _key(side)
        if name == "golden" and key in cache:
            folders.append(cache[key])
            continue
        options = EvalOptions(str(side.model_yaml), str(side.task_yaml), output_dir=str(workdir / "dump" / name),
                              device="cpu")
        with environment(env), contextlib.redirect_stdout(io.StringIO()):
            folders.append(run_eval(options).layout.logits_dir)
        cache[key] = folders[-1]
    measured = measure(CompareOptions(golden_path=str(folders[0]), my_path=str(folders[1]),
                                      output_dir=str(workdir / "compare")))
    return measured.cases
