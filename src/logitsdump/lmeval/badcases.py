"""bcanalyze over two lm-eval samples files: join the docs, refuse different prompts, list the flips.

Docs are joined on (`doc_id`, `doc_hash`) within one filter. A doc whose `prompt_hash` differs between
the runs stops the analysis: the two runs did not see the same prompt (few-shot draw, chat template,
system instruction), which is a set-up difference, not numerics. Pass/fail is one per-doc metric field
(`acc`, `exact_match`, ...), logged by lm-eval as 0/1; a bad case is a doc whose value differs.
"""

from __future__ import annotations

from collections.abc import Sequence

from logitsdump.bcresult import RESULT_PREFIX, BcanalyzeOptions, BcanalyzeResult, Flips, first_keys
from logitsdump.csvsafe import write_csv
from logitsdump.errors import DataError
from logitsdump.fsutil import claim_stamped, ensure_writable_dir, timestamp
from logitsdump.lmeval.samples import Sample, SamplesFile, pass_fail_metrics, pass_value, read_samples
from logitsdump.logs import get_logger

#: The bad-case CSV of lm-eval inputs: our columns (`key` = lm-eval's doc_id, `queries` = the logged
#: prompt), then where the docs come from.
COLUMNS = ("key", "queries", "passed_golden", "passed_test", "task", "doc_hash", "metric", "filter")

log = get_logger("badcase")

Ident = tuple[int, str]  # (doc_id, doc_hash)


def analyze_samples(options: BcanalyzeOptions) -> BcanalyzeResult:
    """The bad docs of `options.test_path` against `options.golden_path`, both lm-eval samples files."""
    golden, test = read_samples(options.golden_path), read_samples(options.test_path)
    warnings: list[str] = []
    if golden.task != test.task:
        warnings.append(f"the file names name different tasks ({golden.task}, {test.task}): "
                        "docs are matched on doc_id and doc_hash all the same")
    chosen = _filter(golden, test, options.lm_eval_filter)
    golden_docs = _index(golden, chosen, warnings)
    test_docs = _index(test, chosen, warnings)
    _refuse_other_prompts(golden_docs, test_docs, golden, test)
    metric = _metric(golden, test, [list(golden_docs.values()), list(test_docs.values())], options.metric)
    _warn_unmatched(golden_docs, test_docs, golden, test, warnings)

    rows: list[list[str]] = []
    compared = 0
    tally = {"golden": 0, "test": 0, "judged": 0, "b": 0, "c": 0}  # McNemar's counts, as bcanalyze's CSV path
    for ident, g in golden_docs.items():
        t = test_docs.get(ident)
        if t is None:
            continue
        compared += 1
        passed_g, passed_t = pass_value(g.metrics[metric]), pass_value(t.metrics[metric])
        if passed_g is not None and passed_t is not None:
            tally["judged"] += 1
            tally["golden"] += passed_g
            tally["test"] += passed_t
            tally["b"] += passed_g and not passed_t
            tally["c"] += passed_t and not passed_g
        if passed_g != passed_t:
            rows.append([str(g.doc_id), g.prompt, _label(passed_g), _label(passed_t), golden.task, g.doc_hash,
                         metric, chosen])
    flips = Flips(tally["golden"], tally["test"], tally["judged"], tally["b"], tally["c"])
    for message in warnings:
        log.warning(message)
    if not rows:
        log.warning("no difference in %s between the golden and the test samples: no file written", metric)
        return BcanalyzeResult(None, 0, compared, tuple(warnings), flips)
    folder = ensure_writable_dir(options.output_dir)
    with claim_stamped(folder, timestamp(), lambda tag: (f"{RESULT_PREFIX}{tag}.csv",)) as (path,):
        write_csv(path, list(COLUMNS), rows)
    log.info("%s, filter %s: %d of %d docs flip %s", golden.task, chosen, len(rows), compared, metric)
    return BcanalyzeResult(path, len(rows), compared, tuple(warnings), flips)


def _label(passed: bool | None) -> str:
    return "true" if passed else "false"


