"""Which cases to localise, and their tokens: from compare's case JSON and the golden dump's manifest.

By default the cases compare calls precision-suspect (replayed) or divergent (free run), each at the step
compare centres on (`CaseRecord.focus_step`); `keys` picks cases by key instead, and `step` fixes the
focus step. Without a compare run, the cases come from the golden dump alone (every case, or `keys`), at
`step` or at the last dumped step. The prefill of a case is its prompt and golden's tokens before the focus
step, so its last position predicts the token at the focus step. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from logitsdump import store
from logitsdump.compare.document import CompareDocument
from logitsdump.compare.verdicts import DIVERGENT, PRECISION_SUSPECT
from logitsdump.errors import DataError

#: The compare verdicts localised by default.
SUSPECT_VERDICTS = (PRECISION_SUSPECT, DIVERGENT)


@dataclass(frozen=True)
class CaseSpec:
    """One case to localise."""

    subject: str
    key: int | str
    task: str
    index: int
    focus_step: int
    focus_why: str
    compare_verdict: str | None
    prompt_ids: tuple[int, ...]
    golden_ids: tuple[int, ...]

    @property
    def token_ids(self) -> tuple[int, ...]:
        """The prefill: the prompt and golden's tokens before the focus step."""
        return self.prompt_ids + self.golden_ids[: self.focus_step]

    @property
    def label(self) -> str:
        return f"{self.subject} #{self.key}" if self.subject else f"#{self.key}"


@dataclass(frozen=True)
class Selection:
    """The cases to localise, the golden dump they come from, and the test's dtype when compare names it."""

    cases: list[CaseSpec]
    golden_dir: Path
    test_dtype: str | None


def select_cases(*, compare_output: str | Path | None = None, golden_dump: str | Path | None = None,
                 keys: Sequence[str] | None = None, step: int | None = None) -> Selection:
    """The cases to localise (see the module docstring)."""
    if compare_output is None and golden_dump is None:
        raise DataError("localize record needs compare's output (-c) or the golden dump (--golden-dump)")
    wanted = {str(k) for k in keys} if keys else None
    document = None
    if compare_output is not None:
        from logitsdump.report.load import find_cases_json, parse_document

        path = find_cases_json(compare_output)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read compare's case JSON: {err}") from err
        result = parse_document(data, path)
        document = result.document
        if golden_dump is None:
            golden_dump = result.golden_dir()
            if golden_dump is None:
                raise DataError(f"{path}: its golden folder {result.options.get('golden_path')!r} is not found; "
                                "give it with --golden-dump")
    folder = Path(str(golden_dump))
    manifest = {(r.subject, str(r.key)): r for r in store.read_manifest(folder)}
    if not manifest:
        raise DataError(f"{folder}: no {store.MANIFEST_NAME} (a real modeltest writes none): localize needs golden's "
                        "token ids; dump the golden side with `logitsdump dump -e \"logitsdump eval ...\"`")
    specs = (_from_compare(document, manifest, wanted, step) if document is not None
             else _from_manifest(manifest, wanted, step))
    if not specs:
        what = f"keys {', '.join(sorted(wanted))}" if wanted else (
            f"{' or '.join(SUSPECT_VERDICTS)} cases" if document is not None else "cases")
        raise DataError(f"no {what} to localise" + (f" in {compare_output}" if compare_output else f" in {folder}")
                        + ("; pick cases with --keys" if document is not None and not wanted else ""))
    test_dtype = None
    if document is not None:
        test_dtype = next((c.my_manifest.dtype for c in document.cases if c.my_manifest and c.my_manifest.dtype), None)
    return Selection(specs, folder, test_dtype)


def _from_compare(document: CompareDocument, manifest: dict, wanted: set[str] | None,
                  step: int | None) -> list[CaseSpec]:
    specs = []
    for case in document.cases:
        if wanted is not None and str(case.key) not in wanted:
            continue
        if wanted is None and case.verdict not in SUSPECT_VERDICTS:
            continue
        record = manifest.get((case.subject, str(case.key)))
        if record is None:
            raise DataError(f"case {case.label} is not in the golden dump's manifest: was compare run on this dump?")
        focus = case.focus_step if step is None else step
        why = (case.focus_why or "first-step") if step is None else "--step"
        specs.append(_spec(record, focus if focus is not None else 0, why, case.verdict))
    return specs


def _from_manifest(manifest: dict, wanted: set[str] | None, step: int | None) -> list[CaseSpec]:
    specs = []
    for (_subject, key), record in sorted(manifest.items(), key=lambda kv: kv[1].index):
        if wanted is not None and key not in wanted:
            continue
        last = max(len(record.files), 1) - 1
        specs.append(_spec(record, last if step is None else step, "last-dumped-step" if step is None else "--step",
                           None))
    return specs


def _spec(record: store.CaseManifest, focus: int, why: str, verdict: str | None) -> CaseSpec:
    golden = tuple(int(t) for t in record.output_token_ids)
    if not record.input_token_ids:
        raise DataError(f"case {record.subject} #{record.key}: the golden manifest has no prompt token ids")
    if focus < 0 or (golden and focus >= len(golden)) or (not golden and focus > 0):
        raise DataError(f"case {record.subject} #{record.key}: step {focus} is beyond golden's {len(golden)} tokens")
    return CaseSpec(record.subject, record.key, record.task, record.index, focus, why, verdict,
                    tuple(int(t) for t in record.input_token_ids), golden)
