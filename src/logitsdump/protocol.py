"""The logits-dump protocol: the environment variables between `dump` and the runner.

This module is the only home of these names and of their encoding. The dump
side builds a new environment for the child with `child_environment`; the
runner side (ours, or a real modeltest) reads them. modeltest reads the first
three; the `LOGITSDUMP_*` ones are our extensions, which modeltest ignores.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from logitsdump.errors import ConfigError

#: `True` (a Python literal) turns the dump on. modeltest crashes on `true`; we accept both.
ENV_DUMP_ENABLED = "BAD_CASE_LOGITS_DUMP"
#: How many generated tokens to dump per case: an int > 0.
ENV_TOKEN_MAX_LENGTH = "LOGITS_DUMP_TOKEN_MAX_LENGTH"
#: Python repr of the list of global row indices (or of five lists for humanevalx).
ENV_BAD_CASE_LIST = "BAD_CASE_LIST"

#: Our extension: a file holding the BAD_CASE_LIST text, used instead of the variable
#: when the list is too long for one environment string (Linux caps it at 128 KiB).
ENV_BAD_CASE_LIST_FILE = "LOGITSDUMP_BAD_CASE_LIST_FILE"
#: Our extension: `1` keeps the cases already complete in the logits folder (`dump --resume`).
ENV_RESUME = "LOGITSDUMP_RESUME"
#: Our extension: `1` replaces the previous dump in the logits folder (`dump --overwrite`): only the files
#: it wrote are removed; without this or ENV_RESUME a folder that holds files is refused.
ENV_OVERWRITE = "LOGITSDUMP_OVERWRITE"
#: Our extension: `1` saves logits as float32 instead of the model's dtype.
ENV_LOGITS_FP32 = "LOGITSDUMP_LOGITS_FP32"
#: Our extension (`dump --replay DIR`): the golden dump whose generated tokens the runner feeds
#: instead of its own choices (teacher forcing), so that step t is compared with step t.
ENV_REPLAY_DIR = "LOGITSDUMP_REPLAY_DIR"
#: Our extension: `step` (forced decoding through the KV-cache decode path, the default) or
#: `prefill` (the whole golden continuation scored in one forward pass).
ENV_REPLAY_MODE = "LOGITSDUMP_REPLAY_MODE"
REPLAY_MODES = ("step", "prefill")
#: Our extension: the id of one `dump` run. Our runner writes it into the dump's summary, so `dump`
#: counts only the folders this run wrote (not another dump's into the same --output_dir).
ENV_DUMP_ID = "LOGITSDUMP_DUMP_ID"
#: Our extension (`dump --control KIND`): the runner replays the golden dump of `LOGITSDUMP_REPLAY_DIR` in a
#: second healthy configuration of the golden model and writes the control arm beside that dump.
ENV_CONTROL = "LOGITSDUMP_CONTROL"
#: `dtype`: the golden model in another data type; `impl`: through another attention implementation.
CONTROL_KINDS = ("dtype", "impl")
#: Our extension: the control's data type (default: `runner.control.resolve_control`'s rule).
ENV_CONTROL_DTYPE = "LOGITSDUMP_CONTROL_DTYPE"

#: The five HumanEval-X key prefixes, in the order of BAD_CASE_LIST's five lists.
HUMANEVALX_PREFIXES = ("CPP", "Go", "Java", "JavaScript", "Python")
#: modeltest refuses lists of this many elements or more.
MAX_LIST_LENGTH = 100_000
#: Linux's MAX_ARG_STRLEN: one `NAME=value` environment string must be shorter.
MAX_ENV_STRING_BYTES = 128 * 1024


@dataclass(frozen=True)
class DumpRequest:
    """What the runner must dump.

    `indices` is a sorted tuple of global row indices, or for humanevalx five such
    tuples (one per language of `HUMANEVALX_PREFIXES`).
    """

    token_max_length: int
    indices: tuple[int, ...] | tuple[tuple[int, ...], ...]
    resume: bool = False
    logits_fp32: bool = False
    replay_dir: str | None = None
    overwrite: bool = False
    replay_mode: str = "step"
    #: The dump run asking (`ENV_DUMP_ID`); None: not told (a runner started by hand).
    dump_id: str | None = None
    #: A control run (`CONTROL_KINDS`), None for a plain dump; it replays `replay_dir`.
    control: str | None = None
    control_dtype: str | None = None

    @property
    def per_language(self) -> bool:
        """True for the five-list HumanEval-X form."""
        return bool(self.indices) and isinstance(self.indices[0], tuple)

    @property
    def case_count(self) -> int:
        """How many cases are asked for (all five lists together for HumanEval-X)."""
        if self.per_language:
            return sum(len(group) for group in self.indices)  # type: ignore[arg-type]
        return len(self.indices)

    def list_literal(self) -> str:
        """BAD_CASE_LIST exactly as msit writes it (Python repr of lists)."""
        if self.per_language:
            return repr([list(group) for group in self.indices])
        return repr(list(self.indices))


def child_environment(
    base: Mapping[str, str], request: DumpRequest, *, list_file: Path | None = None
) -> dict[str, str]:
    """A new environment for the child: `base` plus the protocol variables.

    With `list_file`, the list goes in that file (our runner reads it) and
    BAD_CASE_LIST is not set. `base` is never modified.
    """
    env = dict(base)
    for name in (ENV_BAD_CASE_LIST, ENV_BAD_CASE_LIST_FILE, ENV_RESUME, ENV_OVERWRITE, ENV_LOGITS_FP32,
                 ENV_REPLAY_DIR, ENV_REPLAY_MODE, ENV_DUMP_ID, ENV_CONTROL, ENV_CONTROL_DTYPE):
        env.pop(name, None)
    env[ENV_DUMP_ENABLED] = "True"
    env[ENV_TOKEN_MAX_LENGTH] = str(request.token_max_length)
    if list_file is None:
        env[ENV_BAD_CASE_LIST] = request.list_literal()
    else:
        env[ENV_BAD_CASE_LIST_FILE] = str(list_file)
    if request.resume:
        env[ENV_RESUME] = "1"
    if request.overwrite:
        env[ENV_OVERWRITE] = "1"
    if request.logits_fp32:
        env[ENV_LOGITS_FP32] = "1"
    if request.replay_dir is not None:
        env[ENV_REPLAY_DIR] = request.replay_dir
        env[ENV_REPLAY_MODE] = request.replay_mode
    if request.dump_id is not None:
        env[ENV_DUMP_ID] = request.dump_id
    if request.control is not None:
        env[ENV_CONTROL] = request.control
        if request.control_dtype is not None:
            env[ENV_CONTROL_DTYPE] = request.control_dtype
    return env


def list_fits_environment(request: DumpRequest) -> bool:
    """Whether BAD_CASE_LIST fits in one environment string (else E2BIG at exec)."""
    size = len(ENV_BAD_CASE_LIST) + 1 + len(request.list_literal().encode()) + 1
    return size < MAX_ENV_STRING_BYTES


def dump_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether BAD_CASE_LOGITS_DUMP asks for a dump (`True`/`true`/`1`)."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_DUMP_ENABLED, "").strip()
    if value in {"", "False", "false", "0"}:
        return False
    if value in {"True", "true", "1"}:
        return True
    raise ConfigError(f"{ENV_DUMP_ENABLED} must be True or False, found {value!r}")


def read_request(environ: Mapping[str, str] | None = None) -> DumpRequest | None:
    """Read the protocol variables (runner side); None when no dump is asked for.

    Raises ConfigError with a one-line message for any malformed value.
    """
    environ = os.environ if environ is None else environ
    if not dump_enabled(environ):
        return None
    raw_length = environ.get(ENV_TOKEN_MAX_LENGTH, "").strip()
    try:
        token_max_length = int(raw_length)
    except ValueError:
        raise ConfigError(f"{ENV_TOKEN_MAX_LENGTH} must be an int > 0, found {raw_length!r}") from None
    if token_max_length <= 0:
        raise ConfigError(f"{ENV_TOKEN_MAX_LENGTH} must be an int > 0, found {token_max_length}")
    list_file = environ.get(ENV_BAD_CASE_LIST_FILE)
    if list_file:
        from logitsdump.fsutil import LIST_FILE_MAX_BYTES, read_input_text

        try:
            text = read_input_text(list_file, ENV_BAD_CASE_LIST_FILE, LIST_FILE_MAX_BYTES, error=ConfigError)
        except ValueError as err:  # a NUL in the name
            raise ConfigError(f"cannot read {ENV_BAD_CASE_LIST_FILE}={list_file!r}: {err}") from None
        source = f"{ENV_BAD_CASE_LIST_FILE} ({list_file})"
    else:
        text = environ.get(ENV_BAD_CASE_LIST, "")
        source = ENV_BAD_CASE_LIST
    return DumpRequest(
        token_max_length=token_max_length,
        indices=parse_case_list(text, source),
        resume=environ.get(ENV_RESUME, "") == "1",
        overwrite=environ.get(ENV_OVERWRITE, "") == "1",
        logits_fp32=environ.get(ENV_LOGITS_FP32, "") == "1",
        replay_dir=environ.get(ENV_REPLAY_DIR) or None,
        replay_mode=_replay_mode(environ),
        dump_id=environ.get(ENV_DUMP_ID) or None,
        control=_control(environ),
        control_dtype=environ.get(ENV_CONTROL_DTYPE) or None,
    )


def _control(environ: Mapping[str, str]) -> str | None:
    kind = environ.get(ENV_CONTROL, "") or None
    if kind is not None and kind not in CONTROL_KINDS:
        raise ConfigError(f"{ENV_CONTROL} must be one of {', '.join(CONTROL_KINDS)}, found {kind!r}")
    if kind is not None and not environ.get(ENV_REPLAY_DIR):
        raise ConfigError(f"{ENV_CONTROL} needs {ENV_REPLAY_DIR}: a control arm replays the golden dump's tokens")
    return kind


def _replay_mode(environ: Mapping[str, str]) -> str:
    mode = environ.get(ENV_REPLAY_MODE, "") or "step"
    if mode not in REPLAY_MODES:
        raise ConfigError(f"{ENV_REPLAY_MODE} must be one of {', '.join(REPLAY_MODES)}, found {mode!r}")
    return mode


def parse_case_list(text: str, source: str = ENV_BAD_CASE_LIST) -> tuple[int, ...] | tuple[tuple[int, ...], ...]:
    """Parse a BAD_CASE_LIST literal: a list of ints, or a list of five lists of ints.

    Returns sorted, de-duplicated tuples. Negative indices are kept here (the
    runner reports them as out of range). Raises ConfigError on anything else.
    """
    if not text.strip():
        raise ConfigError(f"{source} is empty: expected a list such as [1, 2, 5]")
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: {[]}
        raise ConfigError(f"{source} is not a Python list literal: {text[:60]!r}") from None
    if not isinstance(value, list):
        raise ConfigError(f"{source} must be a list, found {type(value).__name__}")
    if len(value) >= MAX_LIST_LENGTH:
        raise ConfigError(f"{source} has {len(value)} elements; at most {MAX_LIST_LENGTH - 1} are allowed")
    if value and all(isinstance(item, list) for item in value):
        if len(value) != len(HUMANEVALX_PREFIXES):
            raise ConfigError(
                f"{source}: a list of lists must have {len(HUMANEVALX_PREFIXES)} lists "
                f"({', '.join(HUMANEVALX_PREFIXES)}), found {len(value)}"
            )
        return tuple(_int_tuple(group, source) for group in value)
    return _int_tuple(value, source)


def _int_tuple(items: list, source: str) -> tuple[int, ...]:
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigError(f"{source} must hold ints only, found {item!r}")
    return tuple(sorted(set(items)))
