"""badcase.py: result CSVs, bcanalyze, and bad-case keys -> dump request."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logitsdump.badcase import (
    RESULT_PREFIX,
    BcanalyzeOptions,
    analyze,
    bcanalyze,
    normalise_passed,
    parse_keys,
    read_bad_case_request,
    read_keys,
    read_result_csv,
)
from logitsdump.errors import DataError, UserError

from helpers import BCANALYZE_EXPECTED, GOLDEN_CSV, RESULT_HEADER, TEST_CSV


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def keys(*texts: str) -> list[tuple[int, str]]:
    return [(i + 2, t) for i, t in enumerate(texts)]


# ---- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("True", "true"),
        ("false", "false"),
        ("Correct", "true"),
        ("WRONG", "false"),
        ("1", "true"),
        ("0", "false"),
        (" true ", "true"),
        ("", ""),
        ("Maybe", "maybe"),
    ],
)
def test_normalise_passed(raw: str, expected: str) -> None:
    assert normalise_passed(raw) == expected


def test_read_result_csv_renames_pass(tmp_path: Path) -> None:
    table = read_result_csv(write(tmp_path / "a.csv", GOLDEN_CSV))
    assert "passed" in table.columns and "pass" not in table.columns
    assert [r.cells["passed"] for r in table.rows] == ["false", "true", "true"]
    assert table.rows[0].line == 2


def test_read_result_csv_pass_k_file(tmp_path: Path) -> None:
    table = read_result_csv(write(tmp_path / "x_bad_case_debug_info.csv", "key,passed\nHumanEval/3,True\n"))
    assert table.rows[0].cells == {"key": "HumanEval/3", "passed": "true"}


@pytest.mark.parametrize(
    ("text", "message"),
    [("queries,pass\nq,True\n", "no 'key' column"), ("key,queries\n1,q\n", "no 'passed' column")],
)
def test_read_result_csv_missing_columns(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "a.csv", text)
    with pytest.raises(DataError, match=message) as info:
        read_result_csv(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_result_csv_long_field(tmp_path: Path) -> None:
    long_query = "x" * 300_000
    table = read_result_csv(write(tmp_path / "a.csv", f"key,queries,pass\n1,{long_query},True\n"))
    assert table.rows[0].cells["queries"] == long_query


# ---- bcanalyze ----------------------------------------------------------------------------------


def test_bcanalyze_reproduces_msit_example(tmp_path: Path) -> None:
    out = bcanalyze(write(tmp_path / "g.csv", GOLDEN_CSV), write(tmp_path / "t.csv", TEST_CSV), tmp_path / "out")
    assert out is not None and out.name.startswith(RESULT_PREFIX) and out.suffix == ".csv"
    assert out.read_bytes() == BCANALYZE_EXPECTED.encode()


def test_empty_unrelated_cell_keeps_bad_case(tmp_path: Path) -> None:
    golden = write(tmp_path / "g.csv", RESULT_HEADER + "7,q,[1],[2],,,True\n")
    test = write(tmp_path / "t.csv", RESULT_HEADER + "7,q,[1],[2],,,False\n")
    out = bcanalyze(golden, test, tmp_path)
    assert out is not None
    assert out.read_text().splitlines()[1] == "7,q,[1],[1],[2],[2],true,false"


def test_never_overwrites(tmp_path: Path) -> None:
    golden, test = write(tmp_path / "g.csv", GOLDEN_CSV), write(tmp_path / "t.csv", TEST_CSV)
    paths = {bcanalyze(golden, test, tmp_path / "o") for _ in range(3)}
    assert len(paths) == 3
    assert all(p is not None and p.read_bytes() == BCANALYZE_EXPECTED.encode() for p in paths)


def test_no_difference_writes_nothing(tmp_path: Path) -> None:
    golden = write(tmp_path / "g.csv", GOLDEN_CSV)
    assert bcanalyze(golden, golden, tmp_path / "o") is None
    assert not (tmp_path / "o").exists()


def test_missing_and_duplicated_keys_are_warned(tmp_path: Path) -> None:
    golden = write(tmp_path / "g.csv", "key,pass\n1,True\n2,True\n3,True\n3,True\n")
    test = write(tmp_path / "t.csv", "key,pass\n1,False\n9,True\n")
    result = analyze(BcanalyzeOptions(str(golden), str(test), str(tmp_path / "o")))
    text = " | ".join(result.warnings)
    assert "2 golden case(s) not found" in text and "keys 2, 3" in text
    assert "1 test case(s) not found" in text and "keys 9" in text
    assert "duplicated key(s)" in text
    assert result.bad_cases == 1 and result.output_path is not None
    assert result.output_path.read_text() == "key,passed_golden,passed_test\n1,true,false\n"


def test_join_on_queries_when_golden_has_them(tmp_path: Path) -> None:
    golden = write(tmp_path / "g.csv", "key,queries,pass\n1,a,True\n")
    test = write(tmp_path / "t.csv", "key,queries,pass\n1,b,False\n")
    assert bcanalyze(golden, test, tmp_path / "o") is None  # same key, other query: not the same case


def test_formula_cells_are_neutralised(tmp_path: Path) -> None:
    golden = write(tmp_path / "g.csv", 'key,queries,pass\n1,"=HYPERLINK(""x"")",True\n')
    test = write(tmp_path / "t.csv", 'key,queries,pass\n1,"=HYPERLINK(""x"")",False\n')
    out = bcanalyze(golden, test, tmp_path / "o")
    assert out is not None and "'=HYPERLINK" in out.read_text()


@pytest.mark.parametrize("name", ["g.txt", "g.CSV.bak"])
def test_bcanalyze_needs_csv_suffix(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, GOLDEN_CSV)
    with pytest.raises(DataError, match=r"not a \.csv file"):
        bcanalyze(path, write(tmp_path / "t.csv", TEST_CSV), tmp_path)


# ---- keys -> request ----------------------------------------------------------------------------


def test_int_keys_sorted_unique() -> None:
    parsed = parse_keys(keys("10", "2", "5", "1", "2"))
    assert parsed.indices == (1, 2, 5, 10) and parsed.duplicates == ("2",)


def test_humaneval_keys() -> None:
    assert parse_keys(keys("HumanEval/17", "HumanEval/3")).indices == (3, 17)


def test_humanevalx_five_lists() -> None:
    parsed = parse_keys(keys("Python/7", "CPP/1", "Python/3"))
    assert parsed.indices == ((1,), (), (), (), (3, 7))


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (("-1",), "negative key '-1' on line 2"),
        (("foo/1",), "key 'foo/1' on line 2 is not a row index"),
        (("abstract_algebra_3",), "subject_N from the old harness"),
        (("1", "HumanEval/2"), "mixes int and string keys"),
        (("HumanEval/1", "CPP/2"), "mixes HumanEval and HumanEval-X keys"),
        (("HumanEval/x",), "not a row index"),
        ((), "nothing to dump"),
    ],
)
def test_bad_keys(texts: tuple[str, ...], message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_keys(keys(*texts))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.txt", "key\n1\n", "not a .csv file"),
        ("a.csv", "", "empty \\(0 bytes\\)"),
        ("a.csv", "key,passed\n", "header but no bad cases"),
        ("a.csv", "id,passed\n1,true\n", "no 'key' column"),
        ("a.csv", "key,passed\n1,true\n,false\n", "empty key cell on line 3"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_keys(write(tmp_path / name, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_keys(tmp_path / "nope.csv")


def test_request_from_bcanalyze_output(tmp_path: Path) -> None:
    out = bcanalyze(write(tmp_path / "g.csv", GOLDEN_CSV), write(tmp_path / "t.csv", TEST_CSV), tmp_path)
    assert out is not None
    request = read_bad_case_request(out, 4, resume=True)
    assert request.list_literal() == "[1, 2]"
    assert request.token_max_length == 4 and request.resume and not request.logits_fp32


def test_100k_rows(tmp_path: Path) -> None:
    rows = "".join(f"{i},q{i},[1],[2],true,false\n" for i in range(100_000, 0, -1))
    path = write(
        tmp_path / "big.csv",
        "key,queries,input_token_ids,output_token_ids,passed_golden,passed_test\n" + rows,
    )
    request = read_bad_case_request(path)
    assert len(request.indices) == 100_000 and request.indices[:3] == (1, 2, 3)


@given(st.lists(st.text(max_size=30), max_size=20))
def test_key_parser_raises_only_user_errors(texts: list[str]) -> None:
    try:
        parsed = parse_keys(keys(*texts))
    except UserError as err:
        assert str(err)
        return
    flat = (
        parsed.indices
        if not parsed.indices or isinstance(parsed.indices[0], int)
        else sum(parsed.indices, ())
    )
    assert len(flat) <= len(texts)
    assert all(isinstance(i, int) and i >= 0 for i in flat)


# ---- McNemar: the pass/fail flips between the two runs ------------------------------------------


def _results(path: Path, passed: list[str]) -> Path:
    rows = "".join(f"{i},q{i},[1],[2],a,a,{p}\n" for i, p in enumerate(passed))
    return write(path, RESULT_HEADER + rows)


def test_flips_are_counted_each_way_with_the_exact_p_value(tmp_path: Path) -> None:
    # 20 cases: 6 pass on both, 7 fail on both, 6 pass->fail, 1 fail->pass
    golden = ["True"] * 6 + ["False"] * 7 + ["True"] * 6 + ["False"]
    test = ["True"] * 6 + ["False"] * 7 + ["False"] * 6 + ["True"]
    result = analyze(BcanalyzeOptions(str(_results(tmp_path / "g.csv", golden)),
                                      str(_results(tmp_path / "t.csv", test)), str(tmp_path / "o")))
    flips = result.flips
    assert (flips.golden_passed, flips.test_passed, flips.judged) == (12, 7, 20)
    assert (flips.pass_to_fail, flips.fail_to_pass) == (6, 1) and result.bad_cases == 7
    assert flips.p_value == 2 * (1 + 7) / 2**7  # Bin(7, 1/2): P[X <= 1] = 8/128, two-sided
    assert flips.describe() == ("golden passed 12/20, test 7/20; flips pass->fail 6, fail->pass 1, "
                                "McNemar exact p = 0.125")


def test_flips_ignore_unjudged_cells_and_no_difference_is_p_1(tmp_path: Path) -> None:
    golden = _results(tmp_path / "g.csv", ["True", "False", "", "error"])
    test = _results(tmp_path / "t.csv", ["False", "False", "True", "True"])
    flips = analyze(BcanalyzeOptions(str(golden), str(test), str(tmp_path / "o"))).flips
    assert (flips.judged, flips.pass_to_fail, flips.fail_to_pass) == (2, 1, 0)  # '' and 'error' are neither
    same = analyze(BcanalyzeOptions(str(golden), str(golden), str(tmp_path / "o2")))
    assert same.output_path is None and same.flips.p_value == 1.0 and same.flips.pass_to_fail == 0
