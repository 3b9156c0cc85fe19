"""The parity preflight: both sides' provenance side by side, every difference a finding with its cause.

`preflight(golden, test)` compares two `sides.Side`s: the run's settings field by field
(`fields.rule` says what each difference means) and each case's inputs (token-id hash, length, BOS
and EOS counts, few-shot examples, truncation, the generation limit). A case touched by a set-up
difference gets its causes in `Preflight.case_causes`; compare gives it the `setup-differs` verdict
instead of a numerics one. It judges no numerics: it never reads a logit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import filterfalse
from typing import Any

from logitsdump.store import CaseInputs
from logitsdump.triage import fields
from logitsdump.triage.fields import CONFIGURATION, CONTEXT, SETUP
from logitsdump.triage.sides import Side

#: Cause codes of the prompt: a case is touched when its token ids differ (`fields.EVERY_CASE`: the others).
PROMPT_CAUSES = ("chat-template", "few-shot", "context-limit", "tokenizer-file", "task")
#: How many characters a value takes in a finding's sentence.
SHOWN_VALUE = 60


@dataclass(frozen=True)
class Difference:
    """One run-level field that differs between the two sides."""

    section: str
    name: str
    klass: str
    cause: str
    golden: Any
    test: Any

    @property
    def field(self) -> str:
        return f"{self.section}.{self.name}" if self.name else self.section

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "class": self.klass, "cause": self.cause, "golden": self.golden,
                "test": self.test}


@dataclass(frozen=True)
class Finding:
    """A difference with its cause named, and how many of the compared cases it touches."""

    klass: str
    cause: str
    #: The sentence, cause first ("BOS tokens: the test side has 2 where golden has 1, in 40/40 cases").
    text: str
    cases: int
    total: int
    #: The run-level fields behind it (`section.name`).
    fields: tuple[str, ...] = ()
    #: One case's evidence (key and what each side had).
    example: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.klass, "cause": self.cause, "text": self.text, "cases": self.cases,
                "total": self.total, "fields": list(self.fields), "example": self.example}

    @classmethod
    def from_dict(cls, data: Any) -> Finding | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("text"), str):
            return None
        return cls(
            klass=str(data.get("class") or CONTEXT), cause=str(data.get("cause") or ""), text=data["text"],
            cases=_int(data.get("cases")), total=_int(data.get("total")),
            fields=tuple(str(f) for f in data.get("fields") or () if isinstance(f, str)),
            example=str(data.get("example") or ""),
        )


@dataclass(frozen=True)
class Preflight:
    """What the preflight found."""

    golden_source: str
    test_source: str
    #: Set-up findings first, then configuration (each class in the order found).
    findings: tuple[Finding, ...]
    #: case key -> the set-up cause codes that touch it (only the touched cases).
    case_causes: Mapping[str, tuple[str, ...]]
    #: case key -> the sentence compare puts in its reason.
    case_reasons: Mapping[str, str]
    #: Cases recorded on both sides, and on one side only.
    compared: int
    only_golden: int = 0
    only_test: int = 0
    #: Context fields that differ by design (device, dtype, versions), side by side.
    context: tuple[Difference, ...] = ()
    #: Run-level fields compared.
    fields_compared: int = 0
    #: "golden"/"test" -> what that side's files do not hold.
    not_recorded: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def of_class(self, klass: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.klass == klass)

    @property
    def setup(self) -> tuple[Finding, ...]:
        return self.of_class(SETUP)

    @property
    def configuration(self) -> tuple[Finding, ...]:
        return self.of_class(CONFIGURATION)

    def to_dict(self) -> dict[str, Any]:
        return {
            "golden_source": self.golden_source, "test_source": self.test_source,
            "findings": [f.to_dict() for f in self.findings],
            "case_causes": {k: list(v) for k, v in self.case_causes.items()},
            "case_reasons": dict(self.case_reasons),
            "compared": self.compared, "only_golden": self.only_golden, "only_test": self.only_test,
            "context": [d.to_dict() for d in self.context], "fields_compared": self.fields_compared,
            "not_recorded": {k: list(v) for k, v in self.not_recorded.items()},
        }

    @classmethod
    def from_dict(cls, data: Any) -> Preflight | None:
        """Lenient (a report reading a newer or an older compare output): None when `data` is no preflight."""
        if not isinstance(data, Mapping) or not isinstance(data.get("findings"), list):
            return None
        causes = data.get("case_causes") if isinstance(data.get("case_causes"), Mapping) else {}
        reasons = data.get("case_reasons") if isinstance(data.get("case_reasons"), Mapping) else {}
        context = []
        for item in data.get("context") or ():
            if isinstance(item, Mapping) and isinstance(item.get("field"), str):
                section, _, name = item["field"].partition(".")
                context.append(Difference(section, name, CONTEXT, str(item.get("cause") or section),
                                          item.get("golden"), item.get("test")))
        missing = data.get("not_recorded") if isinstance(data.get("not_recorded"), Mapping) else {}
        return cls(
            golden_source=str(data.get("golden_source") or ""), test_source=str(data.get("test_source") or ""),
            findings=tuple(f for f in (Finding.from_dict(d) for d in data["findings"]) if f is not None),
            case_causes={str(k): tuple(str(c) for c in v) for k, v in causes.items() if isinstance(v, list)},
            case_reasons={str(k): str(v) for k, v in reasons.items()},
            compared=_int(data.get("compared")), only_golden=_int(data.get("only_golden")),
            only_test=_int(data.get("only_test")), context=tuple(context),
            fields_compared=_int(data.get("fields_compared")),
            not_recorded={str(k): tuple(str(i) for i in v) for k, v in missing.items() if isinstance(v, list)},
        )


def preflight(golden: Side, test: Side) -> Preflight:
    """Compare the two sides' provenance."""
    differences, compared_fields = run_differences(golden.run, test.run)
    by_cause: dict[str, list[Difference]] = {}
    for difference in differences:
        by_cause.setdefault(difference.cause, []).append(difference)
    keys = list(golden.cases) if golden.cases.keys() == test.cases.keys() else \
        [k for k in golden.cases if k in test.cases]
    touched: dict[str, list[str]] = {}
    evidence: dict[str, list[tuple[str, Any, Any]]] = {}
    alike = golden.alike & test.alike  # known alike without a look (`sides.load_eval_pair`)
    for key in filterfalse(alike.__contains__, keys):  # in C: most of a million keys are alike
        for cause, g, t in case_differences(golden.cases[key], test.cases[key], golden.queries.get(key),
                                            test.queries.get(key), by_cause):
            touched.setdefault(key, []).append(cause)
            evidence.setdefault(cause, []).append((key, g, t))
    setup_causes = [c for c, items in by_cause.items() if items[0].klass == SETUP]
    for cause in setup_causes:
        if cause in fields.EVERY_CASE and _touches(by_cause[cause], golden, test):
            for key in keys:
                if cause not in touched.setdefault(key, []):
                    touched[key].append(cause)
    touched = {k: v for k, v in touched.items() if v}
    findings = [
        *_setup_findings(by_cause, evidence, touched, len(keys), golden, test),
        *_configuration_findings(by_cause, len(keys)),
    ]
    reasons = {key: "; ".join(_case_sentence(cause, key, evidence) for cause in causes)
               for key, causes in touched.items()}
    not_recorded = {name: side.not_recorded for name, side in (("golden", golden), ("test", test)) if side.not_recorded}
    return Preflight(
        golden_source=str(golden.source), test_source=str(test.source), findings=tuple(findings),
        case_causes={k: tuple(v) for k, v in touched.items()}, case_reasons=reasons, compared=len(keys),
        only_golden=len(golden.cases.keys() - test.cases.keys()),
        only_test=len(test.cases.keys() - golden.cases.keys()),
        context=tuple(d for d in differences if d.klass == CONTEXT), fields_compared=compared_fields,
        not_recorded=not_recorded,
    )


