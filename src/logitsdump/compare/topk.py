"""compare on top-k evidence: a server's top-k dump against another, or against a full-vocabulary dump.

A folder holding top-k files (`topk_{subject}_{key}_{t}.safetensors`, `topkfile`) cannot be compared
logit by logit. `measure_topk` pairs the steps of the two folders by (subject, key, token) whatever each
side holds, compares them on the top-k side's terms (`topk_metrics`: a full-vocabulary side is reduced to
log probabilities and its own top k; k is the smaller of the two sides' entry counts) and judges each case
with the rules below, against the same noise floor as a full comparison (`floor.py`).

Verdict rules on top-k evidence (replayed cases; every step judged):
- `precision-suspect` when the evidence proves a difference: an argmax change whose golden margin is above
  the floor's `noise_margin` (when the test's choice is outside golden's top-k the margin is a lower bound,
  and a lower bound above the tolerance is proof); a step whose KL lower bound is above `noise_kl`; or the
  case's mean KL lower bound above the floor's case mean tolerance. Each can only under-state the true
  KL and margins, so none of them fires on noise that a full comparison would pass.
- `noise` / `consistent` as in a full comparison, but on what top-k shows: the argmax changes are near-ties
  (margins known exactly and within `noise_margin`) and no KL lower bound exceeds the floor.
- `incomplete` when a step is missing, or when an argmax change cannot be judged: the test's choice is
  outside golden's top-k and golden's own top-k spans less than `noise_margin`, so the margin is unknown.
Free runs (neither side replayed) follow msit's order as in a full comparison: the steps before the first
argmax change fail when their KL lower bound reaches msit's `-kl` threshold (`divergent`); the change is a
`tie-flip` when its margin is known and within the tie tolerance, `divergent` when it (or its lower bound)
is above, `incomplete` when it cannot be told.
What top-k cannot show, and these rules do not claim: cosine, L1 and ULP (every logit is needed); a
difference confined to tokens outside both top-k sets (the KL bound sees only the shared support, whose
golden mass each step records as `golden_mass`); a passing verdict is "no difference visible in the top-k".
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from logitsdump.compare.judge import Tolerances
from logitsdump.compare.metrics import Thresholds
from logitsdump.compare.provenance import DumpFolders, _replay_of, _summary
from logitsdump.compare.records import ONLY_IN_GOLDEN, ONLY_IN_MY, ArgmaxChange, CaseRecord, Step
from logitsdump.compare.stats import percentile_high
from logitsdump.compare.topk_metrics import Side, TopkMetrics, side_of_logits, side_of_topk, topk_metrics
from logitsdump.compare.verdicts import CONSISTENT, DIVERGENT, INCOMPLETE, NOISE, PRECISION_SUSPECT, TIE_FLIP
from logitsdump.csvsafe import write_csv
from logitsdump.errors import DataError, FileFormatError, UserError
from logitsdump.logs import get_logger
from logitsdump.store import (
    CaseManifest,
    is_topk_file_name,
    parse_logits_file_name,
    parse_logits_subject,
    read_manifest,
    subject_token,
)
from logitsdump.tensorio import TENSOR_SUFFIXES, load_logits
from logitsdump.topkfile import TopkStep, read_topk

_log = get_logger("compare")

#: The per-token CSV of a top-k comparison: msit's columns (NA where top-k cannot tell), then ours.
TOPK_CSV_COLUMNS = (
    "file_name", "key", "token_id", "cosine_similarity", "kl_divergence", "l1_norm", "ulp_max_diff", "ulp",
    "passed", "cmp_fail_reason", "evidence", "kl_lower_bound", "kl_is_lower_bound",
    *(name for name in TopkMetrics.__dataclass_fields__ if name != "kl_lower_bound"),
)


def has_topk_files(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` holds top-k files (a server's dump)."""
    try:
        return any(is_topk_file_name(entry.name) for entry in os.scandir(folder))
    except OSError as err:
        raise DataError(f"cannot list {folder}: {err.strerror or err}") from err


@dataclass(frozen=True)
class _Entry:
    name: str
    path: Path
    topk: bool


