"""The `dump` stage: bad-case CSV -> dump request -> child runner -> the logits folders it wrote.

The runner (ours or modeltest) writes `{output_dir}/data/{DEV}/precision_test/{task}/{dtype}/{model}/logits/`.
We find those folders by looking for `logits` folders under `<output_dir>/data` (output_dir taken
from the child's `--output_dir`/`--output-dir`, default the current directory) that changed
since the launch.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from logitsdump.badcase import read_bad_case_request
from logitsdump.control_dump import check_control, ours, run_control, task_of
from logitsdump.errors import DataError, LaunchError, UsageError
from logitsdump.fsutil import ensure_writable_dir
from logitsdump.launch import Interrupted, flag_value, launch, validate_command
from logitsdump.logs import get_logger
from logitsdump.protocol import MAX_LIST_LENGTH, DumpRequest
from logitsdump.runner.outputs import LOGITS_FOLDER, data_root
from logitsdump.store import (
    DUMP_SUMMARY_NAME,
    LOGITS_SUFFIX,
    MANIFEST_NAME,
    DumpSummary,
    parse_logits_file_name,
    read_dump_summary,
    read_manifest,
)

#: How deep under `<output_dir>/data` a logits folder may be (DEV/precision_test/task/dtype/model/logits).
MAX_DEPTH = 8
#: File-system time stamps can be coarse: folders changed this long before the launch still count.
MTIME_SLACK_SECONDS = 2.0

log = get_logger("dump")


@dataclass(frozen=True)
class DumpOptions:
    """Inputs of `run_dump` (msit's `logitsdump` flags plus our `resume` and `logits_fp32`)."""

    exec_command: str
    bad_case_csv: str
    token_range: int = 1
    resume: bool = False
    logits_fp32: bool = False
    #: our extension: the golden dump's logits folder whose tokens are fed (teacher forcing)
    replay: str | None = None
    replay_mode: str = "step"
    #: our extension: also dump the control arm of the golden dump (`control_dump.py`): `dtype` or `impl`;
    #: with `replay`, only the control of that existing golden dump
    control: str | None = None
    control_dtype: str | None = None


@dataclass(frozen=True)
class DumpFolder:
    """One logits folder written by the child: cases (manifest lines, else keys in file names), files,
    and our runner's account of the dump (None for a real modeltest's folder)."""

    path: Path
    cases: int
    files: int
    summary: DumpSummary | None = None


@dataclass(frozen=True)
class DumpResult:
    """What `run_dump` asked for and what the child wrote."""

    requested: int
    folders: tuple[DumpFolder, ...]
    #: lm-eval replays: the bad docs the `requested` cases come from (a multiple-choice doc is one case per choice)
    docs: int | None = None
    #: `--control`: the control arm's folder (beside the golden dump)
    control: DumpFolder | None = None

    @property
    def cases(self) -> int:
        return sum(folder.cases for folder in self.folders)

    @property
    def files(self) -> int:
        return sum(folder.files for folder in self.folders)

    def summary_lines(self) -> list[str]:
        """The lines printed on stdout after the run."""
        lines = [f"logits folder: {f.path} ({f.cases} cases, {f.files} files)" for f in self.folders]
        if self.control is not None:
            lines.append(f"control folder: {self.control.path} ({self.control.cases} cases, {self.control.files} "
                         "files)")
        if self.control is not None and not self.folders:  # `--control --replay`: the control alone
            lines.append(f"dumped the control of {self.control.cases} of {self.requested} bad cases")
        elif self.docs is None:
            lines.append(f"dumped {self.cases} of {self.requested} bad cases, {self.files} logits files")
        else:
            lines.append(f"dumped {self.cases} of {self.requested} cases of {self.docs} bad docs (one case per "
                         f"logged request), {self.files} logits files")
        return lines

    def shortfall_lines(self) -> list[str]:
        """Why fewer cases than requested were dumped, as exactly as the folders tell (warnings)."""
        if self.cases >= self.requested:
            return []
        accounts = [f.summary for f in self.folders]
        if not all(accounts):  # a real modeltest says nothing about the cases it skipped
            return [f"only {self.cases} of {self.requested} bad cases were dumped: see the child's output "
                    "for the cases that failed or match no dataset row"]
        matched = sum(a.matched for a in accounts)  # type: ignore[union-attr]
        lines = []
        if matched < self.requested:
            lines.append(f"{self.requested - matched} of the {self.requested} bad cases match no row of the "
                         "dataset (the runner lists them above): nothing to dump for them")
        if self.cases < matched:
            lines.append(f"{matched - self.cases} of the {matched} bad cases found in the dataset were not "
                         "dumped: see the child's output")
        return lines


def run_dump(options: DumpOptions, *, base_env: Mapping[str, str] | None = None) -> DumpResult:
    """Read the bad-case CSV, run the child command with the dump protocol, report what it wrote."""
    if options.token_range <= 0:
        raise UsageError(f"--token-range must be an int > 0, found {options.token_range}")
    env = dict(os.environ if base_env is None else base_env)
    command = validate_command(options.exec_command, path=env.get("PATH", os.defpath))
    check_control(options.control, command)
    request = read_bad_case_request(
        options.bad_case_csv,
        options.token_range,
        resume=options.resume,
        logits_fp32=options.logits_fp32,
    )
    if options.replay is not None:
        request = replace(request, replay_dir=_replay_dir(options.replay, command), replay_mode=options.replay_mode)
    _check_list_length(request, options.bad_case_csv)
    requested = request.case_count
    root = Path(os.path.abspath(output_dir_of(command.argv) or os.getcwd()))
    ensure_writable_dir(root)  # a read-only or too long output folder fails here, before anything runs
    if options.control is not None and options.replay is not None:  # the control of an existing golden dump
        return _control_only(options, command, request, env)
    log.info(
        "dumping %d bad case(s), %d token(s) each, with: %s",
        requested,
        request.token_max_length,
        shlex.join(command.argv),
    )
    started = time.time()
    try:
        launch(command.argv, request, base_env=env)
    except LaunchError as err:
        done = sum(f.cases for f in find_logits_folders(root, since=started - MTIME_SLACK_SECONDS))
        if done and not isinstance(err, Interrupted):
            raise LaunchError(f"{err}; {done} case(s) were dumped before it stopped: fix the cause above "
                              "and continue with dump --resume (same flags)") from None
        raise
    folders = tuple(find_logits_folders(root, since=started - MTIME_SLACK_SECONDS))
    control = None
    if options.control is not None:
        golden = ours(folders, request, task_of(command))
        if len(golden) != 1:
            raise DataError(f"--control: {len(golden)} logits folders under {data_root(root)} changed during this "
                            "dump and hold its cases, expected one: give each dump its own --output_dir")
        control = _folder(run_control(command, request, golden[0].path, options.control, options.control_dtype,
                                      env, options.replay_mode))
    result = DumpResult(requested, folders, control=control)
    if not folders:
        log.warning("no logits folder was written under %s (looked for data/.../logits/)", data_root(root))
    else:
        for line in result.shortfall_lines():
            log.warning(line)
    return result


def _control_only(options: DumpOptions, command, request: DumpRequest, env: Mapping[str, str]) -> DumpResult:
    """`--control` with `--replay GOLDEN`: the control arm of that golden dump only."""
    assert options.control is not None and request.replay_dir is not None
    folder = run_control(command, request, Path(request.replay_dir), options.control, options.control_dtype, env,
                         options.replay_mode)
    return DumpResult(request.case_count, (), control=_folder(folder))


def _folder(path: Path) -> DumpFolder:
    """A logits folder as `find_logits_folders` describes it."""
    names = [p.name for p in path.glob(f"*{LOGITS_SUFFIX}")]
    return DumpFolder(path, len(read_manifest(path)), len(names), read_dump_summary(path))


def _replay_dir(folder: str, command) -> str:
    """The golden logits folder of `--replay`, checked before anything runs."""
    from logitsdump.store import MANIFEST_NAME

    if not command.is_logitsdump:
        raise UsageError("--replay needs our runner (logitsdump eval, or torchrun ... logitsdump eval): "
                         "modeltest cannot feed the golden tokens")
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"--replay {folder}: not a folder (give the golden dump's logits folder)")
    if not (path / MANIFEST_NAME).is_file():
        raise UsageError(f"--replay {folder}: no {MANIFEST_NAME} there, so the golden tokens are unknown "
                         "(a real modeltest's dump has none): dump the golden device with logitsdump eval")
    return str(path.resolve())


