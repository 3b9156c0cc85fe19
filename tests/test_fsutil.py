"""Atomic writes, safe names, CSV neutralisation."""

from __future__ import annotations

import pytest

from logitsdump import csvsafe, fsutil
from logitsdump.errors import UserError


def test_atomic_open_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), fsutil.atomic_open(target) as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_mode(tmp_path):
    fsutil.atomic_write_text(tmp_path / "a.txt", "x\n")
    assert (tmp_path / "a.txt").read_text() == "x\n"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("name", "safe"),
    [("dev.jsonl", "dev.jsonl"), ("../x", ".._x"), ("..", "_"), ("", "_"), ("a/b", "a_b"), ("ok-1_2", "ok-1_2")],
)
def test_safe_component(name, safe):
    assert fsutil.safe_component(name) == safe


@pytest.mark.parametrize(
    ("value", "expected"),
    [("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"), ("+1+2", "'+1+2"), ("@SUM(A1)", "'@SUM(A1)"),
     ("-0.5", "-0.5"), ("-x", "'-x"), ("plain", "plain"), (3, 3), ("1;2_3_0.pth", "1;2_3_0.pth")],
)
def test_neutralise(value, expected):
    assert csvsafe.neutralise(value) == expected


def test_csv_text_has_lf_and_neutralised_cells():
    text = csvsafe.rows_to_csv_text(["a", "b"], [["=1+1", "x,y"], {"a": 1, "b": "-cmd"}])
    assert text == "a,b\n'=1+1,\"x,y\"\n1,'-cmd\n"


def test_ensure_writable_dir(tmp_path):
    assert fsutil.ensure_writable_dir(tmp_path / "new").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="not a folder"):
        fsutil.ensure_writable_dir(tmp_path / "file")


def test_control_characters_survive_a_round_trip():
    import csv
    import io

    cells = ["a\rb", "c\nd", 'q"uote', "x,y", "\x1c\x02", "", " sp "]
    text = csvsafe.rows_to_csv_text([f"c{i}" for i in range(len(cells))], [cells])
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[1] == cells