def run_differences(golden: Mapping[str, Any] | None, test: Mapping[str, Any] | None) -> tuple[list[Difference], int]:
    """The run-level fields that differ, and how many fields were compared (sections both sides recorded)."""
    if golden is None or test is None:
        return [], 0
    flat_golden, flat_test = fields.flatten(golden), fields.flatten(test)
    shared_sections = {str(s) for s in golden} & {str(s) for s in test}
    differences: list[Difference] = []
    compared = 0
    for section, name in dict.fromkeys([*flat_golden, *flat_test]):
        if section not in shared_sections:
            continue  # recorded by one side's logitsdump only
        found = fields.rule(section, name)
        if found is None:
            continue
        compared += 1
        g, t = flat_golden.get((section, name)), flat_test.get((section, name))
        if _same(g, t):
            continue
        differences.append(Difference(section, name, found.klass, found.cause, g, t))
    return differences, compared


def case_differences(g: CaseInputs, t: CaseInputs, g_query: str | None, t_query: str | None,
                     run_causes: Mapping[str, Sequence[Difference]]) -> list[tuple[str, Any, Any]]:
    """(cause, golden value, test value) of each set-up difference one case's inputs show."""
    found: list[tuple[str, Any, Any]] = []
    if _both(g.bos_count, t.bos_count) and g.bos_count != t.bos_count:
        found.append(("bos", g.bos_count, t.bos_count))
    if _both(g.eos_count, t.eos_count) and g.eos_count != t.eos_count:
        found.append(("eos-in-prompt", g.eos_count, t.eos_count))
    if _both(g.shots, t.shots) and g.shots != t.shots:
        found.append(("few-shot", len(g.shots or ()), len(t.shots or ())))
    if _cut(g) != _cut(t) and _both(g.original_length, t.original_length):
        found.append(("truncation", (g.original_length, g.input_length), (t.original_length, t.input_length)))
    if _both(g.max_new_tokens, t.max_new_tokens) and g.max_new_tokens != t.max_new_tokens:
        found.append(("max-new-tokens", g.max_new_tokens, t.max_new_tokens))
    if _both(g.input_sha256, t.input_sha256) and g.input_sha256 != t.input_sha256:
        named = {cause for cause, _, _ in found}
        explained = [c for c in PROMPT_CAUSES if c in run_causes and run_causes[c][0].klass == SETUP
                     and (c != "context-limit" or "truncation" in named)]
        for cause in explained:
            if cause not in named:
                found.append((cause, f"{g.input_length} tokens", f"{t.input_length} tokens"))
        if not explained and not named & {"bos", "eos-in-prompt", "few-shot", "truncation"}:
            if _both(g_query, t_query) and g_query != t_query:
                found.append(("query", f"{g.input_length} tokens", f"{t.input_length} tokens"))
            elif _both(g.rendered_sha256, t.rendered_sha256) and g.rendered_sha256 != t.rendered_sha256:
                found.append(("rendered-prompt", f"{g.input_length} tokens", f"{t.input_length} tokens"))
            else:
                found.append(("prompt-tokens", f"{g.input_length} tokens", f"{t.input_length} tokens"))
    return found


