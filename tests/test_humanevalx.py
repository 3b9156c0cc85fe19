"""HumanEval-X: cases, stopping and cleaning, real toolchains, evaluation and the five-list dump."""

from __future__ import annotations

import csv
import shutil
from dataclasses import replace

import pytest

from logitsdump import store
from logitsdump.demo import examples
from logitsdump.errors import ConfigError, DataError
from logitsdump.runner.config import load_task_config, resolve_dataset_root
from logitsdump.runner.evaluate import run_eval
from logitsdump.runner.tasks import get_task
from logitsdump.runner.tasks.base import Generation, pass_label
from logitsdump.runner.tasks.humanevalx import (
    LANGUAGES,
    TOOLCHAINS,
    build_query,
    clean_completion,
    completion_finished,
    missing_tools,
)

from helpers import eval_options

PREFIX = {"cpp": "CPP", "go": "Go", "java": "Java", "js": "JavaScript", "python": "Python"}


def needs(lang: str):
    """Skip a test when `lang`'s toolchain is absent (CI installs it: .ci/install-toolchains.sh)."""
    absent = [t for t in TOOLCHAINS[lang] if shutil.which(t) is None]
    return pytest.mark.skipif(bool(absent), reason=f"{', '.join(absent)} not installed (run .ci/install-toolchains.sh)")


def load():
    config = load_task_config(examples.task_config("humanevalx"))
    return config, get_task("humanevalx").load_cases(config, resolve_dataset_root(config))


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_cases_keys_indices_and_queries():
    config, cases = load()
    assert [c.key for c in cases] == [f"{PREFIX[lang]}/{i}" for lang in LANGUAGES for i in range(3)]
    assert [c.index for c in cases] == [i for _ in LANGUAGES for i in range(3)]  # per language
    assert [c.subject for c in cases[::3]] == config.subjects
    cpp = cases[0]
    assert cpp.query.startswith("// language: C++\n/*\nAdd two numbers")
    assert cpp.query.endswith("int add(int x,int y){\n")
    assert cases[-1].query.startswith("# language: Python\ndef is_even")
    assert build_query("def f():\n    pass\n\n\n", "python") == "# language: Python\ndef f():\n    pass\n"


def test_selector_picks_languages_in_modeltest_order():
    config, _ = load()
    task = get_task("humanevalx")
    root = resolve_dataset_root(config)
    cases = task.load_cases(replace(config, humaneval_x_datasets_selector=("python", "cpp")), root)
    assert [c.key.split("/")[0] for c in cases] == ["CPP"] * 3 + ["Python"] * 3
    with pytest.raises(ConfigError, match="humaneval_x_datasets_selector has 'rust'"):
        task.load_cases(replace(config, humaneval_x_datasets_selector=("rust",)), resolve_dataset_root(config))


def test_task_id_prefix_must_match_language(tmp_path):
    (tmp_path / "cpp" / "data").mkdir(parents=True)
    (tmp_path / "cpp" / "data" / "data_cpp_data_humaneval.jsonl").write_text(
        '{"task_id": "Go/0", "prompt": "p", "test": "t"}\n'
    )
    config, _ = load()
    with pytest.raises(DataError, match=r"line 1: task_id must look like 'CPP/N', found 'Go/0'"):
        get_task("humanevalx").load_cases(replace(config, humaneval_x_datasets_selector=("cpp",)), tmp_path)


@pytest.mark.parametrize(
    ("lang", "text", "done"),
    [
        ("cpp", "    return x;\n", False),
        ("cpp", "    return x;\n}", True),
        ("java", "    if (a) {\n        return 1;\n    }\n", False),
        ("java", "    if (a) {\n        return 1;\n    }\n    return 0;\n    }", True),
        ("python", "    return x\n", False),
        ("python", "    return x\nprint(1)", True),
        ("python", "    return x\n\n\n# test", True),
    ],
)
def test_completion_stopping(lang, text, done):
    assert completion_finished(text, lang) is done


@pytest.mark.parametrize(
    ("lang", "code", "cleaned"),
    [
        ("cpp", "    return x;\n}\nint main(){}\n", "    return x;\n}\nint main(){}"),
        ("js", "  return x;\n}\nfoo", "  return x;\n}"),
        ("go", "    return x\n}\n// trailing\nfunc main() {\n}", "    return x\n}"),
        ("java", "        return 1;\n    }\n", "        return 1;\n    }\n}"),
        ("java", "    }\n    public static void main(String[] a) {}\n}", "    }\n    }"),
        ("python", "    return x\n\ndef other():\n    pass", "    return x\n"),
        ("python", "    return x\nprint(1)", "    return x"),
    ],
)
def test_cleaning(lang, code, cleaned):
    assert clean_completion(code, lang) == cleaned


