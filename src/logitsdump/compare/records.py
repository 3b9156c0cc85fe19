"""The records of a comparison: what compare writes and the report reads, defined once.

- `PairMetrics`: every number measured on one pair of logits files (one token);
- `Step`: one row of the comparison: a file name, its metrics or why there are none;
- `ArgmaxChange`: a step where the two devices' top-1 differs, and how sure each was;
- `CaseRecord`: the verdict of one case, the numbers behind it, and the step to look at first;
- elsewhere, one module each: `manifest_records.ManifestSummary` (what a dump's manifest says about the
  case), `paired_records.PairedCase` (the case against the control arm), `document.CompareDocument` (the
  case JSON `logits_cmp_cases_<ts>.json` as a whole, with its schema version), `lenient` (the readers).

`CaseRecord.stats` and `CompareDocument.stats` (llama.cpp's `--kl-divergence` statistics of a case's
judged steps, and of every case's together: `distribution.StepStatistics`) are derived from the steps,
never read back: a file of any schema version gets them, computed the same way.

Each has `to_dict` (what is written) and `from_dict` (what is read back; the
report's only reader). Reading is lenient: a missing or mistyped field becomes
None, so a hand-edited file still renders. The case JSON carries
`schema_version`; version 1 (logitsdump before the records) is read too
(`schema_v1.upgrade_document` upgrades it before `CompareDocument.from_dict`).

Names: a *margin* is always in logits. `golden_margin` is golden's top-1 minus
its top-2 (how sure golden was); `flip_margin` is golden's logit of its own
choice minus its logit of the test's choice (how far behind golden put the
test's choice; 0 when both choose the same); `my_flip_margin` is the same on
the test's side.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

from logitsdump.compare.distribution import StepStatistics, summarize
from logitsdump.compare.lenient import finite_float, read_int, read_key, read_str, read_typed
from logitsdump.compare.manifest_records import ManifestSummary
from logitsdump.compare.paired_records import PairedCase
from logitsdump.compare.topk_metrics import TopkMetrics
from logitsdump.compare.verdicts import PASSING

#: The version of the case JSON this module writes, and those it reads. Version 3 added `stats` (per case
#: and for the run); version 2 reads as it is (the statistics are derived from the steps).

#: The task of a case whose dumps have no manifest.
UNKNOWN_TASK = "unknown"
#: msit's reasons for a row that exists in one folder only.
ONLY_IN_GOLDEN = "only_in_golden_path"
ONLY_IN_MY = "only_in_my_path"

#: `Step.metrics` fields that are columns of the per-token CSV after msit's ten (`CSV_EXTRA`).
CSV_EXTRA = "csv-extra"


def _extra() -> Any:
    return field(metadata={"column": CSV_EXTRA})


@dataclass(frozen=True)
class PairMetrics:
    """All metrics of one file pair. Truthy when it passes.

    Fields marked `_extra()` are also columns of the per-token CSV, in this order. A metric added
    after schema version 1 is typed `float | None`: files written before it read back with None there.
    """

    cosine_similarity: float
    kl_divergence: float
    l1_norm: float
    ulp_max_diff: float
    ulp: float
    passed: bool
    identical: bool
    max_abs_diff: float = _extra()
    golden_top1: int = _extra()
    my_top1: int = _extra()
    top1_match: bool = _extra()
    topk_overlap: float = _extra()
    #: golden's top-1 minus top-2 logit: how sure golden was.
    golden_margin: float = _extra()
    #: p_test - p_golden of golden's top-1 token (softmax probabilities): > 0 when the test is surer of it.
    signed_dp: float | None = _extra()
    #: g[golden_top1] - g[my_top1]: how far behind golden put the test's choice; 0 on a match.
    flip_margin: float = 0.0
    #: m[my_top1] - m[golden_top1]: how far ahead the test put its own choice; 0 on a match.
    my_flip_margin: float = 0.0
    #: Rank (1 = top) of the test's choice in golden's logits (ties: the lower index first); 1 on a match.
    my_top1_rank_in_golden: int = 1
    #: Rank of golden's choice in the test's logits; 1 on a match.
    golden_top1_rank_in_mine: int = 1
    #: RMS of the centred logit difference m - g over golden's top `metrics.PERTURBATION_TOKENS` tokens
    #: (logits): the size of the perturbation where it matters, the control arm's per-step statistic.
    perturbation_rms: float | None = None

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        # every field is a plain number or bool: no need for asdict's deep copies
        return {name: getattr(self, name) for name in METRIC_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairMetrics | None:
        """The metrics in `data`, or None when a field is missing or not of its type."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            kind, optional = _FIELD_TYPES[f.name]
            value = read_typed(data.get(f.name), kind)
            if value is None and not (optional and data.get(f.name) is None):
                return None
            values[f.name] = value
        return cls(**values)


