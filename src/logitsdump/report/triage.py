"""Set-up or numerics? The report's triage section and the terminal summary's first block.

Four parts, in the order to read them (docs/triage.md): `set-up` (the preflight's findings, which
compare turned into `setup-differs` verdicts), `nondeterminism` (the repeat and batch probe),
`configuration` (configuration differences and the ablation), `numerics` (the verdicts of the other
cases). The preflight comes with the compare run; the probe and the ablation from their report files
(`logitsdump report --triage FILE`). Also `format_preflight`, the text of `logitsdump preflight` and
of bcanalyze's preflight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from logitsdump.compare import verdicts
from logitsdump.compare.verdicts import SETUP_DIFFERS
from logitsdump.errors import DataError, FileFormatError
from logitsdump.triage.ablation import AblationReport
from logitsdump.triage.preflight import Preflight
from logitsdump.triage.probe import ProbeReport, read_json

PARTS = ("set-up", "nondeterminism", "configuration", "numerics")
#: How many context differences and findings' examples are shown on the terminal.
SHOWN_CONTEXT = 4


@dataclass(frozen=True)
class Evidence:
    """What the triage section shows: the compare run's preflights, and the probe and ablation when given."""

    preflights: tuple[Preflight, ...] = ()
    probe: ProbeReport | None = None
    ablation: AblationReport | None = None


def load_evidence(result: Any, paths: Iterable[str] = ()) -> Evidence:
    """The preflights of a compare result (`report.load.CompareResult`) and the probe and ablation reports at
    `paths` (their kind is read from each file); DataError for a file that is neither."""
    probe = ablation = None
    for path in paths:
        data = read_json_or_fail(path)
        kind = data.get("kind") if isinstance(data, Mapping) else None
        try:
            if kind == "logitsdump-probe":
                probe = ProbeReport.from_dict(data)
            elif kind == "logitsdump-ablation":
                ablation = AblationReport.from_dict(data)
            else:
                raise DataError(f"--triage {path}: not a probe or ablation report (logitsdump probe / ablate -o)")
        except FileFormatError as err:
            raise DataError(f"--triage {path}: {err}") from None
    return Evidence(preflights_of(result), probe, ablation)


def read_json_or_fail(path: str) -> Any:
    try:
        return read_json(path)
    except FileFormatError as err:
        raise DataError(f"--triage: {err}") from None


def preflights_of(result: Any) -> tuple[Preflight, ...]:
    """The preflight of each compare run merged into `result` (none for runs older than the preflight)."""
    summary = getattr(result, "summary", None) or {}
    raw = summary.get("preflights") if isinstance(summary.get("preflights"), list) else [summary.get("preflight")]
    return tuple(p for p in (Preflight.from_dict(item) for item in raw) if p is not None)


# ---- terminal ------------------------------------------------------------------------------------


def terminal_block(result: Any, evidence: Evidence | None = None, paint: Callable[[str, str], str] | None = None
                   ) -> list[str]:
    """The summary's first lines: the four parts with their evidence."""
    paint = paint or (lambda _style, text: text)
    evidence = evidence or load_evidence(result)
    cases = getattr(result, "cases", ())
    lines = [paint("bold", "set-up or numerics?") + paint("dim", " (read in this order: docs/triage.md)")]
    lines += _setup_lines(evidence.preflights, cases, paint)
    lines += _probe_lines(evidence.probe)
    lines += _configuration_lines(evidence.preflights, evidence.ablation)
    lines += _numerics_lines(cases, paint)
    return lines


def _setup_lines(preflights: Sequence[Preflight], cases: Sequence[Any], paint) -> list[str]:
    head = "  1 set-up          "
    if not preflights:
        return [head + "not recorded (a compare run older than the preflight)"]
    setup = [f for p in preflights for f in p.setup]
    marked = sum(1 for c in cases if c.verdict == SETUP_DIFFERS)
    compared = sum(p.compared for p in preflights)
    fields = sum(p.fields_compared for p in preflights)
    if not setup:
        lines = [head + f"none found ({compared} cases and {fields} settings compared)"]
    else:
        lines = [head + paint(SETUP_DIFFERS, f"{len(setup)} difference(s); {marked} case(s) get {SETUP_DIFFERS}")]
        lines += [f"      - {finding.text}" for finding in setup]
        lines += [f"        {finding.example}" for finding in setup[:1] if finding.example]
    missing = {f"{side}: {item}" for p in preflights for side, items in p.not_recorded.items() for item in items}
    lines += [f"      not recorded ({item})" for item in sorted(missing)]
    context = _context_text(preflights)
    if context:
        lines.append(f"      differs by design: {context}")
    return lines