# ---- sentences ---------------------------------------------------------------------------------


def _setup_findings(by_cause: Mapping[str, list[Difference]], evidence: Mapping[str, list[tuple[str, Any, Any]]],
                    touched: Mapping[str, list[str]], total: int, golden: Side, test: Side) -> list[Finding]:
    causes = [c for c, items in by_cause.items() if items[0].klass == SETUP]
    causes += [c for c in evidence if c not in causes]
    findings = []
    for cause in sorted(causes, key=_cause_order):
        count = sum(1 for key_causes in touched.values() if cause in key_causes)
        run_part = _run_sentence(cause, by_cause.get(cause, ()))
        case_part = _cases_sentence(cause, evidence.get(cause, ()), count, total)
        text = f"{fields.cause_words(cause)}: " + "; ".join(p for p in (run_part, case_part) if p)
        example = _example(cause, evidence.get(cause, ()), golden, test)
        findings.append(Finding(SETUP, cause, text, count, total,
                                tuple(d.field for d in by_cause.get(cause, ())), example))
    return findings


def _configuration_findings(by_cause: Mapping[str, list[Difference]], total: int) -> list[Finding]:
    found = []
    for cause, items in by_cause.items():
        if items[0].klass != CONFIGURATION:
            continue
        text = f"{fields.cause_words(cause)}: {_fields_text(items)} (same inputs computed another way: the repeat " \
               "and batch probe and the configuration ablation tell whether it matters)"
        found.append(Finding(CONFIGURATION, cause, text, 0, total, tuple(d.field for d in items)))
    return found


def _run_sentence(cause: str, items: Sequence[Difference]) -> str:
    if not items:
        return ""
    values = {d.name: (d.golden, d.test) for d in items}
    if cause == "chat-template" and "applied" in values:
        g, t = values["applied"]
        if bool(g) != bool(t):
            return f"applied on the {'test' if t else 'golden'} side only"
    if cause == "sampling" and "do_sample" in values:
        g, t = values["do_sample"]
        if bool(g) != bool(t):
            which = "test" if t else "golden"
            return f"the {which} side samples (the other is greedy): {_fields_text(items)}"
    if cause == "generation-config":
        return f"{_fields_text(items)}"
    return _fields_text(items)