def _filter(golden: SamplesFile, test: SamplesFile, wanted: str | None) -> str:
    """The filter compared: `wanted`, else the first one golden logs; it must be in both files."""
    chosen = wanted if wanted is not None else golden.filters()[0]
    for file in (golden, test):
        if chosen not in file.filters():
            raise DataError(f"{file.path} has no samples of filter {chosen!r} (its filters: "
                            f"{', '.join(file.filters())}); choose one with --filter")
    return chosen


def _index(file: SamplesFile, chosen: str, warnings: list[str]) -> dict[Ident, Sample]:
    """First sample per (doc_id, doc_hash) of the chosen filter; duplicates named in `warnings`."""
    docs: dict[Ident, Sample] = {}
    duplicates: list[str] = []
    for sample in file.samples:
        if sample.filter != chosen:
            continue
        ident = (sample.doc_id, sample.doc_hash)
        if ident in docs:
            duplicates.append(str(sample.doc_id))
        else:
            docs[ident] = sample
    if duplicates:
        warnings.append(f"{file.path}: {len(duplicates)} doc(s) logged twice under filter {chosen}, only the first "
                        f"line of each is used: doc_id {first_keys(duplicates)}")
    return docs


def _metric(golden: SamplesFile, test: SamplesFile, groups: Sequence[Sequence[Sample]], wanted: str | None) -> str:
    """The pass/fail metric: `wanted` (checked on every sample), else the first one logged as 0/1."""
    if wanted is None:
        candidates = pass_fail_metrics(groups)
        if not candidates:
            logged = ", ".join(groups[0][0].metrics) or "none"
            raise DataError(f"{golden.path}: no per-doc metric is logged as pass/fail (0/1) in both files "
                            f"(metrics: {logged}): bad cases need one, e.g. acc or exact_match")
        return candidates[0]
    for file, group in zip((golden, test), groups, strict=True):
        for sample in group:
            if wanted not in sample.metrics:
                raise DataError(f"{file.path}, line {sample.line}: no metric {wanted!r} (logged: "
                                f"{', '.join(sample.metrics)})")
            if pass_value(sample.metrics[wanted]) is None:
                raise DataError(f"{file.path}, line {sample.line}: metric {wanted} is {sample.metrics[wanted]!r}, "
                                "not pass/fail (0/1): choose a 0/1 metric with --metric")
    return wanted


def _warn_unmatched(golden_docs: dict[Ident, Sample], test_docs: dict[Ident, Sample], golden: SamplesFile,
                    test: SamplesFile, warnings: list[str]) -> None:
    test_ids = {doc_id for doc_id, _ in test_docs}
    other_doc = [str(i) for i, h in golden_docs if (i, h) not in test_docs and i in test_ids]
    if other_doc:
        warnings.append(f"{len(other_doc)} doc(s) have another doc_hash in {test.path} (another dataset row under "
                        f"the same doc_id: dataset version or order differ), not compared: doc_id "
                        f"{first_keys(other_doc)}")
    missing = [str(i) for i, h in golden_docs if (i, h) not in test_docs and i not in test_ids]
    if missing:
        warnings.append(f"{len(missing)} golden doc(s) not found in {test.path} (--limit or --samples?): "
                        f"doc_id {first_keys(missing)}")
    golden_ids = {doc_id for doc_id, _ in golden_docs}
    extra = [str(i) for i, _ in test_docs if i not in golden_ids]
    if extra:
        warnings.append(f"{len(extra)} test doc(s) not found in {golden.path}: doc_id {first_keys(extra)}")


def _refuse_other_prompts(golden_docs: dict[Ident, Sample], test_docs: dict[Ident, Sample], golden: SamplesFile,
                          test: SamplesFile) -> None:
    """DataError when a joined doc's prompt_hash differs: the runs did not see the same prompt."""
    differing = [str(ident[0]) for ident, g in golden_docs.items()
                 if ident in test_docs and test_docs[ident].prompt_hash != g.prompt_hash]
    if differing:
        raise DataError(
            f"{len(differing)} doc(s) have another prompt in {test.path} than in {golden.path} (prompt_hash "
            f"differs, doc_id {first_keys(differing)}): the two runs did not see the same prompt (num_fewshot, "
            "few-shot seed, chat template or system instruction differ), a set-up difference, not numerics"
        )
