"""Set-up or numerics, end to end on the tiny model: planted set-up differences named by bcanalyze's and
compare's preflight, the repeat and batch probe, the configuration ablation, the commands and the report."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from logitsdump import store
from logitsdump.demo import examples
from logitsdump.demo.defects import Defect, write_defective_model, write_model_yaml
from logitsdump.demo.setup_check import run_pair
from logitsdump.demo.setup_plants import CLEAN, KINDS, plant

from helpers import run_cli

TASK = "mmlu_few_shots"


@pytest.fixture(autouse=True)
def _threads():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the probe compares bits
    yield
    torch.set_num_threads(threads)


#: The tiny model's median prompt length on TASK with one shot (the context-limit difference cuts the longer half).
MEDIAN_PROMPT = 283


def planted_pair(kind: str, work: Path):
    planted = plant(kind, examples.TINY_MODEL, examples.task_config(TASK), work / "plant", model_name="tiny_llama",
                    context_limit=MEDIAN_PROMPT)
    return planted, run_pair(planted, work, tokens=2)


@pytest.mark.slow
@pytest.mark.parametrize("kind", [CLEAN, *KINDS])
def test_each_planted_set_up_difference_is_named_in_every_case_it_touches(tmp_path, kind):
    _, score = planted_pair(kind, tmp_path)
    assert score.cases == score.dump_cases == 17
    assert score.eval_false == 0 and score.dump_false == 0, score  # no false alarm on an untouched case
    if kind == CLEAN:
        assert score.touched == 0 and score.causes == {}, score
        return
    assert score.touched > 0
    if kind == "context-limit":  # only the prompts longer than the limit: the others must stay unflagged
        assert 0 < score.touched < score.cases, score
    assert score.eval_hits == score.touched, score  # bcanalyze's preflight (debug CSVs)
    assert score.dump_hits == score.touched, score  # compare's setup-differs verdict, with the cause
    assert score.finding


@pytest.mark.slow
def test_the_runner_records_what_each_side_fed_the_model(tmp_path):
    _planted, _ = planted_pair("chat-template", tmp_path)
    logits = next((tmp_path / "dump" / "test").rglob(store.MANIFEST_NAME)).parent
    run = store.read_provenance(logits / store.PROVENANCE_NAME).run
    assert run["chat_template"]["applied"] is True and run["runner"]["mode"] == "dump"
    assert run["task"]["shots"] == 1 and run["tokenizer"]["files"]["tokenizer.json"]
    assert run["runner"]["dtype"] == "bf16" and run["versions"]["torch"]
    record = store.read_manifest(logits)[0]
    assert record.inputs["rendered_prompt"].startswith("<|user|>")  # the tiny model's chat template
    assert len(record.inputs["shots"]) == 1 and record.inputs["shots"][0].startswith("dev/")
    assert record.inputs["input_sha256"] == store.token_ids_sha256(record.input_token_ids)
    debug = next((tmp_path / "eval" / "golden").rglob(f"*{store.PROVENANCE_SUFFIX}"))
    cases = store.read_provenance(debug).cases
    assert len(cases) == 17 and all(c["bos_count"] == 1 and c["stop_reason"] for c in cases.values())


@pytest.mark.slow
def test_the_commands_put_set_up_findings_first(tmp_path):
    planted_pair("double-bos", tmp_path)
    golden, test = tmp_path / "eval" / "golden", tmp_path / "eval" / "test"
    shown = run_cli("preflight", "-gp", str(golden), "-mp", str(test), "-o", str(tmp_path / "pf"))
    assert shown.returncode == 0, shown.stderr
    assert "BOS tokens: the test side adds a second BOS (2 where the other has 1) to 17/17 cases" in shown.stdout
    assert "differs by design: runner.dtype fp32 vs bf16" in shown.stdout
    written = json.loads(next((tmp_path / "pf").glob("preflight_*.json")).read_text())
    assert written[0]["case_causes"]["0"] == ["bos", "tokenizer-file"]

    csvs = [next(folder.rglob("*_debug_info.csv")) for folder in (golden, test)]
    analysed = run_cli("bcanalyze", "-gp", str(csvs[0]), "-mp", str(csvs[1]), "-o", str(tmp_path / "bc"))
    assert analysed.returncode == 0, analysed.stderr
    assert analysed.stdout.startswith("preflight:") and "second BOS" in analysed.stdout

    dumps = [next((tmp_path / "dump" / s).rglob(store.MANIFEST_NAME)).parent for s in ("golden", "test")]
    compared = run_cli("compare", "-gp", str(dumps[0]), "-mp", str(dumps[1]), "-o", str(tmp_path / "cmp"))
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    assert lines[0].startswith("set-up or numerics?") and "17 case(s) get setup-differs" in lines[1]
    assert "4 numerics        0 case(s) with the same set-up" in compared.stdout
    cases = json.loads(next((tmp_path / "cmp").glob("logits_cmp_cases_*.json")).read_text())["cases"]
    assert {c["verdict"] for c in cases} == {"setup-differs"}
    assert all(c["reason"].startswith("set-up differs: BOS tokens (golden 1, test 2)") for c in cases)
    reported = run_cli("report", str(tmp_path / "cmp"), "-o", str(tmp_path / "page.html"))
    assert reported.returncode == 0, reported.stderr
    page = (tmp_path / "page.html").read_text()
    assert '<section id="triage">' in page and "the test side adds a second BOS" in page
    assert page.index('id="triage"') < page.index('id="overview"')


@pytest.mark.slow
def test_older_dumps_still_compare_with_not_recorded(tmp_path):
    planted_pair(CLEAN, tmp_path)
    dumps = [next((tmp_path / "dump" / s).rglob(store.MANIFEST_NAME)).parent for s in ("golden", "test")]
    for folder in dumps:  # as an older logitsdump (or a real modeltest with a manifest) left them
        (folder / store.PROVENANCE_NAME).unlink()
        records = [store.CaseManifest.from_dict({**r.to_dict(), "inputs": {}}) for r in store.read_manifest(folder)]
        store.rewrite_manifest(folder, records)
    compared = run_cli("compare", "-gp", str(dumps[0]), "-mp", str(dumps[1]), "-o", str(tmp_path / "cmp"))
    assert compared.returncode == 0, compared.stderr
    assert "none found (17 cases and 0 settings compared)" in compared.stdout
    assert "not recorded (golden: the run's settings (provenance.json" in compared.stdout
    (dumps[1] / store.PROVENANCE_NAME).write_text("{broken", encoding="utf-8")
    compared = run_cli("compare", "-gp", str(dumps[0]), "-mp", str(dumps[1]), "-o", str(tmp_path / "cmp2"))
    assert compared.returncode == 0 and "not valid JSON" in compared.stderr + compared.stdout
    broken = run_cli("preflight", "-gp", str(dumps[0]), "-mp", str(dumps[1]))
    assert broken.returncode == 1 and broken.stderr.count("\n") == 1 and "not valid JSON" in broken.stderr


# ---- the repeat and batch probe ----------------------------------------------------------------


@pytest.mark.slow
def test_the_batch_probe_measures_bf16s_batch_effect_and_none_on_fp32(tmp_path):
    from logitsdump.triage.probe import BATCH_VARIANT, NONDETERMINISTIC
    from logitsdump.triage.rerun import Rerunner

    reports = {}
    for dtype in ("bf16", "fp32"):
        rerunner = Rerunner.from_files(str(examples.model_config(dtype)), str(examples.task_config("gsm8k")), "cpu")
        from logitsdump.triage.probe import run_probe

        reports[dtype] = run_probe(rerunner, [c.key for c in rerunner.cases], repeats=2, batch_size=8, steps=8)
    bf16, fp32 = reports["bf16"].counts(), reports["fp32"].counts()
    # repeats at batch size 1 are bit-identical on both
    assert all(c.repeat_identical and c.repeat_max_abs == 0 for r in reports.values() for c in r.cases)
    assert bf16[NONDETERMINISTIC] == fp32[NONDETERMINISTIC] == 0
    assert bf16[BATCH_VARIANT] >= 3, reports["bf16"].summary()  # bf16 with padding: tokens change with the batch
    assert fp32[BATCH_VARIANT] == 0, reports["fp32"].summary()  # fp32: no token changes
    assert reports["fp32"].largest("batch_max_abs") < 1e-3 < reports["bf16"].largest("batch_max_abs")


# ---- the configuration ablation ----------------------------------------------------------------


def _evaluate(model_yaml: Path, out: Path, batch_size: int, task: str = "gsm8k") -> Path:
    from logitsdump.runner.evaluate import EvalOptions, run_eval

    options = EvalOptions(str(model_yaml), str(examples.task_config(task)), batch_size=batch_size,
                          output_dir=str(out), save_debug=True, device="cpu")
    with contextlib.redirect_stdout(io.StringIO()):
        return run_eval(options).layout.debug_file


def _flips(tmp_path: Path, defect: Defect, batch_size: int, task: str = "gsm8k") -> tuple[Path, Path, Path]:
    from logitsdump.badcase import BcanalyzeOptions, analyze

    model = write_defective_model(examples.TINY_MODEL, tmp_path / defect.kind, defect)
    test_yaml = write_model_yaml(tmp_path / f"{defect.kind}.yaml", model, "tiny_llama", "fp32",
                                 trust_remote_code=defect.needs_code)
    golden = _evaluate(examples.model_config("fp32"), tmp_path / "golden", 1, task)
    test = _evaluate(test_yaml, tmp_path / "test", batch_size, task)
    result = analyze(BcanalyzeOptions(str(golden), str(test), str(tmp_path / "bc")))
    assert result.output_path is not None and result.bad_cases >= 2
    return test_yaml, result.output_path, test


@pytest.mark.slow
def test_the_ablation_names_the_planted_batch_defect(tmp_path):
    test_yaml, bad_cases, test_csv = _flips(tmp_path, Defect("batch-mask"), 4)
    shown = run_cli("ablate", "--model_config_path", str(test_yaml), "--task_config_path",
                    str(examples.task_config("gsm8k")), "-bcr", str(bad_cases), "--test_run", str(test_csv),
                    "--device", "cpu", "-o", str(tmp_path / "triage"))
    assert shown.returncode == 0, shown.stderr
    assert "the flip goes away with: batch size 1 instead of 4" in shown.stdout
    report = json.loads(next((tmp_path / "triage").glob("ablation_*.json")).read_text())
    assert report["culprits"] == ["batch-size-1"] and report["reproduced"] >= 2
    skipped = {row["name"]: row["skipped"] for row in report["rows"]}
    assert skipped["eager"] == "the HF backend has no such feature" and skipped["single-process"]

    probed = run_cli("probe", "--model_config_path", str(test_yaml), "--task_config_path",
                     str(examples.task_config("gsm8k")), "-bcr", str(bad_cases), "--test_run", str(test_csv),
                     "--repeats", "2", "--device", "cpu", "-o", str(tmp_path / "triage"))
    assert probed.returncode == 0, probed.stderr
    assert "batch-variant" in probed.stdout and "at batch size 4 vs 1" in probed.stdout
    files = sorted(str(p) for p in (tmp_path / "triage").glob("*.json"))
    golden_dump, test_dump = _dump_both(tmp_path, test_yaml, bad_cases)
    assert run_cli("compare", "-gp", str(golden_dump), "-mp", str(test_dump), "-o", str(tmp_path / "c")).returncode == 0
    reported = run_cli("report", str(tmp_path / "c"), "-o", str(tmp_path / "p.html"), "--triage", *files)
    assert reported.returncode == 0, reported.stderr
    assert "ablation: the flip goes away with: batch size 1 instead of 4" in reported.stdout
    assert "2 nondeterminism  " in reported.stdout and "batch-variant" in reported.stdout
    page = (tmp_path / "p.html").read_text()
    assert "the flip goes away with: batch size 1 instead of 4" in page and "max |Δlogit| batch 4 vs 1" in page
    bad = run_cli("report", str(tmp_path / "c"), "--triage", str(bad_cases))
    assert bad.returncode == 1 and "not valid JSON" in bad.stderr


def _dump_both(tmp_path: Path, test_yaml: Path, bad_cases: Path) -> tuple[Path, Path]:
    folders = []
    for name, yaml in (("golden", examples.model_config("fp32")), ("test", test_yaml)):
        runner = (f"logitsdump eval --model_config_path {yaml} --task_config_path {examples.task_config('gsm8k')} "
                  f"--batch_size 1 --output_dir {tmp_path / 'dumps' / name} --device cpu")
        done = run_cli("dump", "-bcr", str(bad_cases), "-tr", "2", "-e", runner)
        assert done.returncode == 0, done.stderr
        folders.append(next((tmp_path / "dumps" / name).rglob(store.MANIFEST_NAME)).parent)
    return folders[0], folders[1]


@pytest.mark.slow
def test_the_ablation_does_not_blame_the_configuration_for_a_weight_defect(tmp_path):
    from logitsdump.triage.ablation import RecordedSetup, run_ablation
    from logitsdump.triage.rerun import read_flipped

    test_yaml, bad_cases, _ = _flips(tmp_path, Defect("zero-head", layer=0, head=0), 4, "mmlu_zero_shot")
    report = run_ablation(str(test_yaml), str(examples.task_config("mmlu_zero_shot")), read_flipped(bad_cases),
                          RecordedSetup(batch_size=4), device="cpu")
    assert report.reproduced >= 2 and report.culprits() == []
    assert "not configuration-triggered" in report.summary()


# ---- sampling through the model YAML ------------------------------------------------------------


@pytest.mark.slow
def test_the_generation_key_samples_reproducibly(tmp_path):
    from logitsdump.runner.backends.huggingface import HFBackend
    from logitsdump.runner.config import load_model_config
    from logitsdump.runner.device import choose_device

    def backend(extra: str) -> HFBackend:
        path = tmp_path / f"m{abs(hash(extra))}.yaml"
        path.write_text(f"model_name: t\nmodel_path: {examples.TINY_MODEL}\ndata_type: fp32\n{extra}", encoding="utf-8")
        return HFBackend(load_model_config(path), choose_device("cpu"))

    prompt = [[1, 40, 50, 60]]
    greedy = backend("").greedy(prompt, 12)[0].output_ids
    sampled = backend("generation: {do_sample: true, temperature: 1.5, top_k: 0, seed: 3}\n")
    first, again = sampled.greedy(prompt, 12)[0].output_ids, backend(
        "generation: {do_sample: true, temperature: 1.5, top_k: 0, seed: 3}\n").greedy(prompt, 12)[0].output_ids
    assert first == again != greedy  # seeded: the same draw each load; not the argmax
    assert sampled.provenance().details["generation"]["do_sample"] is True
    penalised = backend("generation: {repetition_penalty: 5.0}\n").greedy(prompt, 12)[0].output_ids
    assert len(set(penalised)) > len(set(greedy))  # a strong penalty repeats fewer tokens


def test_a_bad_generation_key_is_one_line(tmp_path):
    from logitsdump.errors import ConfigError
    from logitsdump.runner.config import load_model_config

    path = tmp_path / "m.yaml"
    for text, words in (("generation: {temprature: 1}", "'generation.temprature' is not a known key"),
                        ("generation: {top_p: 0}", "'generation.top_p' must be in (0, 1]"),
                        ("generation: {do_sample: 1}", "'generation.do_sample' must be bool")):
        path.write_text(f"model_name: t\nmodel_path: {examples.TINY_MODEL}\ndata_type: fp32\n{text}\n",
                        encoding="utf-8")
        with pytest.raises(ConfigError, match=r"generation\.") as caught:
            load_model_config(path)
        assert words in str(caught.value) and "\n" not in str(caught.value)