def _index(folder: Path) -> tuple[dict[tuple[str, int | str, int], _Entry], list[str]]:
    """(subject, key, token) -> the folder's file for it (top-k or logits); and the names that do not parse."""
    found: dict[tuple[str, int | str, int], _Entry] = {}
    bad: list[str] = []
    for entry in os.scandir(folder):
        name = entry.name
        if not name.endswith(TENSOR_SUFFIXES):
            continue
        try:
            key, token = parse_logits_file_name(name)
        except UserError:
            bad.append(name)
            continue
        found[(parse_logits_subject(name), key, token)] = _Entry(name, folder / name, is_topk_file_name(name))
    return found, bad


def measure_topk(golden_dir: Path, my_dir: Path, folders: DumpFolders, tolerances: Tolerances,
                 thresholds: Thresholds) -> tuple[list[Step], list[CaseRecord]]:
    """Every step of the two folders measured on top-k terms, and every case judged (see the module docstring)."""
    golden, bad_g = _index(golden_dir)
    mine, bad_m = _index(my_dir)
    steps = [Step(name, None, None, reason=f"parse_error:expected <key>_<token> at the end of {name!r}")
             for name in sorted(set(bad_g) | set(bad_m))]
    order = sorted(set(golden) | set(mine), key=_order)
    _log.info("comparing %d steps on top-k evidence from %s and %s", len(order), golden_dir, my_dir)
    for triple in order:
        steps.append(_measure(triple, golden.get(triple), mine.get(triple)))
    records = _Manifests(golden_dir, my_dir)
    cases = _judge_all([s for s in steps if s.key is not None], tolerances, thresholds, records)
    return steps, [_annotate(folders, records, c) for c in cases]


def _order(triple: tuple[str, int | str, int]) -> tuple:
    subject, key, token = triple
    return (0, key, "", 0, token, subject) if isinstance(key, int) else (1, 0, str(key), 0, token, subject)


def _measure(triple: tuple[str, int | str, int], golden: _Entry | None, mine: _Entry | None) -> Step:
    subject, key, token = triple
    present = [e for e in (mine, golden) if e is not None]
    name = next((e.name for e in present if e.topk), present[0].name)  # the top-k side's name
    base = Step(name, key, token, subject=subject)
    if golden is None or mine is None:
        return replace(base, reason=ONLY_IN_MY if golden is None else ONLY_IN_GOLDEN, unavailable=True)
    if not (golden.topk or mine.topk):
        return replace(base, reason="both sides are full-vocabulary here, the others top-k: compare these folders "
                                    "without their top-k files", unavailable=True)
    try:
        g_step, m_step = _load(golden), _load(mine)
    except FileFormatError as err:
        return replace(base, reason=f"unreadable: {err}.", unavailable=True)
    k = min(len(s.ids) for s in (g_step, m_step) if isinstance(s, TopkStep))
    g_side, m_side = _side(g_step, k), _side(m_step, k)
    if len(g_side.top) < 1 or len(m_side.top) < 1:
        return replace(base, reason="empty top-k.", unavailable=True)
    return replace(base, topk=topk_metrics(g_side, m_side, k))


def _load(entry: _Entry) -> Any:
    if entry.topk:
        return read_topk(entry.path)
    logits = load_logits(entry.path)
    if not all(map(math.isfinite, (float(logits.max()), float(logits.min())))):
        raise FileFormatError(f"{entry.name}: includes NaN or inf")
    return logits


def _side(step: Any, k: int) -> Side:
    return side_of_topk(step) if isinstance(step, TopkStep) else side_of_logits(step, k)


# ---- manifests ----------------------------------------------------------------------------------


