"""The compare driver: pair the files, measure each pair, judge each case, write the results.

`measure` does the work and writes nothing; `run_compare` also writes the files
named in `outputs` and returns a `CompareSummary`. The rooms it calls:
`options` (what was asked), `pairing` (which files go together), `measure`
(the metrics of every pair), `provenance` (manifests, vocabularies, replays),
`judge` (a verdict per case) and `outputs` (the files).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from logitsdump import __version__
from logitsdump.compare import control as ctl
from logitsdump.compare import control_arm
from logitsdump.compare.choices import explain_choices
from logitsdump.compare.document import CompareDocument
from logitsdump.compare.floor import Floor
from logitsdump.compare.judge import judge_cases
from logitsdump.compare.measure import measure_all
from logitsdump.compare.options import CompareOptions
from logitsdump.compare.outputs import run_names, write_cases_csv, write_cases_json, write_steps_csv
from logitsdump.compare.pairing import pair_files
from logitsdump.compare.provenance import DumpFolders
from logitsdump.compare.records import CaseRecord, Step
from logitsdump.compare.verdicts import VERDICTS
from logitsdump.errors import DataError
from logitsdump.fsutil import check_path_fits, claim_stamped, ensure_writable_dir, result_set, timestamp
from logitsdump.logs import get_logger
from logitsdump.progress import tracked

_log = get_logger("compare")
#: From this many cases on, writing the case JSON is announced (it takes seconds).
LARGE_RUN = 5_000


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
    cases: tuple[CaseRecord, ...] = field(repr=False)
    #: The noise floor the replayed cases were judged against.
    floor: Floor | None = None
    #: What the verdicts were judged against (the control arm, or the floor alone).
    reference: ctl.Reference | None = None

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
    """The measuring half of a compare run: every step and every case's verdict, nothing written yet."""

    out_dir: Path
    steps: list[Step]
    #: Judged, with token texts and manifest summaries.
    cases: list[CaseRecord]
    #: The noise floor the cases were judged against (measured, flags, or the dtype's default).
    floor: Floor
    #: The options as run: `dtype` resolved from the manifests when it was not given.
    options: CompareOptions
    #: The parity preflight of the two folders (`triage.preflight.Preflight.to_dict()`).
    preflight: Mapping[str, Any] = field(default_factory=dict)
    #: The run's noise reference: the control arm where one covers cases, else the floor.
    reference: ctl.Reference | None = None


def measure(options: CompareOptions) -> Measured:
    """Check the options and folders (the output folder too, before any work), measure every pair,
    judge every case (replayed cases as replays)."""
    options.validate()
    golden_dir = _input_dir(options.golden_path, "-gp/--golden-path")
    my_dir = _input_dir(options.my_path, "-mp/--my-path")
    if options.tolerances_file is not None:
        check_path_fits(options.tolerances_file, "--tolerances")
    pairs = pair_files(golden_dir, my_dir)  # an unreadable folder: one line
    folders = DumpFolders(golden_dir, my_dir)
    options = options.with_dumps_dtype(folders.dtypes())  # -d not given: the dumps' own dtype
    floor = options.floor(folders.dtypes())  # a bad tolerances file fails before the output folder is made
    arm = _control_arm(options, golden_dir, folders, pairs)  # so does a control that does not fit
    out_dir = ensure_writable_dir(options.output_dir)
    from logitsdump.compare.topk import has_topk_files, measure_topk
    from logitsdump.triage.setup_verdicts import mark_setup_cases  # set-up differences before numerics

    if has_topk_files(golden_dir) or has_topk_files(my_dir):  # a server's top-k dump: top-k evidence only
        steps, cases = measure_topk(golden_dir, my_dir, folders, floor.tolerances, options.thresholds())
        cases, preflight = mark_setup_cases(cases, golden_dir, my_dir)
        return Measured(out_dir, steps, cases, floor, options, preflight)
    topk = _bounded_topk(options.topk, folders.vocab_size())
    _log.info("comparing %d file names from %s and %s", len(pairs), golden_dir, my_dir)
    steps = list(tracked(measure_all(pairs, options.thresholds(), topk, options.workers), "measuring file pairs",
                         len(pairs), "pair", logger=_log))
    replays = folders.replays(steps)
    dtypes = {"golden": folders.dtype(golden=True), "test": folders.dtype(golden=False)}
    if arm is not None:
        _log.info("judging against the control arm %s (%s)", arm.path, arm.description)
        control_steps = control_arm.ControlSteps.of(
            arm, measure_all(pair_files(golden_dir, arm.path), options.thresholds(), topk, options.workers))
        control_steps.check_not_silent()
        factor, _rule = ctl.spread_factor(dtypes["golden"], dtypes["test"], arm.dtype)
        judged = ctl.judge_with_control(steps, control_steps, floor.tolerances, replays, factor, gross=floor.gross)
    else:
        judged = judge_cases(steps, floor.tolerances, replays, gross=floor.gross)
    cases = [explain_choices(folders.annotate(replace(case, reference=case.reference or floor.source)),
                             folders.golden_cases, folders.my_cases, floor.tolerances.noise_margin)
             for case in judged]
    cases, preflight = mark_setup_cases(cases, golden_dir, my_dir)
    if arm is not None:
        reference = ctl.control_reference(arm, dtypes, cases, floor.label)
    else:
        reference = ctl.Reference(floor.source, floor.description, dtypes=dtypes)
    return Measured(out_dir, steps, cases, floor, options, preflight, reference)


