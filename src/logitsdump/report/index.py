"""What the report needs of every case, in memory that does not grow with the steps: a compact row per
case, the judged steps' values behind the statistics, and which cases get a detailed section.

A `CaseRow` is a `records.CaseRecord` without its steps and manifests (about 1 KB): the overview, the
table of all cases and the terminal's worst cases read rows. `StepValues` keeps, per task, the five
numbers per judged step llama.cpp's statistics and the run's plots need (about 40 bytes a step).
`index_cases` builds both in one pass over the cases, each of which can then be dropped.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from logitsdump.compare import verdicts
from logitsdump.compare.distribution import StepStatistics, summarize
from logitsdump.compare.records import ArgmaxChange, CaseRecord

#: With more cases than this, only the most severe of the cases that matter get a detailed section.
DETAIL_LIMIT = 200
#: With more cases than this, the table of all cases lists the most severe this many.
TABLE_LIMIT = 50_000
#: Rows of the table shown at a time ("show more" adds as many): a browser lays out only those.
PAGE_ROWS = 500


@dataclass(frozen=True)
class CaseRow:
    """One case as the overview, the table and the summary show it (see `CaseRecord` for the fields)."""

    subject: str
    key: int | str
    verdict: str
    reason: str
    task: str
    tokens_total: int
    tokens_judged: int
    first_diff_token: int | None
    worst_cosine: float | None
    worst_kl: float | None
    flip_margin: float | None
    replay_mode: str | None
    changes: tuple[ArgmaxChange, ...]
    focus_step: int | None
    #: what the case was judged on when not every logit (a server's top-k dump: `CaseRecord.evidence`)
    evidence: str | None = None

    @classmethod
    def of(cls, case: CaseRecord) -> CaseRow:
        return cls(case.subject, case.key, case.verdict, case.reason, case.task, case.tokens_total,
                   case.tokens_judged, case.first_diff_token, case.worst_cosine, case.worst_kl, case.flip_margin,
                   case.replay_mode, case.changes, case.focus_step, case.evidence or None)

    @property
    def replayed(self) -> bool:
        return self.replay_mode is not None

    @property
    def label(self) -> str:
        return f"{self.subject} #{self.key}" if self.subject else f"#{self.key}"

    def change_at(self, token: int | None) -> ArgmaxChange | None:
        return next((c for c in self.changes if c.token == token), None)


def severity(row: CaseRow | CaseRecord) -> tuple:
    """Sort key, worst first: the verdict's severity, then the worst KL, then the worst cosine."""
    return (verdicts.severity(row.verdict), -(row.worst_kl or 0.0), row.worst_cosine or 1.0)


@dataclass
class StepValues:
    """The judged steps' KL, Δp, top-1 match and cross ranks (the inputs of `distribution.summarize`)."""

    kl: array = field(default_factory=lambda: array("d"))
    dp: array = field(default_factory=lambda: array("d"))
    same_top: bytearray = field(default_factory=bytearray)
    my_rank_in_golden: array = field(default_factory=lambda: array("q"))
    golden_rank_in_mine: array = field(default_factory=lambda: array("q"))

    def add(self, case: CaseRecord) -> None:
        for step in case.judged_steps:
            m = step.metrics
            if m is None:
                continue
            self.kl.append(m.kl_divergence)
            if m.signed_dp is not None:
                self.dp.append(m.signed_dp)
            self.same_top.append(1 if m.top1_match else 0)
            self.my_rank_in_golden.append(m.my_top1_rank_in_golden)
            self.golden_rank_in_mine.append(m.golden_top1_rank_in_mine)

    def extend(self, other: StepValues) -> None:
        self.kl.extend(other.kl)
        self.dp.extend(other.dp)
        self.same_top.extend(other.same_top)
        self.my_rank_in_golden.extend(other.my_rank_in_golden)
        self.golden_rank_in_mine.extend(other.golden_rank_in_mine)

    def statistics(self) -> StepStatistics | None:
        return summarize(self.kl, self.dp, [bool(b) for b in self.same_top], self.my_rank_in_golden,
                         self.golden_rank_in_mine)


@dataclass
class RunIndex:
    """Every case's row, the judged steps' values by task, and the first dtype/device each side names."""

    rows: list[CaseRow] = field(default_factory=list)
    steps: dict[str, StepValues] = field(default_factory=dict)
    golden_device: str | None = None
    test_device: str | None = None

    def add(self, case: CaseRecord) -> None:
        self.rows.append(CaseRow.of(case))
        self.steps.setdefault(case.task, StepValues()).add(case)
        if self.golden_device is None:
            self.golden_device = _device(case, golden=True)
        if self.test_device is None:
            self.test_device = _device(case, golden=False)

    def extend(self, other: RunIndex) -> None:
        self.rows.extend(other.rows)
        for task, values in other.steps.items():
            self.steps.setdefault(task, StepValues()).extend(values)
        self.golden_device = self.golden_device or other.golden_device
        self.test_device = self.test_device or other.test_device

    def all_steps(self) -> StepValues:
        """The judged steps of every task together."""
        if len(self.steps) == 1:
            return next(iter(self.steps.values()))
        every = StepValues()
        for task in sorted(self.steps):
            every.extend(self.steps[task])
        return every


def index_cases(cases: Iterable[CaseRecord]) -> RunIndex:
    """`RunIndex` of `cases` in one pass."""
    index = RunIndex()
    for case in cases:
        index.add(case)
    return index


def _device(case: CaseRecord, *, golden: bool) -> str | None:
    """`fp32 · cpu` from the case's manifest of one side, when it names its dtype."""
    manifest = case.manifest(golden=golden)
    if manifest is not None and manifest.dtype:
        return f"{manifest.dtype} · {manifest.device}" if manifest.device else manifest.dtype
    return None


def detailed(rows: Sequence[CaseRow], limit: int | None = None) -> list[int]:
    """The numbers of the cases that get a detailed section, in run order: every case of a run of at most
    `limit` cases; of a larger run, the `limit` most severe of those on a worst-cases list (failing, or
    noise that changed a token). `limit`: default `DETAIL_LIMIT`."""
    limit = DETAIL_LIMIT if limit is None else limit
    if len(rows) <= limit:
        return list(range(len(rows)))
    matter = [i for i, row in enumerate(rows) if verdicts.listed_among_worst(row.verdict)]
    return sorted(sorted(matter, key=lambda i: severity(rows[i]))[:limit])


def tabled(rows: Sequence[CaseRow], limit: int | None = None) -> list[int]:
    """The numbers of the cases in the table of all cases, in run order: all of them up to `limit` (default
    `TABLE_LIMIT`), else the `limit` most severe."""
    limit = TABLE_LIMIT if limit is None else limit
    if len(rows) <= limit:
        return list(range(len(rows)))
    return sorted(sorted(range(len(rows)), key=lambda i: severity(rows[i]))[:limit])


def limits_text(rows: Sequence[CaseRow], shown: Sequence[int]) -> str:
    """What a large run's page leaves out, in one sentence ('' when it details every case)."""
    if len(shown) == len(rows):
        return ""
    matter = sum(1 for row in rows if verdicts.listed_among_worst(row.verdict))
    table = (f"the table above lists all {len(rows)}" if len(rows) <= TABLE_LIMIT
             else f"the table above lists the {TABLE_LIMIT} most severe")
    return (f"This run has {len(rows)} cases: the sections below detail the {len(shown)} most severe of the "
            f"{matter} that fail or changed a token (at most {DETAIL_LIMIT} on one page); {table}. Every case "
            "is in the run's logits_cmp_cases CSV and JSON.")
