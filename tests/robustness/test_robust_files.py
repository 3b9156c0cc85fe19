# ruff: noqa: E501  (the coverage table in the docstring)
"""Hostile and broken logits files through `logitsdump compare` (the installed command, stdin closed,
so a prompt would fail): each one gets its own row with a reason, nothing in them runs, the run goes on.
Also the other paths that load tensors: the report's loader and the model weights eval loads.

Already covered elsewhere:
| case | covered by |
|---|---|
| every bad file kind is a FileFormatError (truncated, zero, text, dict, int, 2-D, scalar, empty, loop, dir, missing) | tests/test_tensorio.py::test_every_bad_file_is_a_file_format_error |
| FIFO not opened | tests/test_tensorio.py::test_fifo_is_not_opened (here: through compare, it does not hang) |
| pickled code never run by load_logits (zip and bare pickle) | tests/test_tensorio.py::test_pickled_code_is_never_run |
| pickled code through the compare API, 2-D tensor row | tests/test_compare.py::test_pickled_code_is_not_run_and_the_run_goes_on |
| arbitrary bytes only raise user errors | tests/test_tensorio.py::test_arbitrary_bytes_only_raise_user_errors |
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from robust_helpers import env, unreadable_preexec

from logitsdump.cli import main
from logitsdump.demo import examples
from logitsdump.errors import UserError

V = 32


class Evil:
    """Pickles to a call that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _good(path: Path, seed: int = 0) -> None:
    torch.save(torch.randn(1, V, generator=torch.Generator().manual_seed(seed)), path)


def _safetensors(path: Path) -> bytes:
    from safetensors.torch import save_file

    save_file({"logits": torch.randn(1, V)}, path)
    return path.read_bytes()