METRIC_FIELDS = tuple(f.name for f in fields(PairMetrics))
#: The per-token CSV's columns after msit's ten.
CSV_EXTRA_COLUMNS = tuple(f.name for f in fields(PairMetrics) if f.metadata.get("column") == CSV_EXTRA)
#: name -> (type, optional): an optional field (`float | None`, a metric added after schema version 1) may be
#: absent from older files and reads as None; any other missing or mistyped field means no metrics at all.
_FIELD_TYPES = {
    f.name: ({"float": float, "int": int, "bool": bool}[str(f.type).removesuffix(" | None")],
             str(f.type).endswith(" | None"))
    for f in fields(PairMetrics)
}


@dataclass(frozen=True)
class Step:
    """One compared token: a file name and its metrics, or the reason there are none."""

    file_name: str
    key: int | str | None
    token_id: int | None
    #: msit's cmp_fail_reason ('' when the metrics exist).
    reason: str = ""
    #: The two tensors are bitwise equal (also for rows msit writes as NA, e.g. equal -inf).
    same_values: bool = False
    #: A file of the pair is missing or cannot be read (as opposed to a failed check).
    unavailable: bool = False
    metrics: PairMetrics | None = None
    #: The case's subject (from the file name); not written per step.
    subject: str = ""
    golden_top1_text: str | None = None
    my_top1_text: str | None = None
    #: Top-k evidence (a server's dump, `compare/topk.py`): what the pair supports; `metrics` is then None.
    topk: TopkMetrics | None = None

    @property
    def passed(self) -> bool | None:
        return self.metrics.passed if self.metrics is not None else None

    @property
    def changed(self) -> bool:
        """The two devices' top-1 differs at this step."""
        return self.metrics is not None and not self.metrics.top1_match

    @property
    def only_in_golden(self) -> bool:
        return self.reason == ONLY_IN_GOLDEN

    def metric(self, name: str) -> Any:
        """One field of the metrics, or None when there are none."""
        return getattr(self.metrics, name) if self.metrics is not None else None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "file_name": self.file_name,
            "key": self.key,
            "token_id": self.token_id,
            "reason": self.reason,
            "same_values": self.same_values,
            "unavailable": self.unavailable,
        }
        data.update(self.metrics.to_dict() if self.metrics is not None else {"passed": None})
        data["golden_top1_text"] = self.golden_top1_text
        data["my_top1_text"] = self.my_top1_text
        if self.topk is not None:
            data["topk"] = self.topk.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], subject: str = "") -> Step:
        return cls(
            file_name=read_str(data.get("file_name")) or "",
            key=read_key(data.get("key")),
            token_id=read_int(data.get("token_id")),
            reason=read_str(data.get("reason")) or "",
            same_values=data.get("same_values") is True,
            unavailable=data.get("unavailable") is True,
            metrics=PairMetrics.from_dict(data),
            subject=subject,
            golden_top1_text=read_str(data.get("golden_top1_text")),
            my_top1_text=read_str(data.get("my_top1_text")),
            topk=TopkMetrics.from_dict(data.get("topk")),
        )


@dataclass(frozen=True)
class ArgmaxChange:
    """A step where the two devices' top-1 differs, and how sure each side was."""

    token: int
    golden_token: int
    my_token: int
    #: g[golden_token] - g[my_token] (logits).
    flip_margin: float
    #: m[my_token] - m[golden_token] (logits).
    my_flip_margin: float
    #: Rank (1 = top) of the test's choice in golden's logits.
    my_rank_in_golden: int
    #: Rank of golden's choice in the test's logits.
    golden_rank_in_mine: int
    golden_token_text: str | None = None
    my_token_text: str | None = None

    @classmethod
    def at(cls, step: Step) -> ArgmaxChange:
        m = step.metrics
        assert m is not None
        return cls(step.token_id or 0, m.golden_top1, m.my_top1, m.flip_margin, m.my_flip_margin,
                   m.my_top1_rank_in_golden, m.golden_top1_rank_in_mine)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArgmaxChange | None:
        token = read_int(data.get("token"))
        if token is None:
            return None
        return cls(
            token=token,
            golden_token=read_int(data.get("golden_token")),  # type: ignore[arg-type]
            my_token=read_int(data.get("my_token")),  # type: ignore[arg-type]
            flip_margin=finite_float(data.get("flip_margin")),  # type: ignore[arg-type]
            my_flip_margin=finite_float(data.get("my_flip_margin")),  # type: ignore[arg-type]
            my_rank_in_golden=read_int(data.get("my_rank_in_golden")),  # type: ignore[arg-type]
            golden_rank_in_mine=read_int(data.get("golden_rank_in_mine")),  # type: ignore[arg-type]
            golden_token_text=read_str(data.get("golden_token_text")),
            my_token_text=read_str(data.get("my_token_text")),
        )


