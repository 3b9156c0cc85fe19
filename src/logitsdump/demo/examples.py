"""Where the embedded model, datasets and YAML files live, and copying them for a user."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from logitsdump.errors import UserError

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_MODEL = ASSETS / "model" / "tiny_llama"
DATASETS = ASSETS / "datasets"
MODEL_CONFIGS = ASSETS / "configs" / "model"
TASK_CONFIGS = ASSETS / "configs" / "task"
#: The tiny model's measured noise floor, fp32 golden vs bf16 (a tolerances file for `compare --tolerances`).
TINY_FLOOR = ASSETS / "configs" / "tolerances" / "tiny_llama_bf16.json"
#: The folders of ASSETS that `copy_examples` copies.
EXAMPLE_PARTS = ("model", "datasets", "configs")


def model_config(dtype: str = "fp32") -> Path:
    """The shipped model YAML for the tiny Llama in `dtype` (fp32, bf16 or fp16)."""
    return MODEL_CONFIGS / f"tiny_llama_{dtype}.yaml"


def task_config(task_name: str) -> Path:
    """The shipped task YAML for `task_name`."""
    return TASK_CONFIGS / f"{task_name}.yaml"


def shipped_task_names() -> list[str]:
    return sorted(p.stem for p in TASK_CONFIGS.glob("*.yaml"))


def copy_examples(destination: str | Path) -> Path:
    """Copy model, datasets and configs into `destination` (new or empty); return it.

    The YAML files use paths relative to their own folder, so the copy runs as is.
    """
    from logitsdump.fsutil import ensure_writable_dir, write_errors

    target = Path(destination)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} exists and is not an empty folder: choose a new folder")
    created = not target.exists()
    ensure_writable_dir(target)  # one line when it cannot be created or written in
    try:
        for name in EXAMPLE_PARTS:
            _copy_tree(ASSETS / name, target / name, write_errors)
    except BaseException:  # a full disk or Ctrl-C: no half copy left
        for name in EXAMPLE_PARTS:
            shutil.rmtree(target / name, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                target.rmdir()
        raise
    return target.resolve()


def _copy_tree(source: Path, target: Path, write_errors) -> None:
    """Copy `source` into the new folder `target`, file by file, stopping at the first error (one line:
    `shutil.copytree` goes on and gathers the errors into a `shutil.Error` without an errno)."""
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        here = target / Path(folder).relative_to(source)
        with write_errors(here, "create folder"):
            here.mkdir(mode=0o755, exist_ok=True)
        for name in sorted(files):
            with write_errors(here / name, "copy the examples into"):
                shutil.copyfile(Path(folder) / name, here / name)
                shutil.copymode(Path(folder) / name, here / name)
