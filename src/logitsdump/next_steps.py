"""The line each stage prints last: the exact command of the next stage, with the real paths.

The stages follow docs/workflow.md: eval on both devices, bcanalyze, dump on both devices (the device
under test replaying golden with our runner), compare, report. Where a stage cannot know a path (the
other device's), the line says which of its own files goes where.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from logitsdump.store import MANIFEST_NAME

#: The token count the printed dump command asks for (the workflow's; the demo's is smaller).
DUMP_TOKENS = 10


def _q(path: str | os.PathLike[str]) -> str:
    return shlex.quote(str(path))


def after_eval(debug_csv: Path | None) -> list[str]:
    """After an accuracy run: bcanalyze, with this run's debug CSV as one of its two inputs."""
    if debug_csv is None:
        return ["next: bcanalyze needs the debug CSV: run again with --save_debug_enable"]
    return [f"next, with the other device's debug CSV beside this one ({_q(debug_csv)}):",
            "  logitsdump bcanalyze -gp GOLDEN_debug_info.csv -mp TEST_debug_info.csv"
            " -o bad_cases   (this run's CSV is one of the two; docs/workflow.md)"]


def after_bcanalyze(output_dir: Path) -> list[str]:
    """After bcanalyze: the dump on each device, reading the newest result of this output folder."""
    return [
        "next, on each device, the accuracy run's command again with --batch_size 1 (copy this folder there):",
        f'  logitsdump dump -e "<the eval or modeltest command> --batch_size 1" -bcr {_q(output_dir)} '
        f"-tr {DUMP_TOKENS}",
        "  on the device under test with our runner, add: --replay <golden's logits folder>",
    ]


def after_dump(folders: Sequence[Path], replay: str | None, output_root: Path) -> list[str]:
    """After a dump: compare (replayed: against the folder it replayed), else the other device's dump
    (replaying this folder when our runner wrote it: a real modeltest's folder has no manifest to replay)."""
    if not folders:
        return []
    out = output_root / "compare"
    if replay is not None:
        return ["next: " + " ".join(["logitsdump compare -gp", _q(replay), "-mp", _q(folders[0]), "-o", _q(out)])] + [
            "  and for " + _q(f) + ": the same with its own golden folder" for f in folders[1:]]
    if (Path(folders[0]) / MANIFEST_NAME).is_file():
        how = (f"adding --replay {_q(folders[0])} (our runner; copy the folder there), or free-running as this "
               "one")
    else:
        how = "free-running as this one (a folder without a manifest, e.g. modeltest's, cannot be replayed)"
    return [f"next, if this was the golden device: dump the device under test with the same -bcr and -tr, {how}; "
            "then:",
            f"  logitsdump compare -gp {_q(folders[0])} -mp <the test dump's logits folder> -o {_q(out)}"]


def after_compare(output_dir: Path) -> list[str]:
    """After compare: the report of this output folder (its newest run)."""
    return [f"next: logitsdump report {_q(output_dir)}"]


def after_report(page: Path) -> list[str]:
    """After report: where to open the page."""
    return [f"open in a browser: {Path(page).resolve().as_uri()}"]
