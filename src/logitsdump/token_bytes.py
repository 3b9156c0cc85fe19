"""How one token reads on its own: its text, or, for a piece of a multi-byte character, its bytes.

Decoded alone, a token holding part of a UTF-8 character (byte-level BPE as GPT-2, Llama 3 or
SmolLM2 use; SentencePiece's byte fallback) is U+FFFD, the same "�" for every such token. Its own
bytes tell them apart: `<0xE2>` (several: `<0xE2><0x80>`), the spelling SentencePiece gives them.
The report reads this spelling (`report.html`'s token boxes) and adds the id.
"""

from __future__ import annotations

import functools
import re
from typing import Any

#: One byte as SentencePiece's byte-fallback pieces spell it, and as `token_text` writes bytes.
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
REPLACEMENT = "\ufffd"


def token_text(tokenizer: Any, token_id: int) -> str:
    """The text of `token_id` alone (special tokens included); its bytes when that text is U+FFFD."""
    text = tokenizer.decode([int(token_id)], skip_special_tokens=False)
    if REPLACEMENT not in text:
        return text
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(piece, str):
        return text
    if BYTE_PIECE.fullmatch(piece):
        return piece.upper().replace("0X", "0x")
    raw = byte_level_bytes(piece)
    if raw is None:
        return text
    try:
        return raw.decode("utf-8")  # a whole character after all (e.g. U+FFFD itself)
    except UnicodeDecodeError:
        return spell_bytes(raw)


def spell_bytes(raw: bytes) -> str:
    """`<0xE2><0x80>`: each byte as a byte-fallback piece."""
    return "".join(f"<0x{b:02X}>" for b in raw)


def is_byte_text(text: str) -> bool:
    """Whether `text` is one or more byte pieces (what `token_text` writes for a partial character)."""
    return bool(text) and not BYTE_PIECE.sub("", text)


def byte_level_bytes(piece: str) -> bytes | None:
    """The bytes of a byte-level BPE piece (GPT-2's printable stand-ins for bytes); None when a
    character of `piece` stands for no byte (not a byte-level vocabulary)."""
    table = _unicode_to_byte()
    try:
        return bytes(table[ch] for ch in piece)
    except KeyError:
        return None


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable bytes stand for themselves, the other 68
    are shifted past U+00FF in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table