class _Manifests:
    """Both folders' manifest records by (subject as in file names, key): file names differ between sides."""

    def __init__(self, golden_dir: Path, my_dir: Path) -> None:
        self.golden_dir, self.my_dir = golden_dir, my_dir
        self.golden = {(subject_token(r.subject), r.index): r for r in read_manifest(golden_dir)}
        self.mine = {(subject_token(r.subject), r.index): r for r in read_manifest(my_dir)}

    def replay_mode(self, subject: str, key: int | str) -> str | None:
        """How the test side (else golden) was replayed, when its forced tokens are the other side's own."""
        for record, other in ((self.mine.get((subject, key)), self.golden.get((subject, key))),
                              (self.golden.get((subject, key)), self.mine.get((subject, key)))):
            replay = _replay_of(record)
            if record is None or replay is None:
                continue
            forced = list(record.output_token_ids)
            if other is not None and list(other.output_token_ids[: len(forced)]) != forced:
                _log.warning("case %s #%s: replayed tokens are not the other side's: judged as a free run",
                             subject, key)
                return None
            method = record.extra.get("replay", {}).get("method") if isinstance(record.extra, dict) else None
            return f"{replay.mode} ({method})" if isinstance(method, str) else replay.mode
        return None

    def record(self, subject: str, key: int | str, *, golden: bool) -> CaseManifest | None:
        return (self.golden if golden else self.mine).get((subject, key))


def _annotate(folders: DumpFolders, manifests: _Manifests, case: CaseRecord) -> CaseRecord:
    g = manifests.record(case.subject, case.key, golden=True)
    m = manifests.record(case.subject, case.key, golden=False)
    changes = tuple(replace(c, golden_token_text=folders.token(c.golden_token, golden=True),
                            my_token_text=folders.token(c.my_token, golden=False)) for c in case.changes)
    steps = tuple(replace(s, golden_top1_text=folders.token(s.topk.golden_top1, golden=True),
                          my_top1_text=folders.token(s.topk.my_top1, golden=False)) if s.topk else s
                  for s in case.steps)
    return replace(case, steps=steps, changes=changes,
                   golden_token_text=folders.token(case.golden_token, golden=True),
                   my_token_text=folders.token(case.my_token, golden=False),
                   golden_manifest=_summary(g) if g is not None else None,
                   my_manifest=_summary(m) if m is not None else None)


# ---- judging ------------------------------------------------------------------------------------


def _judge_all(steps: Sequence[Step], tolerances: Tolerances, thresholds: Thresholds,
               manifests: _Manifests) -> list[CaseRecord]:
    groups: dict[tuple[str, int | str], list[Step]] = {}
    for step in steps:
        groups.setdefault((step.subject, step.key), []).append(step)  # type: ignore[arg-type]
    out = []
    for (subject, key), group in groups.items():
        ordered = tuple(sorted(group, key=lambda s: (s.token_id or 0, s.file_name)))
        mode = manifests.replay_mode(subject, key)
        if mode is not None:
            replayed = manifests.record(subject, key, golden=False)
            dumped = len(replayed.files) if replayed is not None else None
            out.append(judge_topk_replay(subject, key, ordered, tolerances, mode, dumped))
        else:
            out.append(judge_topk_free(subject, key, ordered, tolerances, thresholds))
    return sorted(out, key=lambda c: _order((c.subject, c.key, 0)))


def _evidence(steps: Iterable[Step]) -> str:
    ks = sorted({s.topk.k for s in steps if s.topk is not None})
    return f"top-{ks[0]}" if len(ks) == 1 else ("top-" + "/".join(map(str, ks)) if ks else "top-k")


def _change(step: Step) -> ArgmaxChange:
    m = step.topk
    assert m is not None
    beyond = m.k + 1  # "outside the top-k": the rank is at least this
    return ArgmaxChange(step.token_id or 0, m.golden_top1, m.my_top1, m.flip_margin, m.my_flip_margin,
                        m.my_top1_rank_in_golden or beyond, m.golden_top1_rank_in_mine or beyond)


def _margin_text(m: TopkMetrics) -> str:
    return f"{'>= ' if m.flip_margin_bound else ''}{m.flip_margin:.6g}"


