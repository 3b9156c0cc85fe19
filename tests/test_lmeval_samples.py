"""lm-eval samples files: reading, bcanalyze's join and refusals, and dump --from-samples' checks (no model)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from logitsdump.cli import main
from logitsdump.errors import DataError
from logitsdump.lmeval.badcases import COLUMNS
from logitsdump.lmeval.replay import bad_docs, cut_at_stops, encode_pair
from logitsdump.lmeval.samples import GENERATE, LOGLIKELIHOOD, ROLLING, is_samples_file, read_samples, task_of


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def mc_line(doc_id: int, acc: float, *, acc_norm: float | None = None, question: str | None = None,
            prompt: str | None = None, filter_name: str = "none") -> dict:
    """One sample as lm_eval 0.4 logs a multiple-choice doc (evaluator.evaluate + save_results_samples)."""
    doc = {"question": question or f"What is {doc_id} + 1?", "choices": ["1", "2"], "label": 0}
    context = prompt if prompt is not None else f"Question: {doc['question']}\nAnswer:"
    return {
        "doc_id": doc_id, "doc": doc, "target": "0",
        "arguments": {f"gen_args_{i}": {"arg_0": context, "arg_1": f" {c}"} for i, c in enumerate(doc["choices"])},
        "resps": [[["-3.5", "False"]], [["-4.25", "True"]]],
        "filtered_resps": [["-3.5", "False"], ["-4.25", "True"]],
        "filter": filter_name, "metrics": ["acc", "acc_norm"],
        "doc_hash": _sha(json.dumps(doc, indent=2, ensure_ascii=False)),
        "prompt_hash": _sha(context), "target_hash": _sha("0"),
        "acc": acc, "acc_norm": acc if acc_norm is None else acc_norm,
    }


def gen_line(doc_id: int, exact: float, response: str = "3") -> dict:
    doc = {"question": f"q{doc_id}", "answer": "3"}
    context = f"Q: q{doc_id}\nA:"
    return {
        "doc_id": doc_id, "doc": doc, "target": "3",
        "arguments": {"gen_args_0": {"arg_0": context, "arg_1": {"until": ["\n"], "max_gen_toks": 5,
                                                                 "do_sample": False}}},
        "resps": [[response]], "filtered_resps": [response], "filter": "none", "metrics": ["exact_match"],
        "doc_hash": _sha(json.dumps(doc, indent=2)), "prompt_hash": _sha(context), "target_hash": _sha("3"),
        "exact_match": exact,
    }


def write_samples(folder: Path, run: str, lines: list, task: str = "toy_mc") -> Path:
    """A samples file named as lm-eval names it; `lines` are dicts or raw text."""
    path = folder / run / f"samples_{task}_2025-01-17T13-49-59.123456.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines), encoding="utf-8")
    return path


def run_bcanalyze(golden: Path, test: Path, out: Path, *extra: str) -> int:
    return main(["bcanalyze", "-gp", str(golden), "-mp", str(test), "-o", str(out), *extra])


def result_rows(out: Path) -> list[dict[str, str]]:
    (path,) = out.glob("msit_bad_case_result_*.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1
    return err[-1]


# ---- reading ------------------------------------------------------------------------------------


def test_reads_requests_metrics_and_task(tmp_path):
    path = write_samples(tmp_path, "g", [mc_line(0, 1.0), gen_line(1, 0.0)])
    samples = read_samples(path)
    assert samples.task == "toy_mc"
    first, second = samples.samples
    assert [r.kind for r in first.requests] == [LOGLIKELIHOOD, LOGLIKELIHOOD]
    assert [r.continuation for r in first.requests] == [" 1", " 2"]
    assert first.metrics == {"acc": 1.0, "acc_norm": 1.0}
    assert second.requests[0].kind == GENERATE
    assert second.requests[0].until == ("\n",) and second.requests[0].max_gen_toks == 5
    assert first.line == 1 and second.line == 2


def test_recognised_by_content_not_by_name(tmp_path):
    renamed = tmp_path / "golden.csv"
    renamed.write_text(json.dumps(mc_line(0, 1.0)) + "\n", encoding="utf-8")
    csv_file = tmp_path / "samples_x_2025-01-01T00-00-00.1.jsonl"
    csv_file.write_text("key,pass\n1,True\n", encoding="utf-8")
    assert is_samples_file(renamed)
    assert not is_samples_file(csv_file)
    assert task_of(tmp_path / "samples_arc_easy_2025-01-17T13-49-59.123456.jsonl") == "arc_easy"
    assert task_of(renamed) == "golden"


def test_a_first_line_longer_than_the_sniffed_part_is_recognised(tmp_path):
    line = mc_line(0, 1.0, prompt="few-shot example\n" * 8000)  # ~136 KB, as long few-shot prompts are
    path = write_samples(tmp_path, "g", [line])
    assert path.stat().st_size > 100_000
    assert is_samples_file(path)


def test_rolling_requests_are_read(tmp_path):
    line = mc_line(0, 1.0)
    line["arguments"] = {"gen_args_0": {"arg_0": line["arguments"]["gen_args_0"]["arg_0"]}}
    (sample,) = read_samples(write_samples(tmp_path, "g", [line])).samples
    assert sample.requests[0].kind == ROLLING


# ---- bcanalyze ----------------------------------------------------------------------------------


def test_join_lists_the_docs_whose_metric_flips(tmp_path, capsys):
    golden = write_samples(tmp_path, "g", [mc_line(0, 1.0), mc_line(1, 0.0), mc_line(2, 1.0), mc_line(3, 0.0)])
    test = write_samples(tmp_path, "t", [mc_line(0, 1.0), mc_line(1, 1.0), mc_line(2, 0.0), mc_line(3, 0.0)])
    assert run_bcanalyze(golden, test, tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert "2 bad case(s) of 4 compared" in printed
    assert "golden passed 2/4, test 2/4; flips pass->fail 1, fail->pass 1, McNemar exact p = 1" in printed
    rows = result_rows(tmp_path / "out")
    assert [(r["key"], r["passed_golden"], r["passed_test"]) for r in rows] == [("1", "false", "true"),
                                                                              ("2", "true", "false")]
    assert list(rows[0]) == list(COLUMNS)
    assert rows[0]["task"] == "toy_mc" and rows[0]["metric"] == "acc" and rows[0]["filter"] == "none"
    assert rows[0]["queries"] == "Question: What is 1 + 1?\nAnswer:"
    assert rows[0]["doc_hash"] == mc_line(1, 0.0)["doc_hash"]


def test_join_needs_doc_id_and_doc_hash(tmp_path, capsys):
    golden = write_samples(tmp_path, "g", [mc_line(0, 1.0), mc_line(1, 1.0), mc_line(2, 1.0)])
    # doc 1 is another row in the test run (same id, other doc); doc 2 is missing there
    test = write_samples(tmp_path, "t", [mc_line(0, 0.0), mc_line(1, 0.0, question="other")])
    assert run_bcanalyze(golden, test, tmp_path / "out") == 0
    assert [r["key"] for r in result_rows(tmp_path / "out")] == ["0"]
    err = capsys.readouterr().err
    assert "another doc_hash" in err and "doc_id 1" in err
    assert "not found" in err and "doc_id 2" in err


def test_other_prompt_is_refused(tmp_path, capsys):
    golden = write_samples(tmp_path, "g", [mc_line(0, 1.0), mc_line(1, 1.0)])
    test = write_samples(tmp_path, "t", [mc_line(0, 0.0), mc_line(1, 1.0, prompt="Few-shot...\nQuestion: x")])
    assert run_bcanalyze(golden, test, tmp_path / "out") == 1
    line = error_line(capsys)
    assert "prompt_hash differs" in line and "doc_id 1" in line and "not numerics" in line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_metric_choice(tmp_path, capsys):
    golden = write_samples(tmp_path, "g", [mc_line(0, 1.0, acc_norm=1.0), mc_line(1, 1.0, acc_norm=0.0)])
    test = write_samples(tmp_path, "t", [mc_line(0, 1.0, acc_norm=0.0), mc_line(1, 1.0, acc_norm=0.0)])
    assert run_bcanalyze(golden, test, tmp_path / "a") == 0  # acc, the first metric: no flip
    assert "no bad cases" in capsys.readouterr().out
    assert run_bcanalyze(golden, test, tmp_path / "b", "--metric", "acc_norm") == 0
    assert [(r["key"], r["metric"]) for r in result_rows(tmp_path / "b")] == [("0", "acc_norm")]


def test_metric_that_is_not_pass_fail(tmp_path, capsys):
    lines = [mc_line(0, 1.0), mc_line(1, 0.0)]
    lines[1]["acc_norm"] = 0.37
    golden = write_samples(tmp_path, "g", lines)
    assert run_bcanalyze(golden, golden, tmp_path / "o", "--metric", "acc_norm") == 1
    line = error_line(capsys)
    assert "line 2" in line and "0.37" in line and "not pass/fail" in line
    assert run_bcanalyze(golden, golden, tmp_path / "o", "--metric", "f1") == 1
    assert "no metric 'f1'" in error_line(capsys)


def test_filters_are_compared_one_at_a_time(tmp_path):
    golden = write_samples(tmp_path, "g", [mc_line(0, 1.0, filter_name="strict"), mc_line(0, 0.0, filter_name="flex")])
    test = write_samples(tmp_path, "t", [mc_line(0, 1.0, filter_name="strict"), mc_line(0, 1.0, filter_name="flex")])
    assert run_bcanalyze(golden, test, tmp_path / "a") == 0
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").glob("*.csv"))
    assert run_bcanalyze(golden, test, tmp_path / "b", "--filter", "flex") == 0
    assert [(r["key"], r["filter"]) for r in result_rows(tmp_path / "b")] == [("0", "flex")]


def test_unknown_filter(tmp_path, capsys):
    golden = write_samples(tmp_path, "g", [mc_line(0, 1.0)])
    assert run_bcanalyze(golden, golden, tmp_path / "o", "--filter", "flex") == 1
    assert "no samples of filter 'flex'" in error_line(capsys)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("doc_hash"), "no doc_hash field"),
        (lambda d: d.pop("prompt_hash"), "no prompt_hash field"),
        (lambda d: d.pop("acc"), "acc listed in metrics are missing"),
        (lambda d: d.update(doc_id="3"), "doc_id must be an int"),
        (lambda d: d.update(arguments={}), "arguments must be a non-empty object"),
        (lambda d: d.update(arguments={"gen_args_0": {"arg_1": " x"}}), "must hold arg_0"),
    ],
)
def test_missing_or_wrong_fields_name_file_and_line(tmp_path, capsys, mutate, expected):
    bad = mc_line(1, 1.0)
    mutate(bad)
    golden = write_samples(tmp_path, "g", [mc_line(0, 1.0), bad])
    test = write_samples(tmp_path, "t", [mc_line(0, 1.0), mc_line(1, 0.0)])
    assert run_bcanalyze(golden, test, tmp_path / "o") == 1
    line = error_line(capsys)
    assert f"{golden}, line 2" in line and expected in line


def test_malformed_line_names_file_and_line(tmp_path, capsys):
    golden = write_samples(tmp_path, "g", [mc_line(0, 1.0), "", json.dumps(mc_line(1, 1.0))[:50]])
    test = write_samples(tmp_path, "t", [mc_line(0, 1.0)])
    assert run_bcanalyze(golden, test, tmp_path / "o") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1  # one line, no traceback
    assert f"{golden}, line 3: not valid JSON" in err[0]


def test_samples_and_csv_do_not_mix(tmp_path, capsys):
    golden = write_samples(tmp_path, "g", [mc_line(0, 1.0)])
    other = tmp_path / "debug.csv"
    other.write_text("key,pass\n0,True\n", encoding="utf-8")
    assert run_bcanalyze(golden, other, tmp_path / "o") == 1
    assert "the other input is not" in error_line(capsys)


def test_metric_flag_on_csv_inputs_is_a_usage_error(tmp_path, capsys):
    other = tmp_path / "debug.csv"
    other.write_text("key,pass\n0,True\n", encoding="utf-8")
    assert run_bcanalyze(other, other, tmp_path / "o", "--metric", "acc") == 2
    assert "lm-eval samples files only" in error_line(capsys)


# ---- dump --from-samples: what is checked before a model loads -----------------------------------


def _bad_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_bad_docs_are_found_by_doc_id(tmp_path):
    samples = write_samples(tmp_path, "g", [mc_line(3, 1.0), mc_line(0, 1.0), mc_line(5, 0.0)])
    task, docs = bad_docs(samples, _bad_csv(tmp_path, "key,task\n5,toy_mc\n3,toy_mc\n5,toy_mc\n"))
    assert task == "toy_mc"
    assert [d.doc_id for d in docs] == [3, 5]


@pytest.mark.parametrize(
    ("csv_text", "expected"),
    [
        ("key\n7\n", "doc_id 7 is not in"),
        ("key,task\n0,arc_easy\n", "is of task arc_easy"),
        ("key\nHumanEval/1\n", "is not an lm-eval doc_id"),
        ("key,doc_hash\n0,abc\n", "another doc_hash"),
    ],
)
def test_bad_docs_refusals(tmp_path, csv_text, expected):
    samples = write_samples(tmp_path, "g", [mc_line(0, 1.0)])
    with pytest.raises(DataError, match=expected):
        bad_docs(samples, _bad_csv(tmp_path, csv_text))


def test_edited_prompt_and_rolling_requests_are_refused(tmp_path):
    edited = mc_line(0, 1.0)
    edited["arguments"]["gen_args_0"]["arg_0"] = "changed"
    with pytest.raises(DataError, match="file was edited"):
        bad_docs(write_samples(tmp_path, "e", [edited]), _bad_csv(tmp_path, "key\n0\n"))
    rolling = mc_line(0, 1.0)
    rolling["arguments"] = {"gen_args_0": {"arg_0": rolling["arguments"]["gen_args_0"]["arg_0"]}}
    with pytest.raises(DataError, match="loglikelihood_rolling"):
        bad_docs(write_samples(tmp_path, "r", [rolling]), _bad_csv(tmp_path, "key\n0\n"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-bcr", "x.csv"], "give the runner command with -e, or an lm-eval samples file"),
        (["--from-samples", "s.jsonl", "-bcr", "x.csv"], "needs --model_config_path"),
        (["--from-samples", "s.jsonl", "-bcr", "x.csv", "-e", "logitsdump eval", "--model_config_path", "m"],
         "leave out -e"),
        (["-e", "logitsdump eval", "-bcr", "x.csv", "--model_config_path", "m"], "go with --from-samples"),
    ],
)
def test_dump_usage_errors(capsys, argv, expected):
    assert main(["dump", *argv]) == 2
    assert expected in error_line(capsys)


def test_dump_from_samples_checks_before_loading(tmp_path, capsys):
    samples = write_samples(tmp_path, "g", [mc_line(0, 1.0)])
    bad = _bad_csv(tmp_path, "key\n9\n")
    assert main(["dump", "--from-samples", str(samples), "-bcr", str(bad), "--model_config_path",
                 str(tmp_path / "missing.yaml")]) == 1
    assert "doc_id 9 is not in" in error_line(capsys)


# ---- tokenizing as lm-eval ----------------------------------------------------------------------


class CharTokenizer:
    """One id per character, BOS = 1 prepended: enough to check lm-eval's splitting rules."""

    bos_token, bos_token_id, eos_token_id = "<s>", 1, 2

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]


def test_encode_pair_moves_trailing_spaces_to_the_continuation():
    context, continuation = encode_pair(CharTokenizer(), "Answer: ", "B")
    assert context == [1, *map(ord, "Answer:")]
    assert continuation == [ord(" "), ord("B")]


def test_encode_pair_with_empty_context_uses_the_prefix_token():
    assert encode_pair(CharTokenizer(), "", "ab") == ([1], [ord("a"), ord("b")])


def test_encode_pair_without_second_bos_when_the_text_starts_with_it():
    context, _ = encode_pair(CharTokenizer(), "<s>Q", " A")
    assert context[:2] == [ord("<"), ord("s")]


def test_generation_is_cut_at_the_first_stop_string():
    assert cut_at_stops("12\nmore.", ["\n", "."]) == "12"
    assert cut_at_stops("12", ["", "\n"]) == "12"
