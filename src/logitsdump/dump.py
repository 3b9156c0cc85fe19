"""The `dump` stage: bad-case CSV -> dump request -> child runner -> the logits folders it wrote.

The runner (ours or modeltest) writes `{output_dir}/data/{DEV}/precision_test/{task}/{dtype}/{model}/logits/`.
We count what this run wrote among the `logits` folders under `<output_dir>/data` (output_dir taken
from the child's `--output_dir`/`--output-dir`, default the current directory): a folder whose dump
summary carries this run's id (our runner writes it, `protocol.ENV_DUMP_ID`), or, with a runner that
writes no summary (a real modeltest), a folder whose files differ from those before the launch.
Another dump's folder in the same output_dir, even one written a second earlier, is not counted; in a
folder of ours, only the cases and files its manifest lists (what the runner reports having written).
"""

from __future__ import annotations

import os
import shlex
import uuid
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
    is_topk_file_name,
    parse_logits_file_name,
    read_dump_summary,
    read_manifest,
)

#: How deep under `<output_dir>/data` a logits folder may be (DEV/precision_test/task/dtype/model/logits).
MAX_DEPTH = 8
#: What a folder held: (name, inode, mtime in ns, size) of each entry, and the folder's own mtime.
Fingerprint = tuple

log = get_logger("dump")


@dataclass(frozen=True)
class DumpOptions:
    """Inputs of `run_dump` (msit's `logitsdump` flags plus our `resume`, `overwrite` and `logits_fp32`)."""

    exec_command: str
    bad_case_csv: str
    token_range: int = 1
    resume: bool = False
    logits_fp32: bool = False
    #: our extension: replace the previous dump in the logits folder (only the files it wrote)
    overwrite: bool = False
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
    if options.resume and options.overwrite:
        raise UsageError("--resume keeps the logits folder's complete cases, --overwrite replaces them: give one")
    env = dict(os.environ if base_env is None else base_env)
    command = validate_command(options.exec_command, path=env.get("PATH", os.defpath))
    check_control(options.control, command)
    request = read_bad_case_request(
        options.bad_case_csv,
        options.token_range,
        resume=options.resume,
        logits_fp32=options.logits_fp32,
    )
    if options.overwrite:
        request = replace(request, overwrite=True)
    if options.replay is not None:
        request = replace(request, replay_dir=_replay_dir(options.replay, command), replay_mode=options.replay_mode)
    request = replace(request, dump_id=uuid.uuid4().hex)
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
    before = snapshot_logits_folders(root)
    try:
        launch(command.argv, request, base_env=env)
    except LaunchError as err:
        done = sum(f.cases for f in written_folders(root, before, None))
        if done and not isinstance(err, Interrupted):
            raise LaunchError(f"{err}; {done} case(s) were dumped before it stopped: fix the cause above "
                              "and continue with dump --resume (same flags)") from None
        raise
    folders = tuple(written_folders(root, before, request.dump_id))
    control = None
    if options.control is not None:
        golden = ours(folders, request, task_of(command))
        if len(golden) != 1:
            raise DataError(f"--control: {len(golden)} logits folders under {data_root(root)} were written by this "
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
    """A logits folder by its manifest's cases and its logits files (the control dump's)."""
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


def with_output_dir(command: str, output_dir: str) -> str:
    """`dump -o DIR` with `-e`: the runner command with `--output_dir DIR` added (kept as is when it already
    names DIR; a UsageError when it names another folder)."""
    from logitsdump.launch import split_command

    argv = split_command(command)
    given = output_dir_of(argv)
    if given:
        if os.path.abspath(given) != os.path.abspath(output_dir):
            raise UsageError(f"-o {output_dir} and the runner's --output_dir {given} differ: give one of them")
        return command
    return f"{command} --output_dir {shlex.quote(output_dir)}"


def output_dir_of(argv: Sequence[str]) -> str:
    """The value of `--output_dir`/`--output-dir` in the child's argv ('' when absent)."""
    return flag_value(argv, ("--output_dir", "--output-dir")) or ""


def _logits_folders(root: Path) -> list[tuple[Path, list[str]]]:
    """Every `logits` folder under `root/data` (at most MAX_DEPTH deep) with its file names, sorted."""
    data = data_root(root)
    found = []
    base_depth = len(data.parts)
    for folder, dirs, files in os.walk(data):
        here = Path(folder)
        if len(here.parts) - base_depth >= MAX_DEPTH:
            dirs.clear()
        if here.name == LOGITS_FOLDER:
            dirs.clear()
            found.append((here, sorted(files)))
    return sorted(found, key=lambda item: str(item[0]))


def _fingerprint(folder: Path, files: Sequence[str]) -> Fingerprint:
    entries = []
    for name in files:
        try:
            st = (folder / name).stat()
        except OSError:
            continue
        entries.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
    try:
        own = folder.stat()
        return (own.st_ino, own.st_mtime_ns, tuple(entries))
    except OSError:
        return ((), 0, tuple(entries))


def snapshot_logits_folders(root: Path) -> dict[Path, Fingerprint]:
    """What each logits folder under `root/data` holds now (taken before the launch)."""
    return {folder: _fingerprint(folder, files) for folder, files in _logits_folders(root)}


def written_folders(root: Path, before: Mapping[Path, Fingerprint], dump_id: str | None) -> list[DumpFolder]:
    """The logits folders under `root/data` this dump run wrote, sorted.

    A folder whose dump summary carries `dump_id` is this run's; one whose summary carries another id is
    another run's, even when it changed meanwhile (a dump beside this one in the same output_dir). A folder
    without a summary of an id (a real modeltest's; or `dump_id` None: a run stopped before its summary)
    counts when its files differ from `before`.
    """
    found: list[DumpFolder] = []
    for folder, files in _logits_folders(root):
        summary = read_dump_summary(folder) if DUMP_SUMMARY_NAME in files else None
        if dump_id is not None and summary is not None and summary.dump_id is not None:
            if summary.dump_id != dump_id:
                continue
        elif before.get(folder) == _fingerprint(folder, files):
            continue
        found.append(_counted(folder, files, summary))
    return found


def _counted(folder: Path, files: Sequence[str], summary: DumpSummary | None) -> DumpFolder:
    """A written folder counted by what its runner reports: the manifest's cases and the files they list
    (our runner), else the logits files and the keys in their names (a real modeltest writes no manifest)."""
    manifest = read_manifest(folder) if MANIFEST_NAME in files else []
    if manifest:
        listed = {name for record in manifest for name in record.files}
        return DumpFolder(folder, len(manifest), len(listed.intersection(files)), summary)
    pth = [name for name in files if name.endswith(LOGITS_SUFFIX) or is_topk_file_name(name)]  # a server: top-k
    return DumpFolder(folder, _keys_in_names(pth), len(pth), summary)


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