def _control_arm(options: CompareOptions, golden_dir: Path, folders: DumpFolders,
                 pairs: list) -> control_arm.ControlArm | None:
    """The control arm of the run, checked against the golden dump; None without one (or an unusable one)."""
    located = control_arm.locate_control(golden_dir, options.control_path, options.use_control)
    if located is None:
        return None
    path, found = located
    check_path_fits(path, "--control")
    golden_names = [p.file_name for p in pairs if p.golden is not None]
    arm = control_arm.open_control(path, found, golden_dir, folders.golden_cases, golden_names)
    if not ctl.usable(arm, folders.dtype(golden=True), folders.dtype(golden=False)):
        return None
    return arm


def run_compare(options: CompareOptions, *, now: datetime | None = None) -> CompareSummary:
    """Compare two folders of logits files and write the CSVs and the case JSON."""
    measured = measure(options)
    steps, cases = measured.steps, measured.cases
    stamp = timestamp(now)
    with (claim_stamped(measured.out_dir, stamp, run_names) as (csv_path, cases_csv, cases_json),
          result_set((csv_path, cases_csv, cases_json)) as staged):  # the three appear together or not at all
        write_steps_csv(staged[0], tracked(steps, f"writing {csv_path.name}", len(steps), "row", logger=_log))
        write_cases_csv(staged[1], tracked(cases, f"writing {cases_csv.name}", len(cases), "case", logger=_log),
                        measured.floor.label, _control_label(measured.reference))
        counts = dict.fromkeys(VERDICTS, 0)
        for case in cases:
            counts[case.verdict] += 1
        summary = CompareSummary(
            csv_path=csv_path,
            cases_csv_path=cases_csv,
            cases_json_path=cases_json,
            rows=len(steps),
            compared=sum(1 for s in steps if s.metrics is not None),
            passed=sum(1 for s in steps if s.passed is True),
            failed=sum(1 for s in steps if s.passed is False),
            na=sum(1 for s in steps if s.metrics is None),
            parse_errors=sum(1 for s in steps if s.key is None),
            verdicts=counts,
            cases=tuple(cases),
            floor=measured.floor,
            reference=measured.reference,
        )
        document = CompareDocument(
            tool=f"logitsdump {__version__}", timestamp=stamp, options=measured.options.to_dict(measured.floor),
            summary={**summary.to_dict(), "preflight": measured.preflight}, cases=summary.cases,
            floor=measured.floor.to_dict(),
            reference=measured.reference.to_dict() if measured.reference is not None else None,
        )
        if len(cases) >= LARGE_RUN:  # one line: the JSON is written in one go
            _log.info("writing %s (%d cases)", cases_json.name, len(cases))
        write_cases_json(staged[2], document)
    _log.info("wrote %s", csv_path)
    return summary


def _control_label(reference: ctl.Reference | None) -> str | None:
    """The `reference` cell of the cases judged against the control arm."""
    if reference is None or reference.control is None:
        return None
    return f"control: {reference.control.description} ({reference.control.path})"


def _bounded_topk(topk: int, vocab: int | None) -> int:
    """`topk`, or the vocabulary size (from vocab.json) when it is smaller, with a warning.

    Without vocab.json (a real modeltest's dump) each pair bounds k by its own length.
    """
    if vocab is not None and topk > vocab:
        _log.warning("--topk %d is larger than the vocabulary (%d tokens in vocab.json): using %d", topk, vocab, vocab)
        return vocab
    return topk


def _input_dir(path: str | os.PathLike[str], flag: str) -> Path:
    folder = Path(path)
    check_path_fits(folder, flag)
    if not folder.exists():
        raise DataError(f"{flag}: folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{flag}: {folder} is not a folder")
    return folder