def judge_topk_replay(subject: str, key: int | str, steps: tuple[Step, ...], tolerances: Tolerances,
                      mode: str, dumped: int | None = None) -> CaseRecord:
    """A replayed case on top-k evidence: every step judged (see the module docstring)."""
    judged = tuple(s for s in steps if not (dumped is not None and s.only_in_golden and (s.token_id or 0) >= dumped))
    measured = [s for s in judged if s.topk is not None]
    missing = [s for s in judged if s.topk is None]
    changed = [s for s in measured if not s.topk.top1_match]  # type: ignore[union-attr]
    clear = [s for s in changed if s.topk.flip_margin > tolerances.noise_margin]  # type: ignore[union-attr]
    unknown = [s for s in changed if s not in clear and s.topk.flip_margin_bound]  # type: ignore[union-attr]
    far = [s for s in measured if s.topk.kl_lower_bound > tolerances.noise_kl]  # type: ignore[union-attr]
    kls = [s.topk.kl_lower_bound for s in measured]  # type: ignore[union-attr]
    mean_kl = math.fsum(kls) / len(kls) if kls else None
    mean_tolerance = tolerances.mean_kl_tolerance(len(kls))
    evidence = _evidence(measured)
    problems, findings = [], []
    if clear:
        worst = max(clear, key=lambda s: s.topk.flip_margin)  # type: ignore[union-attr]
        m = worst.topk
        assert m is not None
        where = "outside golden's top-k" if m.flip_margin_bound else f"ranked {m.my_top1_rank_in_golden} by golden"
        problems.append(f"{len(clear)} argmax change(s) with a clear golden margin, the largest at token "
                        f"{worst.token_id}: {m.golden_top1} -> {m.my_top1}, golden margin {_margin_text(m)} > "
                        f"{tolerances.noise_margin:g} (test's choice {where})")
        findings.append("clear-change")
    if far:
        worst = max(far, key=lambda s: s.topk.kl_lower_bound)  # type: ignore[union-attr]
        problems.append(f"{len(far)} of {len(measured)} steps drift apart, the worst at token {worst.token_id}: "
                        f"KL >= {worst.topk.kl_lower_bound:.3g} (a lower bound over the shared {evidence}; "  # type: ignore[union-attr]
                        f"tolerance {tolerances.noise_kl:g})")
        findings.append("drift")
    if mean_tolerance is not None and mean_kl is not None and mean_kl > mean_tolerance:
        problems.append(f"the mean KL lower bound of its {len(kls)} steps, {mean_kl:.3g}, is above the floor's "
                        f"{mean_tolerance:.3g}")
        if "drift" not in findings:
            findings.append("drift")
    if problems:
        verdict, reason = PRECISION_SUSPECT, "; ".join(problems)
    elif missing or unknown:
        verdict = INCOMPLETE
        parts = [f"token {s.token_id}: {s.reason}" for s in missing[:3]]
        parts += [f"token {s.token_id}: argmax {s.topk.golden_top1} -> {s.topk.my_top1}, the test's choice is "  # type: ignore[union-attr]
                  f"outside golden's {evidence} and the margin (>= {s.topk.flip_margin:.3g}) cannot be judged"  # type: ignore[union-attr]
                  for s in unknown[:3]]
        reason = "; ".join(parts)
        findings.append("missing")
    elif changed:
        verdict = NOISE
        findings.append("near-tie-change")
        widest = max(s.topk.flip_margin for s in changed)  # type: ignore[union-attr]
        reason = (f"argmax changes at token(s) {', '.join(str(s.token_id) for s in changed)}, all near-ties "
                  f"(largest golden margin {widest:.6g} <= {tolerances.noise_margin:g}); no KL lower bound above "
                  f"the floor ({evidence} evidence)")
    else:
        verdict, reason = CONSISTENT, f"no difference visible in the {evidence} log probabilities"
    return _record(subject, key, verdict, reason, steps, judged, measured, changed, tuple(findings), mode, evidence)


