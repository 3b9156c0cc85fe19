"""The parity preflight on recorded provenance: each difference a finding with its cause, none on a clean pair,
"not recorded" for what older or foreign runs lack (no model loads here)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from logitsdump import store
from logitsdump.errors import DataError
from logitsdump.triage.fields import CONFIGURATION, CONTEXT, SETUP, flatten, rule
from logitsdump.triage.preflight import Preflight, preflight
from logitsdump.triage.sides import Side, load_dump, load_eval_csv, load_side

RUN = {
    "runner": {"backend": "Huggingface", "device": "cpu", "dtype": "fp32", "batch_size": 1, "tp": 1, "world_size": 1,
               "data_parallel": False, "tensor_parallel": False, "mode": "eval", "model_name": "m", "model_path": "/a"},
    "task": {"name": "mmlu_few_shots", "shots": 1, "max_input_length": 4096, "truncation_side": "left",
             "max_new_tokens": 4, "need_logits": False, "prompt_sha256": "p" * 64},
    "model": {"config": {"rms_norm_eps": 1e-5, "rope_theta": 10000.0}, "architectures": ["LlamaForCausalLM"],
              "remote_code": False},
    "tokenizer": {"files": {"tokenizer.json": "a" * 64}, "class": "T", "bos_token_id": 1, "eos_token_ids": [2]},
    "chat_template": {"applied": False, "sha256": "c" * 64},
    "generation": {"do_sample": False, "temperature": None, "top_k": None, "top_p": None, "repetition_penalty": 1.0,
                   "seed": None, "generation_config_applied": False, "sources": {}, "stop_token_ids": [2],
                   "generation_config_file": "g" * 64, "generation_config": {"do_sample": False, "eos_token_id": 2,
                                                                            "transformers_version": "5.0"}},
    "versions": {"torch": "2.13.0", "transformers": "5.25.0"},
    "engine": {"attn_implementation": "sdpa", "num_threads": 2},
    "environment": {},
}


def inputs(ids, **changes) -> store.CaseInputs:
    values = dict(input_sha256=store.token_ids_sha256(ids), input_length=len(ids), original_length=len(ids),
                  bos_count=sum(1 for i in ids if i == 1), eos_count=0, rendered_sha256=store.text_sha256(str(ids)),
                  max_new_tokens=4, mode="generate", shots=("dev/a_dev.csv:1",))
    values.update(changes)
    return store.CaseInputs(**values)


PROMPTS = {str(k): [1, 10 + k, 20 + k, 30] for k in range(5)}


def side(run=RUN, cases=None, heads=None, **kwargs) -> Side:
    cases = cases if cases is not None else {k: inputs(ids) for k, ids in PROMPTS.items()}
    heads = heads if heads is not None else {k: tuple(PROMPTS.get(k, ())) for k in cases}
    return Side(Path("/x"), "eval", run, cases, heads, {k: f"q{k}" for k in cases}, **kwargs)


def changed(**sections):
    run = copy.deepcopy(RUN)
    for section, values in sections.items():
        run[section].update(values)
    return run


def causes_of(result: Preflight) -> set[str]:
    return {c for causes in result.case_causes.values() for c in causes}


def test_a_clean_pair_has_no_finding():
    test_run = changed(runner={"dtype": "bf16", "device": "npu:0", "backend": "Vllm", "model_path": "/b"},
                       versions={"torch": "2.1.0", "torch_npu": "2.1.0.post3", "cann": "8.0.RC1"})
    result = preflight(side(), side(test_run))
    assert result.findings == () and result.case_causes == {}
    assert result.compared == 5 and result.fields_compared > 30
    # what differs between two devices by design is shown side by side, never a finding
    assert {d.field for d in result.context} >= {"runner.dtype", "runner.device", "runner.backend", "versions.torch"}


def test_a_double_bos_is_named_in_every_case_it_touches():
    test_cases = {k: inputs([1, *ids]) for k, ids in PROMPTS.items()}
    result = preflight(side(), side(cases=test_cases, heads={k: (1, *ids) for k, ids in PROMPTS.items()}))
    assert all("bos" in result.case_causes[k] for k in PROMPTS)
    (finding,) = result.setup
    assert finding.cause == "bos" and finding.cases == 5
    assert "the test side adds a second BOS" in finding.text and "5/5 cases" in finding.text
    assert "[1, 1, 10" in finding.example


@pytest.mark.parametrize(("section", "values", "cause"), [
    ("chat_template", {"applied": True}, "chat-template"),
    ("tokenizer", {"files": {"tokenizer.json": "b" * 64}}, "tokenizer-file"),
    ("task", {"shots": 3}, "few-shot"),
])
def test_a_prompt_difference_touches_the_cases_whose_tokens_differ(section, values, cause):
    # two of the five prompts come out differently on the test side
    test_cases = {k: inputs([*ids, 99] if k in ("1", "3") else ids) for k, ids in PROMPTS.items()}
    result = preflight(side(), side(changed(**{section: values}), cases=test_cases))
    assert set(result.case_causes) == {"1", "3"}
    assert all(cause in result.case_causes[k] for k in ("1", "3"))
    (finding,) = [f for f in result.setup if f.cause == cause]
    assert finding.cases == 2 and "2/5 cases" in finding.text
    if cause == "chat-template":
        assert "applied on the test side only" in finding.text


@pytest.mark.parametrize(("section", "values", "cause", "words"), [
    ("task", {"max_new_tokens": 1}, "max-new-tokens", "task.max_new_tokens golden 4 vs test 1"),
    ("generation", {"do_sample": True, "temperature": 0.7, "seed": 0}, "sampling", "the test side samples"),
    ("model", {"config": {"rms_norm_eps": 1e-3, "rope_theta": 10000.0}}, "model-config",
     "model.config.rms_norm_eps golden 1e-05 vs test 0.001"),
    ("generation", {"generation_config_applied": True,
                    "generation_config": {"do_sample": False, "eos_token_id": 2, "repetition_penalty": 1.3}},
     "generation-config", "generation.generation_config.repetition_penalty golden none vs test 1.3"),
])
def test_a_settings_difference_touches_every_case(section, values, cause, words):
    result = preflight(side(), side(changed(**{section: values})))
    assert set(result.case_causes) == set(PROMPTS)
    assert all(cause in result.case_causes[k] for k in PROMPTS)
    (finding,) = [f for f in result.setup if f.cause == cause]
    assert words in finding.text and finding.cases == 5


def test_a_generation_config_neither_side_applies_is_shown_but_touches_no_case():
    test_run = changed(generation={"generation_config": {"do_sample": True, "eos_token_id": 2}})
    result = preflight(side(), side(test_run))
    (finding,) = result.setup
    assert finding.cause == "generation-config" and finding.cases == 0 and result.case_causes == {}


def test_a_re_saved_generation_config_is_no_difference():
    test_run = changed(generation={"generation_config_file": "h" * 64, "generation_config": {
        "do_sample": False, "eos_token_id": 2, "transformers_version": "4.40", "_from_model_config": True}})
    assert preflight(side(), side(test_run)).findings == ()


def test_truncation_and_the_case_limit_are_named_per_case():
    test_cases = {k: inputs(ids[-2:], original_length=len(ids)) if k == "0" else inputs(ids, max_new_tokens=1)
                  for k, ids in PROMPTS.items()}
    result = preflight(side(), side(changed(task={"max_input_length": 2}), cases=test_cases))
    assert "truncation" in result.case_causes["0"] and "context-limit" in result.case_causes["0"]
    assert all("max-new-tokens" in result.case_causes[k] for k in ("1", "2", "3", "4"))
    truncation = next(f for f in result.setup if f.cause == "truncation")
    assert "the test side cut the prompt to its context limit (2 of 4 tokens) in 1/5 cases" in truncation.text


def test_other_token_ids_without_a_recorded_cause_are_still_a_set_up_difference():
    test_cases = {k: inputs([*ids, 7]) for k, ids in PROMPTS.items()}
    result = preflight(side(), side(cases=test_cases))
    assert all(result.case_causes[k] == ("rendered-prompt",) for k in PROMPTS)


def test_configuration_differences_are_leads_not_verdicts():
    test_run = changed(runner={"batch_size": 8, "world_size": 2, "data_parallel": True},
                       environment={"VLLM_BATCH_INVARIANT": "1"})
    result = preflight(side(), side(test_run))
    assert result.case_causes == {} and result.setup == ()
    assert {f.cause for f in result.configuration} == {"batch-size", "parallel-layout", "determinism-switch"}
    assert "runner.batch_size golden 1 vs test 8" in result.configuration[0].text


def test_missing_provenance_is_not_recorded_and_still_compares_the_token_ids():
    old = side(run=None, cases={k: store.CaseInputs(store.token_ids_sha256(ids), len(ids)) for k, ids in
                                PROMPTS.items()}, not_recorded=("the run's settings (provenance.json: ...)",))
    result = preflight(side(), old)
    assert result.findings == () and result.fields_compared == 0
    assert result.not_recorded == {"test": ("the run's settings (provenance.json: ...)",)}
    moved = preflight(old, side(cases={k: inputs([*ids, 5]) for k, ids in PROMPTS.items()}))
    assert all(c == ("prompt-tokens",) for c in moved.case_causes.values()) and len(moved.case_causes) == 5


def test_field_rules():
    assert rule("runner", "dtype").klass == CONTEXT and rule("versions", "vllm").klass == CONTEXT
    assert rule("runner", "batch_size").klass == CONFIGURATION
    assert rule("engine", "enforce_eager").klass == CONFIGURATION
    assert rule("model", "config.rope_scaling") == rule("model", "config.rms_norm_eps")
    assert rule("model", "config.rms_norm_eps").klass == SETUP and rule("model", "remote_code").klass == CONTEXT
    assert rule("runner", "model_path") is None
    flat = flatten(RUN)
    assert flat[("tokenizer", "files.tokenizer.json")] == "a" * 64
    assert flat[("generation", "generation_config")] == {"do_sample": False, "eos_token_id": 2}


def test_the_preflight_reads_back_as_it_was_written():
    test_cases = {k: inputs([1, *ids]) for k, ids in PROMPTS.items()}
    result = preflight(side(), side(changed(runner={"dtype": "bf16"}), cases=test_cases))
    again = Preflight.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    assert Preflight.from_dict({"no": "findings"}) is None and Preflight.from_dict(None) is None


# ---- reading the sides from files ---------------------------------------------------------------


def write_debug_csv(path: Path, rows: dict[str, list[int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["key,queries,input_token_ids,output_token_ids,test_result,golden_result,pass"]
    lines += [f'{k},q{k},"{ids}",[],A,A,Correct' for k, ids in rows.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_debug_csv_of_a_real_modeltest_compares_by_token_ids(tmp_path):
    golden = write_debug_csv(tmp_path / "g" / "t_pa_batch1_tp1_debug_info.csv", PROMPTS)
    test = write_debug_csv(tmp_path / "t" / "t_pa_batch1_tp1_debug_info.csv",
                           {k: [1, *ids] for k, ids in PROMPTS.items()})
    g, t = load_eval_csv(golden), load_eval_csv(test)
    assert g.run is None and "not by a real modeltest" in g.not_recorded[0]
    result = preflight(g, t)
    # without the run's BOS id a double BOS shows as other token ids; the cause is not recorded
    assert all(c == ("prompt-tokens",) for c in result.case_causes.values()) and len(result.case_causes) == 5
    # with a provenance beside the test CSV, its BOS id counts the BOS tokens of both
    store.write_provenance(store.provenance_path_for_csv(test), store.RunProvenance(RUN))
    store.write_provenance(store.provenance_path_for_csv(golden), store.RunProvenance(RUN))
    result = preflight(load_eval_csv(golden), load_eval_csv(test))
    assert all("bos" in c for c in result.case_causes.values())


def test_an_old_dump_folder_reads_with_not_recorded(tmp_path):
    record = store.CaseManifest("t", "s", 0, 0, ("logits_s_0_0.pth",), (1, 2, 3), (4,), ("x",), "x", "q", "h", "m",
                                "/m", "fp32", "float32", 10, "cpu")
    line = record.to_dict()
    del line["inputs"]  # a manifest line written before the inputs were recorded
    tmp_path.joinpath(store.MANIFEST_NAME).write_text(json.dumps(line) + "\n", encoding="utf-8")
    dumped = load_dump(tmp_path)
    assert dumped.run is None and dumped.cases["0"].input_length == 3
    assert dumped.file_keys == {"logits_s_0_0.pth": "0"}
    assert any("predate" in item for item in dumped.not_recorded)


def test_unreadable_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_side(tmp_path / "missing", "-gp")
    with pytest.raises(DataError, match=r"no manifest\.jsonl"):
        load_side(tmp_path, "-gp")
    csv_path = write_debug_csv(tmp_path / "a" / "x_debug_info.csv", PROMPTS)
    store.provenance_path_for_csv(csv_path).write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        load_eval_csv(csv_path)
    store.provenance_path_for_csv(csv_path).write_text('{"schema_version": 99, "run": {}}', encoding="utf-8")
    with pytest.raises(DataError, match="schema_version 99"):
        load_eval_csv(csv_path)


def test_the_preflight_and_its_report_never_import_torch(tmp_path):
    import subprocess
    import sys

    golden = write_debug_csv(tmp_path / "g" / "t_pa_batch1_tp1_debug_info.csv", PROMPTS)
    test = write_debug_csv(tmp_path / "t" / "t_pa_batch1_tp1_debug_info.csv", PROMPTS)
    code = (
        "import sys\n"
        "from logitsdump.cli import main\n"
        f"main(['preflight', '-gp', {str(golden)!r}, '-mp', {str(test)!r}])\n"
        "import logitsdump.triage.setup_verdicts, logitsdump.report.triage, logitsdump.triage.probe\n"
        "import logitsdump.triage.ablation, logitsdump.triage.rerun\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "set-up: none found" in done.stdout


def test_bcanalyzes_pair_reading_finds_what_reading_each_side_finds(tmp_path):
    """`load_eval_pair` skips the rows both sides hold alike; the preflight it feeds says the same as the
    one fed by `load_eval_csv` of each side (issue 27: bcanalyze's preflight on a million rows)."""
    import csv

    from logitsdump.triage.preflight import preflight
    from logitsdump.triage.sides import load_eval_csv, load_eval_pair

    def write(path, rows):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["key", "queries", "input_token_ids", "output_token_ids", "test_result", "golden_result",
                          "pass"])
            out.writerows(rows)

    golden = [[str(i), f"q{i}", str([1, 5, 6, i]), "[7]", "A", "A", "True"] for i in range(30)]
    test = [list(row) for row in golden]
    test[3][2] = str([5, 6, 3])  # no BOS on the test side
    test[7][2] = str([1, 1, 5, 6, 7])  # two BOS
    test[9][1] = "another question"
    test[9][2] = str([1, 8, 9])
    test[11][2] = "not ids"
    del test[20]  # a case only golden has
    write(tmp_path / "g_debug_info.csv", golden)
    write(tmp_path / "t_debug_info.csv", test)
    each = preflight(load_eval_csv(tmp_path / "g_debug_info.csv"), load_eval_csv(tmp_path / "t_debug_info.csv"))
    pair = preflight(*load_eval_pair(tmp_path / "g_debug_info.csv", tmp_path / "t_debug_info.csv"))
    assert pair.to_dict() == each.to_dict()
    assert set(pair.case_causes) == {"3", "7", "9"}  # the check can tell: cases whose inputs differ are named
    assert pair.only_golden == 1 and pair.compared == 29