#: Why a case's focus step was chosen: code -> the words the report uses.
FOCUS_REASONS = {
    "first-change": "the first argmax change",
    "failing-step": "the first failing token",
    "lowest-cosine": "the token with the lowest cosine",
    "surest-change": "the argmax change where golden was surest",
    "largest-kl": "the step with the largest KL",
    "first-step": "the first token",
}

#: What a judgement found, as codes (`CaseRecord.findings`).
FINDINGS = {
    "missing": "a logits file is missing or unreadable",
    "failed-check": "a step fails msit's checks (shape, NaN or inf)",
    "threshold-fail": "a step fails the thresholds before any argmax change",
    "near-tie-change": "the argmax changes where golden's margin is within the tolerance",
    "clear-change": "the argmax changes where golden was clearly sure",
    "drift": "the distributions drift beyond the noise tolerances",
    "unreferenced": "above the dtype's default but below the gross bound, with no reference to judge by",
}


@dataclass(frozen=True)
class CaseRecord:
    """The verdict of one case, with the numbers behind it. Truthy when it passes."""

    subject: str
    key: int | str
    verdict: str
    #: The reasoning in words (for people); `findings` says the same as codes (for programs).
    reason: str
    tokens_total: int
    tokens_compared: int
    tokens_judged: int
    first_diff_token: int | None
    worst_cosine: float | None
    worst_kl: float | None
    #: `flip_margin` at the first argmax change.
    flip_margin: float | None
    golden_token: int | None
    my_token: int | None
    steps: tuple[Step, ...] = field(repr=False)
    #: "step" or "prefill" for a replayed case (`dump --replay`), None for a free run.
    replay_mode: str | None = None
    #: The judged steps where the argmax differs (a free run: at most the first).
    changes: tuple[ArgmaxChange, ...] = ()
    #: Over the judged steps with metrics (p95: nearest rank; for cosine the low tail: 95% are >= it).
    mean_kl: float | None = None
    p95_kl: float | None = None
    mean_cosine: float | None = None
    p95_cosine: float | None = None
    #: Codes of `FINDINGS`, in the order found.
    findings: tuple[str, ...] = ()
    #: The token the report centres on, and why (a code of `FOCUS_REASONS`).
    focus_step: int | None = None
    focus_why: str | None = None
    golden_token_text: str | None = None
    my_token_text: str | None = None
    golden_manifest: ManifestSummary | None = field(default=None, repr=False)
    my_manifest: ManifestSummary | None = field(default=None, repr=False)
    #: None: judged on every logit. "top-K" (`compare/topk.py`): judged on top-K log probabilities, and
    #: worst_kl / mean_kl / p95_kl are lower bounds of the KL (cosine is not known).
    evidence: str | None = None
    #: What the verdict was judged against: `control`, or the floor's source (`measured`, `flags`, `default`).
    reference: str | None = None
    #: The paired statistics, when the case was judged against the control arm.
    paired: PairedCase | None = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return self.verdict in PASSING

    @property
    def passed(self) -> bool:
        return bool(self)

    @property
    def replayed(self) -> bool:
        return self.replay_mode is not None

    @property
    def changed_steps(self) -> tuple[int, ...]:
        return tuple(c.token for c in self.changes)

    @property
    def label(self) -> str:
        """`subject #key`, or `#key` when the subject is empty."""
        return f"{self.subject} #{self.key}" if self.subject else f"#{self.key}"

    @property
    def task(self) -> str:
        """The task named in either manifest, else `UNKNOWN_TASK`."""
        for manifest in (self.golden_manifest, self.my_manifest):
            if manifest is not None and manifest.task:
                return manifest.task
        return UNKNOWN_TASK

    @property
    def query(self) -> str | None:
        """The question, from either manifest."""
        for manifest in (self.golden_manifest, self.my_manifest):
            if manifest is not None and manifest.query is not None:
                return manifest.query
        return None

    @property
    def judged_steps(self) -> tuple[Step, ...]:
        """The steps the verdict rests on: the first `tokens_judged` (the steps are in token order; a free run
        stops at its first argmax change, a replay judges every step it dumped)."""
        return self.steps[: self.tokens_judged]

    @cached_property
    def stats(self) -> StepStatistics | None:
        """llama.cpp's statistics of the judged steps with metrics; None when there are none."""
        return step_statistics(self.judged_steps)

    def focus(self) -> Step | None:
        """The step at `focus_step`, if the case has it."""
        return next((s for s in self.steps if s.token_id == self.focus_step), None)

    def change_at(self, token: int | None) -> ArgmaxChange | None:
        return next((c for c in self.changes if c.token == token), None)

    def manifest(self, *, golden: bool) -> ManifestSummary | None:
        return self.golden_manifest if golden else self.my_manifest

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "key": self.key,
            "verdict": self.verdict,
            "passed": self.passed,
            "reason": self.reason,
            "findings": list(self.findings),
            "focus_step": self.focus_step,
            "focus_why": self.focus_why,
            "tokens_total": self.tokens_total,
            "tokens_compared": self.tokens_compared,
            "tokens_judged": self.tokens_judged,
            "first_diff_token": self.first_diff_token,
            "worst_cosine": self.worst_cosine,
            "worst_kl": self.worst_kl,
            "flip_margin": self.flip_margin,
            "golden_token": self.golden_token,
            "my_token": self.my_token,
            "golden_token_text": self.golden_token_text,
            "my_token_text": self.my_token_text,
            "replay_mode": self.replay_mode,
            "changed_steps": list(self.changed_steps),
            "changes": [c.to_dict() for c in self.changes],
            "mean_kl": self.mean_kl,
            "p95_kl": self.p95_kl,
            "mean_cosine": self.mean_cosine,
            "p95_cosine": self.p95_cosine,
            "stats": self.stats.to_dict() if self.stats is not None else None,
            "steps": [s.to_dict() for s in self.steps],
            "golden_manifest": self.golden_manifest.to_dict() if self.golden_manifest else None,
            "my_manifest": self.my_manifest.to_dict() if self.my_manifest else None,
            "evidence": self.evidence,
            "kl_is_lower_bound": self.evidence is not None,
            "reference": self.reference,
            "paired": self.paired.to_dict() if self.paired is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseRecord:
        subject = read_str(data.get("subject")) or ""
        raw_steps = data.get("steps") if isinstance(data.get("steps"), list) else []
        steps = tuple(Step.from_dict(s, subject) for s in raw_steps if isinstance(s, Mapping))
        raw_changes = data.get("changes") if isinstance(data.get("changes"), list) else []
        changes = tuple(c for c in (ArgmaxChange.from_dict(d) for d in raw_changes if isinstance(d, Mapping)) if c)
        key = read_key(data.get("key"))
        findings = data.get("findings")
        return cls(
            subject=subject,
            key=key if key is not None else "",
            verdict=read_str(data.get("verdict")) or "",
            reason=read_str(data.get("reason")) or "",
            tokens_total=read_int(data.get("tokens_total")) or len(steps),
            tokens_compared=read_int(data.get("tokens_compared")) or 0,
            tokens_judged=read_int(data.get("tokens_judged")) or 0,
            first_diff_token=read_int(data.get("first_diff_token")),
            worst_cosine=finite_float(data.get("worst_cosine")),
            worst_kl=finite_float(data.get("worst_kl")),
            flip_margin=finite_float(data.get("flip_margin")),
            golden_token=read_int(data.get("golden_token")),
            my_token=read_int(data.get("my_token")),
            steps=steps,
            replay_mode=read_str(data.get("replay_mode")),
            changes=changes,
            mean_kl=finite_float(data.get("mean_kl")),
            p95_kl=finite_float(data.get("p95_kl")),
            mean_cosine=finite_float(data.get("mean_cosine")),
            p95_cosine=finite_float(data.get("p95_cosine")),
            findings=tuple(f for f in findings if isinstance(f, str)) if isinstance(findings, list) else (),
            focus_step=read_int(data.get("focus_step")),
            focus_why=read_str(data.get("focus_why")),
            golden_token_text=read_str(data.get("golden_token_text")),
            my_token_text=read_str(data.get("my_token_text")),
            golden_manifest=ManifestSummary.from_dict(data.get("golden_manifest")),
            my_manifest=ManifestSummary.from_dict(data.get("my_manifest")),
            evidence=read_str(data.get("evidence")),
            reference=read_str(data.get("reference")),
            paired=PairedCase.from_dict(data.get("paired")),
        )


def step_statistics(steps: Iterable[Step]) -> StepStatistics | None:
    """`distribution.summarize` of the steps that have metrics (Δp over those that have a `signed_dp`)."""
    measured = [s.metrics for s in steps if s.metrics is not None]
    return summarize(
        [m.kl_divergence for m in measured],
        [m.signed_dp for m in measured if m.signed_dp is not None],
        [m.top1_match for m in measured],
        [m.my_top1_rank_in_golden for m in measured],
        [m.golden_top1_rank_in_mine for m in measured],
    )
