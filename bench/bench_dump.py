"""One `logitsdump dump -e "logitsdump eval ..."` of a bench's cases in a subprocess, kept for a rerun (the
benches that dump SmolLM2 cases share it: control_arm.py, planted_bug.py; they run with bench/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def dump_cases(model_yaml: Path, task_yaml: Path, keys: Path, out: Path, tokens: int, log: Path, *,
          replay: Path | None = None, control: str | None = None, replay_mode: str = "step") -> Path:
    """One `logitsdump dump` subprocess; the logits folder it wrote (kept from an earlier run in --workdir)."""
    done = out / "bench-done"
    if done.is_file():
        return Path(done.read_text(encoding="utf-8").strip())
    runner = (f"logitsdump eval --model_config_path {model_yaml} --task_config_path {task_yaml} --batch_size 1 "
              f"--tp 1 --output_dir {out} --device cpu")
    argv = [sys.executable, "-m", "logitsdump", "dump", "-bcr", str(keys), "-tr", str(tokens)]
    if replay is not None:
        argv += ["--replay", str(replay)]
    if control is not None:
        argv += ["--control", control]
    if replay is not None or control is not None:
        argv += ["--replay-mode", replay_mode]
    argv += ["-e", runner]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(" ".join(argv) + "\n")
        handle.flush()
        status = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if status != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"dump failed (status {status}), see {log}: {' | '.join(tail)}")
    if replay is not None and control is not None:  # the control of an existing golden dump, beside it
        folders = [replay.parent / "control"]
    else:
        folders = [p.parent for p in out.rglob("manifest.jsonl") if p.parent.name == "logits"]
    if len(folders) != 1:
        raise SystemExit(f"expected one logits folder under {out}, found {folders}")
    done.write_text(f"{folders[0]}\n", encoding="utf-8")
    return folders[0]