def output_dir_of(argv: Sequence[str]) -> str:
    """The value of `--output_dir`/`--output-dir` in the child's argv ('' when absent)."""
    return flag_value(argv, ("--output_dir", "--output-dir")) or ""


def find_logits_folders(root: Path, since: float) -> list[DumpFolder]:
    """`logits` folders under `root/data` whose folder or manifest changed at or after `since`, sorted."""
    data = data_root(root)
    found: list[DumpFolder] = []
    base_depth = len(data.parts)
    for folder, dirs, files in os.walk(data):
        here = Path(folder)
        if len(here.parts) - base_depth >= MAX_DEPTH:
            dirs.clear()
        if here.name != LOGITS_FOLDER or not _changed_since(here, since):
            continue
        dirs.clear()
        pth = [name for name in files if name.endswith(LOGITS_SUFFIX)]
        manifest = read_manifest(here) if MANIFEST_NAME in files else []
        found.append(DumpFolder(here, len(manifest) if manifest else _keys_in_names(pth), len(pth),
                                read_dump_summary(here) if DUMP_SUMMARY_NAME in files else None))
    return sorted(found, key=lambda f: str(f.path))


def _changed_since(folder: Path, since: float) -> bool:
    for path in (folder, folder / MANIFEST_NAME):
        try:
            if path.stat().st_mtime >= since:
                return True
        except OSError:
            continue
    return False


def _keys_in_names(names: Sequence[str]) -> int:
    keys = set()
    for name in names:
        try:
            keys.add(parse_logits_file_name(name)[0])
        except DataError:
            continue
    return len(keys)


def _check_list_length(request: DumpRequest, source: str) -> None:
    groups = request.indices if request.per_language else (request.indices,)
    longest = max(len(group) for group in groups)  # type: ignore[arg-type]
    if longest >= MAX_LIST_LENGTH:
        raise DataError(
            f"{source} has {longest} bad cases; modeltest takes fewer than {MAX_LIST_LENGTH}: split the CSV"
        )
