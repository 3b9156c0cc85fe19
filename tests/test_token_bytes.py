"""Byte tokens: a piece of a multi-byte character reads as its bytes (`<0xE6>`) with its id, never as U+FFFD."""

from __future__ import annotations

from transformers import AutoTokenizer

from logitsdump.demo import examples
from logitsdump.report.case_section import _Token, _token_html
from logitsdump.token_bytes import byte_level_bytes, is_byte_text, spell_bytes, token_text


def test_the_tiny_byte_level_vocabulary_has_no_replacement_character() -> None:
    tokenizer = AutoTokenizer.from_pretrained(examples.TINY_MODEL)
    texts = [token_text(tokenizer, i) for i in range(len(tokenizer))]
    assert not [t for t in texts if "\ufffd" in t]
    assert "\ufffd" in tokenizer.decode([227])  # what a plain decode gives: the same "�" for 128 ids
    assert texts[227] == "<0xE0>" and is_byte_text(texts[227])
    # the bytes are right: the pieces of a Chinese character spell its UTF-8 bytes
    ids = tokenizer.encode("考", add_special_tokens=False)
    assert "".join(texts[i] for i in ids) == spell_bytes("考".encode())
    assert texts[tokenizer.encode("a", add_special_tokens=False)[0]] == "a"


def test_byte_level_pieces_map_to_their_bytes() -> None:
    assert byte_level_bytes("Ġ") == b" " and byte_level_bytes("æ") == bytes([0xE6])
    assert byte_level_bytes("▁hello") is None  # not a byte-level piece
    assert is_byte_text("<0xE2><0x80>") and not is_byte_text("<0xE2>x") and not is_byte_text("")


def test_the_page_shows_bytes_and_ids() -> None:
    shown = _token_html(_Token(227, "<0xE0>"))
    assert "&lt;0xE0&gt;" in shown and "#227" in shown
    old = _token_html(_Token(131, "\ufffd"))  # a dump from before: its vocab.json holds U+FFFD
    assert "\ufffd" not in old and "#131" in old
