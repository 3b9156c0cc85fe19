"""Run docs/workflow.md's two-machine walkthrough as written, two folders standing for the two machines.

    .venv/bin/python scripts/walkthrough.py [--keep DIR]

The walkthrough is every ```bash block of the doc whose first line is `# golden-host ...` or
`# test-host ...`: the block's commands run with bash, in that machine's folder (`<root>/golden-host`,
`<root>/test-host`), in the doc's order. Copies between the machines are `scp` lines
(`scp [-r] PATH OTHER-HOST:work/DEST`); a stand-in `scp` on PATH copies PATH into the other machine's
folder as DEST and records the bytes copied. tests/test_workflow_doc.py runs it; scripts/measure_docs.py
prints the sizes and times the doc quotes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "workflow.md"
HOSTS = ("golden-host", "test-host")
#: The folder the doc's commands run in on each machine (`scp` destinations are `HOST:work/...`).
REMOTE_DIR = "work"

#: A stand-in for scp: `scp [-r] SRC HOST:work/DEST` copies SRC (relative to the current folder) to
#: <root>/HOST/DEST and appends {"source", "host", "dest", "bytes"} to <root>/copies.jsonl.
FAKE_SCP = """\
import json, os, pathlib, shutil, sys
root = pathlib.Path(os.environ["WALKTHROUGH_ROOT"])
args = [a for a in sys.argv[1:] if a != "-r"]
if len(args) != 2 or ":" not in args[1]:
    sys.exit("scp stand-in: expected `scp [-r] SRC HOST:work/DEST`, got " + " ".join(sys.argv[1:]))
source = pathlib.Path(args[0])
host, _, dest = args[1].partition(":")
if not dest.startswith("work/") or not (root / host).is_dir():
    sys.exit(f"scp stand-in: unknown destination {args[1]}")
target = root / host / dest[len("work/"):]
if source.is_dir():
    shutil.copytree(source, target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
else:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    size = target.stat().st_size
with open(root / "copies.jsonl", "a", encoding="utf-8") as handle:
    handle.write(json.dumps({"source": str(source), "host": host, "dest": dest, "bytes": size}) + "\\n")
"""


@dataclass(frozen=True)
class Block:
    """One block of the walkthrough: the machine it runs on and its text (comment lines included)."""

    host: str
    text: str


@dataclass(frozen=True)
class Copy:
    source: str
    host: str
    dest: str
    bytes: int


@dataclass(frozen=True)
class Ran:
    """One block as it ran: its machine, seconds, and standard output."""

    block: Block
    seconds: float
    stdout: str


def walkthrough_blocks(doc: Path = DOC) -> list[Block]:
    """The doc's walkthrough blocks, in order."""
    blocks = []
    for body in re.findall(r"^```bash\n(.*?)^```", doc.read_text(encoding="utf-8"), flags=re.M | re.S):
        first = body.splitlines()[0] if body.strip() else ""
        host = next((h for h in HOSTS if first.startswith(f"# {h}")), None)
        if host is not None:
            blocks.append(Block(host, body))
    return blocks


def run_walkthrough(root: Path, doc: Path = DOC, env: dict[str, str] | None = None) -> tuple[list[Ran], list[Copy]]:
    """Run every walkthrough block of `doc` under `root` (new or empty); what ran and what was copied.
    Raises RuntimeError naming the block when one fails."""
    root.mkdir(parents=True, exist_ok=True)
    tools = root / ".bin"
    tools.mkdir()
    scp = tools / "scp"
    scp.write_text(f"#!{sys.executable}\n{FAKE_SCP}", encoding="utf-8")
    scp.chmod(0o755)
    for host in HOSTS:
        (root / host).mkdir()
    base = dict(os.environ if env is None else env)
    base.update(WALKTHROUGH_ROOT=str(root), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NO_COLOR="1",
                PATH=f"{tools}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}")
    ran = []
    for number, block in enumerate(walkthrough_blocks(doc), 1):
        started = time.monotonic()
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=root / block.host, env=base,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"block {number} ({block.host}) failed with {done.returncode}:\n{block.text}\n"
                               f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
        ran.append(Ran(block, time.monotonic() - started, done.stdout))
    log = root / "copies.jsonl"
    copies = [Copy(**json.loads(line)) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []
    return ran, copies


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="run in this new folder and keep it")
    parser.add_argument("--show", action="store_true", help="print what each block printed")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="walkthrough-"))
    try:
        ran, copies = run_walkthrough(root)
        for number, item in enumerate(ran, 1):
            print(f"block {number} on {item.block.host}: {item.seconds:.0f} s")
            if args.show:
                print(item.stdout)
        for copy in copies:
            print(f"copied {copy.source} -> {copy.host}:{copy.dest}: {copy.bytes:,} bytes")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
