"""Logits file names, writing and the manifest."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from logitsdump import store
from logitsdump.errors import FileFormatError, UserError


def test_names_follow_modeltest():
    assert store.logits_file_name("dev.jsonl", 7, 0) == "logits_dev.jsonl_7_0.pth"
    assert store.logits_file_name("cpp/data/data_cpp_data_humaneval.jsonl", 12, 3) == (
        "logits_cpp_data_data_cpp_data_humaneval.jsonl_12_3.pth"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("logits_dev.jsonl_1352_0.pth", (1352, 0)),
        ("logits_college_biology_4_2.pth", (4, 2)),
        ("logits_cpp_data_data_cpp_data_humaneval.jsonl_12_3.pth", ("cpp/12", 3)),
        ("logits_python_data_data_python_data_humaneval.jsonl_0_9.pth", ("python/0", 9)),
    ],
)
def test_parse_names(name, expected):
    assert store.parse_logits_file_name(name) == expected


def test_case_subject() -> None:
    assert store.parse_logits_subject("logits_dev.jsonl_7_0.pth") == "dev.jsonl"
    assert store.parse_logits_subject("logits_mmlu_high_school_physics_12_3.pth") == "mmlu_high_school_physics"
    assert store.parse_logits_subject("logits_3_0.pth") == ""


def test_round_trip_of_generated_names():
    for subject in ("dev.jsonl", "GSM8K.jsonl", "high_school_physics", "human-eval.jsonl"):
        name = store.logits_file_name(subject, 41, 5)
        assert store.parse_logits_file_name(name) == (41, 5)


@pytest.mark.parametrize("subject", ["../../etc", "/abs/path", "a\\b", "..", "x\x00y"])
def test_subjects_cannot_escape(subject):
    name = store.logits_file_name(subject, 1, 0)
    assert "/" not in name and "\\" not in name and "\x00" not in name and name != ".."


@pytest.mark.parametrize("name", ["logits_a_b.pth", "logits_dev_x_1.pth", "foo.pth", "logits_cpp_1.pth"])
def test_bad_names(name):
    with pytest.raises(FileFormatError, match="parse_error"):
        store.parse_logits_file_name(name)


#: Pieces of a logits file name: real subjects and languages, huge numbers, odd text.
name_part = st.one_of(
    st.sampled_from(["logits", "dev.jsonl", "cpp", "go", "java", "js", "python", "", "..", "٣", "=x"]),
    st.integers(0, 10**30).map(str),
    st.text(max_size=6),
)
names = st.one_of(
    st.text(max_size=80),
    st.builds(lambda parts, suffix: "_".join(parts) + suffix,
              st.lists(name_part, max_size=8), st.sampled_from([".pth", ".safetensors", "", ".pth.tmp"])),
)


@settings(max_examples=200)
@given(names)
def test_name_parser_raises_only_user_errors(name):
    try:
        key, token = store.parse_logits_file_name(name)
    except UserError:  # anything else escaping fails the test
        return
    assert isinstance(token, int) and token >= 0 and isinstance(key, (int, str))


def test_name_parser_with_more_digits_than_python_converts() -> None:
    for name in ("logits_a_1_" + "9" * 5000 + ".pth", "logits_cpp_" + "9" * 5000 + "_0.pth"):
        with contextlib.suppress(UserError):
            store.parse_logits_file_name(name)


def test_save_logits_is_one_cpu_tensor(tmp_path):
    big = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)
    path = tmp_path / "logits_dev.jsonl_0_0.pth"
    store.save_logits(path, big[1])
    loaded = torch.load(path, weights_only=True)
    assert loaded.shape == (1, 4) and loaded.dtype == torch.bfloat16
    assert loaded.untyped_storage().nbytes() == 4 * 2  # only its own storage
    assert torch.equal(loaded[0], big[1])
    assert not list(tmp_path.glob(".*.tmp"))
    assert (path.stat().st_mode & 0o002) == 0


def make_record(index: int, files: tuple[str, ...]) -> store.CaseManifest:
    return store.CaseManifest(
        task="boolq", subject="dev.jsonl", key=str(index), index=index, files=files,
        input_token_ids=(1, 2), output_token_ids=(3,), output_tokens=("a",), output_text="a",
        query="q", prompt_sha256="0" * 64, model_name="m", model_path="/m", dtype="fp32",
        logits_dtype="float32", vocab_size=4, device="cpu",
    )


def test_manifest_round_trip_and_cut_line(tmp_path):
    store.append_manifest(tmp_path, make_record(1, ("f1",)))
    store.append_manifest(tmp_path, make_record(2, ("f2",)))
    with open(tmp_path / store.MANIFEST_NAME, "a") as handle:
        handle.write('{"task": "boolq", "subj')  # a crash mid-line
    records = store.read_manifest(tmp_path)
    assert [r.index for r in records] == [1, 2]
    assert records[0] == make_record(1, ("f1",))
    store.rewrite_manifest(tmp_path, records[::-1])
    assert [r.index for r in store.read_manifest(tmp_path)] == [2, 1]


def test_vocab_round_trip(tmp_path):
    store.write_vocab(tmp_path, ["<pad>", "a", "b"])
    assert store.read_vocab(tmp_path) == ["<pad>", "a", "b"]
    assert store.read_vocab(tmp_path / "missing") is None