def _fields_text(items: Sequence[Difference]) -> str:
    parts = []
    for d in items:
        if isinstance(d.golden, Mapping) and isinstance(d.test, Mapping):  # a file's content: its changed keys
            changed = [k for k in dict.fromkeys([*d.golden, *d.test]) if not _same(d.golden.get(k), d.test.get(k))]
            parts += [f"{d.field}.{k} golden {_show(d.golden.get(k))} vs test {_show(d.test.get(k))}" for k in changed]
        else:
            parts.append(f"{d.field} golden {_show(d.golden)} vs test {_show(d.test)}")
    return ", ".join(parts)


def _cases_sentence(cause: str, items: Sequence[tuple[str, Any, Any]], count: int, total: int) -> str:
    share = f"{count}/{total} cases"
    if cause in fields.EVERY_CASE and not items:
        return f"touches every case ({share})" if total else "touches every case"
    if not items:
        return "no case's prompt differs" if total else ""
    (g, t), _ = Counter((_hashable(g), _hashable(t)) for _, g, t in items).most_common(1)[0]
    if cause == "bos":
        side, more, fewer = ("test", t, g) if t > g else ("golden", g, t)
        extra = "a second BOS" if (more, fewer) == (2, 1) else f"{more - fewer} more BOS token(s)"
        return f"the {side} side adds {extra} ({more} where the other has {fewer}) to {share}"
    if cause == "truncation":
        cut = "test" if t[0] > t[1] else "golden"
        length = t if cut == "test" else g
        return f"the {cut} side cut the prompt to its context limit ({length[1]} of {length[0]} tokens) in {share}"
    if cause == "few-shot":
        return f"golden has {g} examples, test {t}, in {share}"
    if cause == "max-new-tokens":
        return f"golden may generate {g} tokens, test {t}, in {share}"
    if cause == "eos-in-prompt":
        return f"golden's prompt holds {g} EOS tokens, test's {t}, in {share}"
    what = {"query": "the queries differ", "rendered-prompt": "the rendered prompts differ",
            "prompt-tokens": "the same text gives other token ids (cause not recorded)"}.get(cause, "")
    return f"{what + ': ' if what else ''}the prompt's token ids differ in {share}"


def _case_sentence(cause: str, key: str, evidence: Mapping[str, list[tuple[str, Any, Any]]]) -> str:
    for item_key, g, t in evidence.get(cause, ()):
        if item_key == key:
            if cause == "truncation":
                g, t = f"{g[1]} of {g[0]} tokens", f"{t[1]} of {t[0]} tokens"
            return f"{fields.cause_words(cause)} (golden {_show(g)}, test {_show(t)})"
    return f"{fields.cause_words(cause)} differ"


def _example(cause: str, items: Sequence[tuple[str, Any, Any]], golden: Side, test: Side) -> str:
    if not items:
        return ""
    key = items[0][0]
    g_head, t_head = golden.heads.get(key), test.heads.get(key)
    if g_head is None or t_head is None:
        return f"case {key}"
    return f"case {key}: golden's prompt starts {list(g_head)}, test's {list(t_head)}"


def _cause_order(cause: str) -> int:
    order = list(fields.CAUSES)
    return order.index(cause) if cause in order else len(order)


# ---- small helpers -----------------------------------------------------------------------------


def _touches(items: Iterable[Difference], golden: Side, test: Side) -> bool:
    """Whether run-level differences touch the cases: a generation_config.json that neither side applied
    changes nothing in what was generated (shown, not a case's cause)."""
    items = list(items)
    if items and items[0].cause == "generation-config":
        return any(_applied(side) for side in (golden, test))
    return True


def _applied(side: Side) -> bool:
    generation = side.run.get("generation") if isinstance(side.run, Mapping) else None
    return bool(generation.get("generation_config_applied")) if isinstance(generation, Mapping) else False


def _cut(inputs: CaseInputs) -> bool:
    return inputs.original_length is not None and inputs.input_length is not None \
        and inputs.original_length > inputs.input_length


def _both(a: Any, b: Any) -> bool:
    return a is not None and b is not None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"  # a hash
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= SHOWN_VALUE else text[: SHOWN_VALUE - 1] + "…"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