def _make(case: str, path: Path, outside: Path, marker: Path) -> None:
    """Write the file (or link, folder, FIFO) of one case at `path`."""
    if case == "truncated .pth":
        _good(path)
        path.write_bytes(path.read_bytes()[:-40])
    elif case == "zero-byte .pth":
        path.write_bytes(b"")
    elif case == "truncated .safetensors":
        data = _safetensors(path)
        path.write_bytes(data[: len(data) // 2])
    elif case == "zero-byte .safetensors":
        path.write_bytes(b"")
    elif case == ".safetensors header length past the end":
        path.write_bytes((2**63).to_bytes(8, "little") + b"{}")
    elif case == "pickled code in a torch archive":
        torch.save(Evil(marker), path)
    elif case == "pickled code in a bare pickle":
        path.write_bytes(pickle.dumps(Evil(marker)))
    elif case == "pickled code behind a tensor":
        torch.save({"logits": torch.randn(1, V), "hook": Evil(marker)}, path)
    elif case == "symlink to a file outside the folder":
        path.symlink_to(outside)
    elif case == "dangling symlink":
        path.symlink_to(path.parent / "gone.pth")
    elif case == "symlink loop":
        path.symlink_to(path)
    elif case == "a folder named .pth":
        path.mkdir()
    elif case == "a FIFO named .pth":
        os.mkfifo(path)
    elif case == "unreadable (mode 000)":
        _good(path)
        path.chmod(0)
    else:
        raise AssertionError(case)


#: case -> what the `my_data` reason must say ("" for a row that is compared normally)
FILE_CASES = {
    "truncated .pth": "my_data unreadable",
    "zero-byte .pth": "empty file (0 bytes)",
    "truncated .safetensors": "my_data unreadable",
    "zero-byte .safetensors": "empty file (0 bytes)",
    ".safetensors header length past the end": "header runs past the end",
    "pickled code in a torch archive": "not a plain tensor file",
    "pickled code in a bare pickle": "my_data unreadable",
    "pickled code behind a tensor": "not a plain tensor file",
    "symlink to a file outside the folder": "",
    "dangling symlink": "No such file",
    "symlink loop": "my_data unreadable",
    "a folder named .pth": "not a regular file",
    "a FIFO named .pth": "not a regular file",
    "unreadable (mode 000)": "Permission denied",
}


def _name(index: int, case: str) -> str:
    suffix = ".safetensors" if ".safetensors" in case else ".pth"
    return f"logits_t_{index}_0{suffix}"


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[dict[str, list[str]], subprocess.CompletedProcess, Path, str]:
    """One compare over a folder holding every case (plus good pairs), run as a user would run it."""
    root = tmp_path_factory.mktemp("files")
    golden, mine, marker, outside = root / "golden", root / "mine", root / "MARKER", root / "outside.pth"
    golden.mkdir()
    mine.mkdir()
    _good(outside, seed=1)
    try:
        preexec, skipped = unreadable_preexec(root), ""
    except RuntimeError as err:
        preexec, skipped = None, str(err)
    for index, case in enumerate(FILE_CASES):
        name = _name(index, case)
        if case == "symlink to a file outside the folder":
            shutil.copy(outside, golden / name)
        elif name.endswith(".safetensors"):
            _safetensors(golden / name)
        else:
            _good(golden / name)
        if case == "unreadable (mode 000)" and skipped:
            continue
        _make(case, mine / name, outside, marker)
    (mine / ".logits_t_99_0.pth.abc.tmp").write_bytes(b"half a file")  # what a killed writer leaves
    done = subprocess.run(
        [sys.executable, "-m", "logitsdump", "compare", "-gp", str(golden), "-mp", str(mine), "-o", str(root / "out")],
        env=env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, preexec_fn=preexec,
    )
    result = next((root / "out").glob("logits_cmp_res_*.csv"), None)
    rows = {row[0]: row for row in csv.reader(result.open(encoding="utf-8"))} if result else {}
    return rows, done, marker, skipped


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_compare_reports_bad_file_on_its_own_row(compared, case: str) -> None:
    rows, done, marker, skipped = compared
    if case == "unreadable (mode 000)" and skipped:
        pytest.skip(skipped)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "[y]/n" not in done.stdout + done.stderr
    assert not marker.exists(), "pickled code ran"
    row = rows[_name(list(FILE_CASES).index(case), case)]
    reason = FILE_CASES[case]
    if reason:
        assert row[8] == "NA" and row[9].startswith("my_data unreadable") and reason in row[9], row
    else:
        assert row[8] == "True" and row[9] == "", row


def test_compare_ignores_temporary_files(compared) -> None:
    rows, done, _, _ = compared
    assert done.returncode == 0 and not [name for name in rows if name.endswith(".tmp")]
    assert len(rows) == 1 + len(FILE_CASES)  # header + one row per case, nothing else


def test_compare_survives_crafted_manifest_and_vocab(tmp_path: Path) -> None:
    """manifest.jsonl and vocab.json beside the files are untrusted too."""
    golden, mine = tmp_path / "golden", tmp_path / "mine"
    for folder in (golden, mine):
        folder.mkdir()
        _good(folder / "logits_t_1_0.pth")
    good = json.loads(json.dumps({"task": "t", "subject": "t", "key": 1, "index": 1,
                                  "files": ["logits_t_1_0.pth"]}))
    lines = [
        "[1, 2]",  # not an object
        '{"task": 1}',  # missing fields
        json.dumps({**good, "files": [["x"]], "input_token_ids": [], "output_token_ids": [],
                    "output_tokens": [], "output_text": "", "query": "q", "prompt_sha256": "",
                    "model_name": "m", "model_path": "", "dtype": "", "logits_dtype": "", "vocab_size": 1,
                    "device": ""}),  # unhashable file name
        json.dumps({**good, "files": ["logits_t_1_0.pth"], "input_token_ids": [], "output_token_ids": [],
                    "output_tokens": [], "output_text": "", "query": float("nan"), "prompt_sha256": "",
                    "model_name": "m", "model_path": "", "dtype": "", "logits_dtype": "", "vocab_size": 1,
                    "device": ""}),  # NaN where a string belongs
        "\x00\xff not json",
    ]
    (mine / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (mine / "vocab.json").write_text('{"not": "a list"}')
    (golden / "vocab.json").write_text("[" * 100_000)  # deeper than the JSON parser allows
    assert main(["compare", "-gp", str(golden), "-mp", str(mine), "-o", str(tmp_path / "out")]) == 0
    document = json.loads(next((tmp_path / "out").glob("logits_cmp_cases_*.json")).read_text())
    assert document["cases"][0]["my_manifest"] is None


# ---- other paths that load tensors ----------------------------------------------------------------


def test_report_loader_does_not_run_pickled_code(tmp_path: Path) -> None:
    from logitsdump.report.load import top_candidates

    marker = tmp_path / "MARKER"
    torch.save(Evil(marker), tmp_path / "logits_t_1_0.pth")
    with pytest.raises(UserError):
        top_candidates(tmp_path / "logits_t_1_0.pth", 5)
    assert not marker.exists()


@pytest.mark.slow  # eval hands the folder to the model loader (transformers)
def test_eval_does_not_run_pickled_model_weights(tmp_path: Path, capsys) -> None:
    """A model folder whose weights are a pickle that runs code: refused by torch's safe loader."""
    model = tmp_path / "model"
    shutil.copytree(examples.TINY_MODEL, model)
    for weights in model.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "MARKER"
    torch.save({"model.embed_tokens.weight": Evil(marker)}, model / "pytorch_model.bin")
    config = tmp_path / "m.yaml"
    config.write_text(f"model_name: evil\nmodel_path: {model}\ndata_type: fp32\n")
    code = main(["eval", "--model_config_path", str(config), "--task_config_path",
                 str(examples.task_config("boolq")), "--output_dir", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and not marker.exists()
    assert "logitsdump eval: error: cannot load the model" in err and "Traceback" not in err
