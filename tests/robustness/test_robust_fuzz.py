# ruff: noqa: E501  (the coverage table in the docstring)
"""Property-based fuzzing of the parsers that read untrusted text: the bad-case CSV (whole files,
bytes and near-valid text) and the dump's environment protocol.
Nothing but `logitsdump.errors.UserError` may escape.

Already covered elsewhere (arbitrary text into the inner functions):
| case | covered by |
|---|---|
| parse_keys over lists of arbitrary strings | tests/test_badcase.py::test_key_parser_raises_only_user_errors |
| parse_logits_file_name over arbitrary text and name-like parts, huge numbers | tests/test_store.py::test_name_parser_raises_only_user_errors, ::test_name_parser_with_more_digits_than_python_converts |
| parse_case_list over arbitrary text | tests/test_protocol.py::test_parser_raises_only_user_errors |
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logitsdump import protocol
from logitsdump.badcase import read_bad_case_request, read_result_csv
from logitsdump.errors import UserError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_DIR = Path(tempfile.mkdtemp(prefix="logitsdump-fuzz-"))

key_like = st.one_of(
    st.integers(-5, 10**25).map(str),
    st.sampled_from(["HumanEval", "CPP", "Go", "Java", "JavaScript", "Python", "humaneval", "foo", ""]).flatmap(
        lambda p: st.integers(-3, 10**20).map(lambda n: f"{p}/{n}")),
    st.text(alphabet="0123456789-+/_ \t\"',\n\r\x00\ufeff٣", max_size=12),
)


def _csv_text(header: str, keys: list[str], tail: str) -> str:
    return header + "".join(f"{k}{tail}\n" for k in keys)


@FUZZ
@given(st.binary(max_size=400))
def test_bad_case_csv_bytes(blob: bytes) -> None:
    path = _DIR / "bytes.csv"
    path.write_bytes(blob)
    for read in (read_bad_case_request, read_result_csv):
        with contextlib.suppress(UserError):  # anything else escaping fails the test
            read(path)


@FUZZ
@given(st.sampled_from(["key\n", "key,passed\n", "\ufeffkey,queries\n", "id,key\n", 'key,"a\n']),
       st.lists(key_like, max_size=15), st.sampled_from(["", ",true", ',"x,y"', ",", ',"']))
def test_bad_case_csv_near_valid(header: str, keys: list[str], tail: str) -> None:
    path = _DIR / "near.csv"
    path.write_text(_csv_text(header, keys, tail), encoding="utf-8")
    try:
        request = read_bad_case_request(path, 3)
    except UserError:
        return
    assert protocol.parse_case_list(request.list_literal()) == request.indices  # what the runner will read


env_value = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["True", "true", "1", "False", "", " True ", "TRUE"]),
    st.lists(st.integers(-3, 10**6), max_size=6).map(repr),
    st.sampled_from(["{[]}", "{{}: 1}", "[[1], [], [], [], [2]]", "[[]] * 5", "[1, [2]]", "(1,)", "[1.0]",
                     "[True]", "[" * 200, "9" * 5000, "[" + "9" * 5000 + "]", "[0x10]", "[1_000]"]),
)


@FUZZ
@given(st.dictionaries(st.sampled_from([protocol.ENV_DUMP_ENABLED, protocol.ENV_TOKEN_MAX_LENGTH,
                                        protocol.ENV_BAD_CASE_LIST, protocol.ENV_BAD_CASE_LIST_FILE,
                                        protocol.ENV_RESUME, protocol.ENV_LOGITS_FP32]), env_value),
       st.booleans(), st.binary(max_size=60))
def test_environment_protocol(environ: dict[str, str], enabled: bool, list_file: bytes) -> None:
    if enabled:
        environ[protocol.ENV_DUMP_ENABLED] = "True"
    if protocol.ENV_BAD_CASE_LIST_FILE in environ:
        path = _DIR / "list.txt"
        path.write_bytes(list_file)
        environ[protocol.ENV_BAD_CASE_LIST_FILE] = str(path) if environ[protocol.ENV_BAD_CASE_LIST_FILE] else ""
    try:
        request = protocol.read_request(environ)
    except UserError:
        return
    if request is not None:
        assert request.token_max_length > 0
        assert protocol.read_request(protocol.child_environment({}, request)) == request
