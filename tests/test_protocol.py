"""The environment protocol between `dump` and the runner."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logitsdump import protocol
from logitsdump.errors import ConfigError, UserError


def env(**values: str) -> dict[str, str]:
    return {"BAD_CASE_LOGITS_DUMP": "True", "LOGITS_DUMP_TOKEN_MAX_LENGTH": "4", **values}


def test_no_dump_without_the_switch():
    assert protocol.read_request({}) is None
    assert protocol.read_request({"BAD_CASE_LOGITS_DUMP": "False", "BAD_CASE_LIST": "[1]"}) is None


@pytest.mark.parametrize("switch", ["True", "true", "1"])
def test_switch_spellings(switch):
    request = protocol.read_request(env(BAD_CASE_LOGITS_DUMP=switch, BAD_CASE_LIST="[5, 1, 5]"))
    assert request.indices == (1, 5)
    assert request.token_max_length == 4


def test_five_lists():
    request = protocol.read_request(env(BAD_CASE_LIST="[[1], [], [], [], [7, 3]]"))
    assert request.per_language
    assert request.indices == ((1,), (), (), (), (3, 7))
    assert request.list_literal() == "[[1], [], [], [], [3, 7]]"


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"BAD_CASE_LOGITS_DUMP": "yes"}, "BAD_CASE_LOGITS_DUMP"),
        ({"LOGITS_DUMP_TOKEN_MAX_LENGTH": "0", "BAD_CASE_LIST": "[1]"}, "int > 0"),
        ({"LOGITS_DUMP_TOKEN_MAX_LENGTH": "x", "BAD_CASE_LIST": "[1]"}, "int > 0"),
        ({"BAD_CASE_LIST": ""}, "empty"),
        ({"BAD_CASE_LIST": "[1, 'a']"}, "ints only"),
        ({"BAD_CASE_LIST": "{1: 2}"}, "must be a list"),
        ({"BAD_CASE_LIST": "__import__('os')"}, "not a Python list literal"),
        ({"BAD_CASE_LIST": "[[1], [2]]"}, "5 lists"),
        ({"BAD_CASE_LIST": "[True]"}, "ints only"),
    ],
)
def test_malformed_values(values, needle):
    with pytest.raises(ConfigError, match=needle):
        protocol.read_request(env(**values))


def test_too_long_list():
    with pytest.raises(ConfigError, match="at most"):
        protocol.parse_case_list(repr(list(range(protocol.MAX_LIST_LENGTH))))


def test_child_environment_is_a_new_dict_and_round_trips():
    base = {"PATH": "/bin", "BAD_CASE_LIST": "[999]"}
    request = protocol.DumpRequest(token_max_length=3, indices=(2, 9), resume=True)
    child = protocol.child_environment(base, request)
    assert base == {"PATH": "/bin", "BAD_CASE_LIST": "[999]"}
    assert child["BAD_CASE_LOGITS_DUMP"] == "True"
    assert child["LOGITS_DUMP_TOKEN_MAX_LENGTH"] == "3"
    assert child["BAD_CASE_LIST"] == "[2, 9]"
    assert protocol.read_request(child) == request
    assert "BAD_CASE_LOGITS_DUMP" not in os.environ


def test_list_file_extension(tmp_path):
    request = protocol.DumpRequest(token_max_length=1, indices=tuple(range(30000)))
    assert not protocol.list_fits_environment(request)
    list_file = tmp_path / "list.txt"
    list_file.write_text(request.list_literal())
    child = protocol.child_environment({}, request, list_file=list_file)
    assert "BAD_CASE_LIST" not in child
    assert protocol.read_request(child).indices == request.indices


@given(st.text(max_size=200))
def test_parser_raises_only_user_errors(text):
    with contextlib.suppress(UserError):  # anything else escaping fails the test
        protocol.parse_case_list(text)