def _probe_lines(probe: ProbeReport | None) -> list[str]:
    head = "  2 nondeterminism  "
    if probe is None:
        return [head + "not probed (logitsdump probe -bcr BAD.csv on the test side; docs/triage.md)"]
    lines = [head + probe.summary()]
    if probe.switches:
        lines.append("      switches set: " + ", ".join(f"{k}={v}" for k, v in probe.switches.items()))
    return lines


def _configuration_lines(preflights: Sequence[Preflight], ablation: AblationReport | None) -> list[str]:
    head = "  3 configuration   "
    found = [f.text for p in preflights for f in p.configuration]
    lines = [head + (found[0] if found else "no configuration difference recorded")]
    lines += [f"      - {text}" for text in found[1:]]
    lines.append("      ablation: " + (ablation.summary() if ablation is not None else
                                        "not run (logitsdump ablate -bcr BAD.csv on the test side)"))
    return lines


def _numerics_lines(cases: Sequence[Any], paint) -> list[str]:
    judged = [c for c in cases if c.verdict != SETUP_DIFFERS]
    counts: dict[str, int] = {}
    for case in judged:
        counts[case.verdict] = counts.get(case.verdict, 0) + 1
    text = ", ".join(f"{paint(v, v)} {n}" for v, n in sorted(counts.items(), key=lambda kv: verdicts.rank(kv[0])))
    return [f"  4 numerics        {len(judged)} case(s) with the same set-up: {text or 'none'}"]


def _context_text(preflights: Sequence[Preflight]) -> str:
    seen: dict[str, str] = {}
    for p in preflights:
        for d in p.context:
            seen.setdefault(d.field, f"{d.field} {_short(d.golden)} vs {_short(d.test)}")
    shown = list(seen.values())
    more = f" (+{len(shown) - SHOWN_CONTEXT} more)" if len(shown) > SHOWN_CONTEXT else ""
    return "; ".join(shown[:SHOWN_CONTEXT]) + more


def _short(value: Any) -> str:
    text = "none" if value is None else str(value)
    return text if len(text) <= 24 else text[:23] + "…"


def format_preflight(result: Preflight) -> str:
    """`logitsdump preflight`'s text: set-up first, then configuration, context and what was not recorded."""
    lines = [f"preflight: golden {result.golden_source}", f"       vs test   {result.test_source}",
             f"{result.compared} case(s) on both sides ({result.only_golden} golden only, {result.only_test} test "
             f"only), {result.fields_compared} run settings compared"]
    setup = result.setup
    touched = len(result.case_causes)
    lines.append(f"set-up: {len(setup)} difference(s), {touched}/{result.compared} case(s) touched" if setup
                 else "set-up: none found")
    shown: set[str] = set()
    for finding in setup:
        lines.append(f"  - {finding.text}")
        if finding.example and finding.example not in shown:
            lines.append(f"    {finding.example}")
            shown.add(finding.example)
    configuration = result.configuration
    lines.append(f"configuration: {len(configuration)} difference(s)" if configuration else
                 "configuration: none recorded")
    lines += [f"  - {finding.text}" for finding in configuration]
    if result.context:
        lines.append("differs by design: " + "; ".join(f"{d.field} {_short(d.golden)} vs {_short(d.test)}"
                                                       for d in result.context))
    for side, items in result.not_recorded.items():
        lines += [f"not recorded ({side}): {item}" for item in items]
    return "\n".join(lines)


# ---- HTML ----------------------------------------------------------------------------------------