@pytest.mark.parametrize("lang", [pytest.param(lang, marks=needs(lang)) for lang in LANGUAGES])
def test_canonical_solutions_pass_and_garbage_fails(lang):
    task = get_task("humanevalx")
    _, cases = load()
    for case in (c for c in cases if c.data["lang"] == lang):
        good = task.judge(case, Generation((), (), case.reference), None)
        assert good.passed is True, (case.key, good)
        assert pass_label(task, good.passed) == "True"
        bad = task.judge(case, Generation((), (), "  oops(;\n}"), None)
        assert bad.passed is False, case.key


def test_python_completion_that_exits_early_fails():
    task = get_task("humanevalx")
    _, cases = load()
    python = next(c for c in cases if c.key == "Python/0")
    assert task.judge(python, Generation((), (), "    import sys; sys.exit(0)\n"), None).passed is False


def test_missing_toolchain_is_not_judged_and_reported_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no g++, go, java or node
    assert missing_tools("cpp") == ["g++"] and missing_tools("python") == []
    task = get_task("humanevalx")
    _, cases = load()
    with caplog.at_level("WARNING"):
        verdicts = {c.key: task.judge(c, Generation((), (), c.reference), None) for c in cases}
    assert {k for k, v in verdicts.items() if v.passed is None} == {
        c.key for c in cases if not c.key.startswith("Python/")
    }
    assert all(verdicts[f"Python/{i}"].passed is True for i in range(3))
    assert pass_label(task, verdicts["CPP/0"].passed) == "NotJudged"
    warnings = [r.getMessage() for r in caplog.records if "not judged" in r.getMessage()]
    assert len(warnings) == 4 and any("g++ not found" in w for w in warnings)


def _options(tmp_path):
    return eval_options(tmp_path, "humanevalx", save_debug=True)


@pytest.mark.slow
def test_evaluation_writes_one_bad_case_row_per_case(tmp_path):
    result = run_eval(_options(tmp_path))
    bad = read_csv(result.layout.bad_case_file)
    debug = read_csv(result.layout.debug_file)
    assert [r["key"] for r in bad] == [f"{PREFIX[lang]}/{i}" for lang in LANGUAGES for i in range(3)]
    assert [r["passed"] for r in bad] == [r["pass"] for r in debug] == [o.pass_label for o in result.outcomes]
    expected = {"True", "False"} | ({"NotJudged"} if any(missing_tools(lang) for lang in LANGUAGES) else set())
    assert {r["passed"] for r in bad} <= expected
    for outcome in result.outcomes:
        assert 1 <= len(outcome.output_token_ids) <= 32
    scores = read_csv(result.layout.result_file)
    assert [r["subject"] for r in scores] == [*load()[0].subjects, "total"]


@pytest.mark.slow
def test_five_list_dump_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("BAD_CASE_LOGITS_DUMP", "True")
    monkeypatch.setenv("LOGITS_DUMP_TOKEN_MAX_LENGTH", "3")
    monkeypatch.setenv("BAD_CASE_LIST", "[[1], [], [2, 0, 9], [], [1]]")
    result = run_eval(_options(tmp_path))
    assert [o.key for o in result.outcomes] == ["CPP/1", "Java/0", "Java/2", "Python/1"]
    folder = result.layout.logits_dir
    names = sorted(p.name for p in folder.glob("*.pth"))
    assert names and all(n.startswith("logits_") for n in names)
    parsed = {store.parse_logits_file_name(n)[0] for n in names}
    assert parsed == {"cpp/1", "java/0", "java/2", "python/1"}
    assert "logits_cpp_data_data_cpp_data_humaneval.jsonl_1_0.pth" in names
    records = store.read_manifest(folder)
    assert sorted((r.key, r.index) for r in records) == [("CPP/1", 1), ("Java/0", 0), ("Java/2", 2), ("Python/1", 1)]
    for record in records:
        assert len(record.files) == min(3, len(record.output_token_ids))
    bad = read_csv(result.layout.bad_case_file)
    assert [r["key"] for r in bad] == ["CPP/1", "Java/0", "Java/2", "Python/1"]
