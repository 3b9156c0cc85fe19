"""`dump --control KIND`: the control arm of a golden dump, made by a second run of our runner.

The runner replays the golden dump's tokens in a second healthy configuration (`runner/control.py`)
and writes the control beside the golden dump (`runner.outputs.control_dir_of`); then the golden
manifest names it: every case line it covers gets `extra.control = {"dir": "../control", "kind": KIND}`
(a path relative to the golden folder, so the pair can be moved together). compare finds the control
there, or from `--control DIR`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from logitsdump import store
from logitsdump.errors import DataError, UsageError, UserError, WriteError
from logitsdump.launch import Command, launch
from logitsdump.logs import get_logger
from logitsdump.protocol import CONTROL_KINDS, DumpRequest
from logitsdump.runner.outputs import control_dir_of

if TYPE_CHECKING:
    from logitsdump.dump import DumpFolder

log = get_logger("dump")


def check_control(kind: str | None, command: Command) -> None:
    """Refuse a `--control` that cannot be made, before anything runs."""
    if kind is None:
        return
    if kind not in CONTROL_KINDS:
        raise UsageError(f"--control must be one of {', '.join(CONTROL_KINDS)}, found {kind!r}")
    if not command.is_logitsdump:
        raise UsageError("--control needs our runner (logitsdump eval, or torchrun ... logitsdump eval), which "
                         "replays the golden tokens; with modeltest, dump a second configuration of the golden "
                         "side into its own folder and give it to compare --control DIR (docs/compare.md)")


def task_of(command: Command) -> str | None:
    """The task name of our runner's `--task_config_path` YAML (None when it cannot be read: not decisive)."""
    from logitsdump.launch import flag_value
    from logitsdump.runner.config import load_task_config

    path = flag_value(command.argv, ("--task_config_path",))
    try:
        return load_task_config(path).task_name if path else None
    except (UserError, OSError):
        return None


def ours(folders: Sequence[DumpFolder], request: DumpRequest, task: str | None = None) -> list[DumpFolder]:
    """The folders a dump of `request` may have written: those of `task` (when known) whose account asks for as
    many cases and whose manifest lists only requested indices (another dump running into the same output
    folder at the same time wrote the others)."""
    wanted = set(request.indices) if not request.per_language else {i for g in request.indices for i in g}  # type: ignore[union-attr]
    kept = []
    for folder in folders:
        if folder.summary is not None and folder.summary.requested != request.case_count:
            continue
        records = store.read_manifest(folder.path)
        if task is not None and any(r.task != task for r in records):
            continue
        if all(r.index in wanted for r in records):
            kept.append(folder)
    return kept


def run_control(command: Command, request: DumpRequest, golden_dir: Path, kind: str, dtype: str | None,
                env: Mapping[str, str], replay_mode: str = "step") -> Path:
    """Run the control of the golden dump in `golden_dir` (replayed, `kind`); name it in the golden manifest;
    return the control folder."""
    control_request = replace(request, replay_dir=str(golden_dir.resolve()), replay_mode=replay_mode,
                              control=kind, control_dtype=dtype)
    log.info("control arm (%s): replaying %s", kind, golden_dir)
    launch(command.argv, control_request, base_env=env)
    folder = control_dir_of(golden_dir)
    records = store.read_manifest(folder) if folder.is_dir() else []
    if not records:
        raise DataError(f"the control run wrote no case to {folder}: see the runner's output above")
    name_control(golden_dir, folder, kind, {(r.subject, r.index) for r in records})
    return folder


def name_control(golden_dir: Path, control_dir: Path, kind: str, cases: set[tuple[str, int]]) -> None:
    """Record the control in the golden manifest's lines of `cases` (atomically); a read-only golden folder
    only loses the record (compare still finds the control beside it), with a warning."""
    records = store.read_manifest(golden_dir)
    pointer = {"dir": os.path.relpath(control_dir, golden_dir), "kind": kind}
    updated = [replace(r, extra={**r.extra, store.CONTROL_EXTRA: pointer}) if (r.subject, r.index) in cases else r
               for r in records]
    try:
        store.rewrite_manifest(golden_dir, updated)
    except (OSError, WriteError) as err:
        log.warning("could not name the control in %s (%s): compare finds it beside the golden dump anyway",
                    golden_dir / store.MANIFEST_NAME, err)
