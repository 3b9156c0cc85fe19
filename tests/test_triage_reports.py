"""The probe's and ablation's reports and variants, and the report's triage block (no model loads here)."""

from __future__ import annotations

import json

import pytest

from logitsdump.errors import DataError, FileFormatError
from logitsdump.report.triage import Evidence, format_preflight, load_evidence, terminal_block
from logitsdump.triage.ablation import BASELINE, AblationReport, AblationRow, RecordedSetup, variants_for
from logitsdump.triage.preflight import Finding, Preflight
from logitsdump.triage.probe import BATCH_VARIANT, BITS_ONLY, NONDETERMINISTIC, STABLE, ProbeCase, ProbeReport, classify


def test_the_probe_classes():
    assert classify(2, False, False, True) == NONDETERMINISTIC
    assert classify(1, True, True, False) == BATCH_VARIANT
    assert classify(1, True, False, False) == BITS_ONLY and classify(1, False, None, None) == BITS_ONLY
    assert classify(1, True, False, True) == STABLE and classify(1, True, None, None) == STABLE


def test_a_probe_report_reads_back():
    cases = (ProbeCase("3", BATCH_VARIANT, 1, 0.0, True, 0.125, False, True, True, 8, ("true", "false")),)
    report = ProbeReport("tiny", "bf16", "cpu", 3, 8, 8, cases, {"VLLM_BATCH_INVARIANT": "1"})
    again = ProbeReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report
    assert "1 batch-variant" in report.summary() and "at batch size 8 vs 1 0.125" in report.summary()
    with pytest.raises(FileFormatError, match="not a probe report"):
        ProbeReport.from_dict({"kind": "x"})


def test_the_variants_each_set_up_allows():
    hf = {v.name: why for v, why in variants_for(RecordedSetup(backend="Huggingface", batch_size=8))}
    assert hf["batch-size-1"] == "" and hf["single-process"] == "the test ran in one process"
    assert hf["eager"] == hf["prefix-cache-off"] == hf["tp-1"] == "the HF backend has no such feature"
    torchrun = {v.name: why for v, why in variants_for(RecordedSetup(batch_size=1, world_size=2))}
    assert torchrun["single-process"] == "" and torchrun["batch-size-1"] == "the test ran at batch size 1"
    engine = {"enforce_eager": False, "enable_prefix_caching": True, "chunked_prefill_enabled": True,
              "tensor_parallel_size": 2}
    vllm = {v.name: (v, why) for v, why in variants_for(RecordedSetup(backend="Vllm", engine=engine))}
    assert all(vllm[name][1] == "" for name in ("eager", "prefix-cache-off", "chunked-prefill-off", "tp-1"))
    assert vllm["eager"][0].engine == {"enforce_eager": True}
    assert vllm["chunked-prefill-off"][0].engine == {"enable_chunked_prefill": False}
    quiet = {v.name: why for v, why in variants_for(RecordedSetup(backend="vllm", engine={"enforce_eager": True}))}
    assert quiet["eager"] == "the test ran eagerly" and quiet["prefix-cache-off"]


def test_the_setup_comes_from_the_recorded_run():
    run = {"runner": {"backend": "Vllm", "batch_size": 16, "world_size": 1, "tp": 1},
           "engine": {"enforce_eager": False}}
    setup = RecordedSetup.from_run(run, batch_size=None)
    assert setup.backend == "Vllm" and setup.batch_size == 16 and setup.engine == {"enforce_eager": False}
    assert RecordedSetup.from_run(run, batch_size=4).batch_size == 4
    assert RecordedSetup.from_run(None) == RecordedSetup()


def ablation(gone: int, reproduced: int = 3) -> AblationReport:
    rows = (AblationRow(BASELINE, "as recorded", still=reproduced),
            AblationRow("batch-size-1", "batch size 1 instead of 8", gone=gone, still=reproduced - gone),
            AblationRow("eager", "eager mode instead of graphs", skipped="the HF backend has no such feature"))
    return AblationReport("tiny", {}, {"1": "true", "2": "true", "3": "false"}, rows, reproduced)


def test_the_ablation_names_only_a_change_that_removes_every_flip():
    assert ablation(3).summary() == "the flip goes away with: batch size 1 instead of 8 (3/3)"
    assert [r.name for r in ablation(3).culprits()] == ["batch-size-1"]
    assert "no single change makes the 3 reproduced flip(s) go away" in ablation(2).summary()
    assert ablation(2).culprits() == []
    assert "did not reproduce any" in ablation(0, reproduced=0).summary()
    again = AblationReport.from_dict(json.loads(json.dumps(ablation(3).to_dict())))
    assert again.summary() == ablation(3).summary()


class _Result:
    def __init__(self, preflight, cases=()):
        self.summary = {"preflight": preflight.to_dict()} if preflight else {}
        self.cases = cases


class _Case:
    def __init__(self, verdict):
        self.verdict = verdict


def test_the_terminal_block_reads_in_order():
    finding = Finding("set-up", "bos", "BOS tokens: the test side adds a second BOS (2 where the other has 1) to "
                      "2/2 cases", 2, 2, (), "case 0: golden's prompt starts [1, 5], test's [1, 1, 5]")
    preflight = Preflight("g", "t", (finding,), {"0": ("bos",), "1": ("bos",)}, {}, 2, fields_compared=40)
    result = _Result(preflight, (_Case("setup-differs"), _Case("setup-differs"), _Case("consistent")))
    lines = terminal_block(result)
    text = "\n".join(lines)
    assert lines[0].startswith("set-up or numerics?")
    order = [text.index(f"{n} {part}") for n, part in enumerate(("set-up", "nondeterminism", "configuration",
                                                                   "numerics"), start=1)]
    assert order == sorted(order)
    assert "2 case(s) get setup-differs" in text and "second BOS" in text
    assert "not probed" in text and "ablation: not run" in text
    assert "1 case(s) with the same set-up: consistent 1" in text
    evidence = Evidence((preflight,), None, ablation(3))
    assert "ablation: the flip goes away with: batch size 1" in "\n".join(terminal_block(result, evidence))
    assert "not recorded (a compare run older" in "\n".join(terminal_block(_Result(None)))
    assert "set-up: 1 difference(s), 2/2 case(s) touched" in format_preflight(preflight)


def test_triage_files_are_checked(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"kind": "other"}', encoding="utf-8")
    with pytest.raises(DataError, match="not a probe or ablation report"):
        load_evidence(_Result(None), [str(bad)])
    with pytest.raises(DataError, match="does not exist"):
        load_evidence(_Result(None), [str(tmp_path / "missing.json")])
    good = tmp_path / "a.json"
    good.write_text(json.dumps(ablation(3).to_dict()), encoding="utf-8")
    assert load_evidence(_Result(None), [str(good)]).ablation is not None