def judge_topk_free(subject: str, key: int | str, steps: tuple[Step, ...], tolerances: Tolerances,
                    thresholds: Thresholds) -> CaseRecord:
    """A free-running case on top-k evidence: up to and including the first argmax change."""
    verdict, reason, end, finding = "", "", len(steps), ""
    changed: list[Step] = []
    for index, step in enumerate(steps):
        m = step.topk
        if m is None:
            verdict, finding, reason, end = INCOMPLETE, "missing", f"token {step.token_id}: {step.reason}", index + 1
            break
        if not m.top1_match:
            changed, end = [step], index + 1
            change = f"token {step.token_id}: argmax {m.golden_top1} -> {m.my_top1}, golden margin {_margin_text(m)}"
            if m.flip_margin > tolerances.tie:
                verdict, finding, reason = DIVERGENT, "clear-change", f"{change} > {tolerances.tie:g}"
            elif m.flip_margin_bound:
                verdict, finding = INCOMPLETE, "missing"
                reason = f"{change}: the test's choice is outside golden's top-k, the margin cannot be judged"
            else:
                verdict, finding, reason = TIE_FLIP, "near-tie-change", f"{change} <= {tolerances.tie:g}"
            break
        if m.kl_lower_bound >= thresholds.kl:
            verdict, end, finding = DIVERGENT, index + 1, "threshold-fail"
            reason = (f"token {step.token_id}: KL >= {m.kl_lower_bound:.3g} (lower bound) reaches the -kl threshold "
                      f"{thresholds.kl:g} before any argmax change")
            break
    judged = steps[:end]
    measured = [s for s in judged if s.topk is not None]
    evidence = _evidence(measured)
    if not verdict:
        verdict, reason = CONSISTENT, f"no difference visible in the {evidence} log probabilities"
    return _record(subject, key, verdict, reason, steps, judged, measured, changed,
                   (finding,) if finding else (), None, evidence)


def _record(subject: str, key: int | str, verdict: str, reason: str, steps: tuple[Step, ...],
            judged: Sequence[Step], measured: Sequence[Step], changed: Sequence[Step], findings: tuple[str, ...],
            mode: str | None, evidence: str) -> CaseRecord:
    kls = [s.topk.kl_lower_bound for s in measured if s.topk is not None]
    changes = tuple(_change(s) for s in changed)
    first = changes[0] if changes else None
    focus = (max(changed, key=lambda s: s.topk.flip_margin) if changed and mode is not None  # type: ignore[union-attr]
             else changed[0] if changed
             else max(measured, key=lambda s: s.topk.kl_lower_bound) if measured else None)  # type: ignore[union-attr]
    why = ("surest-change" if mode is not None else "first-change") if changed else ("largest-kl" if measured else None)
    return CaseRecord(
        subject=subject, key=key, verdict=verdict, reason=reason, tokens_total=len(steps),
        tokens_compared=len(measured), tokens_judged=len(judged),
        first_diff_token=first.token if first is not None else None,
        worst_cosine=None, worst_kl=max(kls) if kls else None,
        flip_margin=first.flip_margin if first is not None else None,
        golden_token=first.golden_token if first is not None else None,
        my_token=first.my_token if first is not None else None,
        steps=steps, replay_mode=mode, changes=changes,
        mean_kl=math.fsum(kls) / len(kls) if kls else None, p95_kl=percentile_high(kls),
        findings=findings, focus_step=focus.token_id if focus is not None else None, focus_why=why,
        evidence=evidence,
    )


# ---- the per-token CSV --------------------------------------------------------------------------


def write_topk_steps_csv(path: Path, steps: Iterable[Step]) -> None:
    """The per-token CSV of a top-k comparison (`TOPK_CSV_COLUMNS`): the KL column is a lower bound."""
    write_csv(path, TOPK_CSV_COLUMNS, (_row(step) for step in steps))


def _row(step: Step) -> list[Any]:
    keyed = step.key is not None and step.reason not in (ONLY_IN_GOLDEN, ONLY_IN_MY)
    head = [step.file_name, str(step.key) if keyed else "NA", step.token_id if keyed else "NA"]
    m = step.topk
    if m is None:
        return [*head, *(["NA"] * 6), step.reason, *(["NA"] * (len(TOPK_CSV_COLUMNS) - 10))]
    values: Mapping[str, Any] = m.to_dict()
    rest = [_cell(values[name]) for name in TOPK_CSV_COLUMNS[13:]]
    return [*head, "NA", "NA", "NA", "NA", "NA", "NA", "", f"top-{m.k}", repr(m.kl_lower_bound), "True", *rest]


def _cell(value: Any) -> Any:
    if value is None:
        return "NA"
    if isinstance(value, bool):
        return str(value)
    return repr(value) if isinstance(value, float) else value