def html_section(result: Any, evidence: Evidence | None = None) -> str:
    """The page's triage section."""
    evidence = evidence or load_evidence(result)
    cases = getattr(result, "cases", ())
    parts = ['<section id="triage">', "<h2>Set-up or numerics?</h2>",
             '<p class="muted">Read in this order: a set-up difference first (the two sides did not compute the '
             "same thing), then run-to-run and batch nondeterminism, then configuration, and only then the "
             "numerics (docs/triage.md).</p>"]
    parts += _html_setup(evidence.preflights, cases)
    parts += _html_probe(evidence.probe)
    parts += _html_configuration(evidence.preflights, evidence.ablation)
    numerics = _numerics_lines(cases, lambda _s, t: t)[0].split("numerics", 1)[1].strip()
    parts += ["<h3>4 · Numerics</h3>", f"<p>{escape(numerics)}</p>", "</section>"]
    return "\n".join(parts)


def _html_setup(preflights: Sequence[Preflight], cases: Sequence[Any]) -> list[str]:
    parts = ["<h3>1 · Set-up</h3>"]
    if not preflights:
        return [*parts, '<p class="muted">Not recorded: this compare run is older than the preflight.</p>']
    setup = [f for p in preflights for f in p.setup]
    if not setup:
        compared = sum(p.compared for p in preflights)
        parts.append(f"<p>No set-up difference in {compared} cases and "
                     f"{sum(p.fields_compared for p in preflights)} run settings.</p>")
    else:
        marked = sum(1 for c in cases if c.verdict == SETUP_DIFFERS)
        parts.append(f"<p><b>{marked}</b> case(s) get <code>{SETUP_DIFFERS}</code>: fix the set-up before reading "
                     "their numbers.</p>")
        parts.append(_table(("cause", "finding", "cases", "evidence"),
                            [(f.cause, f.text, f"{f.cases}/{f.total}", f.example) for f in setup]))
    context = [(d.field, _short(d.golden), _short(d.test)) for p in preflights for d in p.context]
    if context:
        parts.append("<p class=\"muted\">Differs by design (not a finding):</p>")
        parts.append(_table(("field", "golden", "test"), list(dict.fromkeys(context))))
    missing = sorted({f"{side}: {item}" for p in preflights for side, items in p.not_recorded.items()
                      for item in items})
    parts += [f'<p class="muted">Not recorded ({escape(item)})</p>' for item in missing]
    return parts


def _html_probe(probe: ProbeReport | None) -> list[str]:
    parts = ["<h3>2 · Nondeterminism</h3>"]
    if probe is None:
        return [*parts, '<p class="muted">Not probed: run <code>logitsdump probe -bcr BAD.csv</code> on the test '
                "side and give its report to <code>logitsdump report --triage</code>.</p>"]
    parts.append(f"<p>{escape(probe.summary())}</p>")
    rows = [(c.key, c.verdict, str(c.repeat_outputs), _g(c.repeat_max_abs), _g(c.batch_max_abs),
             "" if c.batch_output_changed is None else ("yes" if c.batch_output_changed else "no"))
            for c in probe.cases]
    parts.append(_table(("case", "probe", "distinct outputs (repeats)", "max |Δlogit| repeats",
                         f"max |Δlogit| batch {probe.batch_size} vs 1", "tokens change in the batch"), rows))
    return parts


def _html_configuration(preflights: Sequence[Preflight], ablation: AblationReport | None) -> list[str]:
    parts = ["<h3>3 · Configuration</h3>"]
    found = [f for p in preflights for f in p.configuration]
    if found:
        parts.append(_table(("cause", "difference"), [(f.cause, f.text) for f in found]))
    else:
        parts.append('<p class="muted">No configuration difference recorded.</p>')
    if ablation is None:
        parts.append('<p class="muted">Ablation not run: <code>logitsdump ablate -bcr BAD.csv</code> on the test '
                     "side.</p>")
        return parts
    parts.append(f"<p><b>{escape(ablation.summary())}</b></p>")
    rows = [(r.name, r.change, r.skipped or f"{r.gone}/{ablation.reproduced} gone") for r in ablation.rows]
    parts.append(_table(("run", "change", "flips"), rows))
    return parts


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="grid triage"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"

