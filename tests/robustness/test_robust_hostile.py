"""Round three of the hostile probe (issue 27), by class; each test holds the probe's instance and at least one
other of the same class, and failed on the code before its fix (the closing note says how that was checked).

1. data loss in dump; 2. orphan processes and SIGTERM; 3. half-written result sets; 4. special files and
unbounded reads; 5. numbers at the edges; 6. scale (the figures are in bench/scale.py); 8. model files;
9. calibrate with nothing to measure, examples on a full disk. Class 7 (untrusted code) is
`test_robust_sandbox.py`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from robust_helpers import (
    children_of,
    cli,
    env,
    files_under,
    logits_dir,
    one_error_line,
    runner_command,
    stop,
    wait_for,
)

from logitsdump import store
from logitsdump.compare import CompareOptions, run_compare
from logitsdump.demo import examples
from logitsdump.errors import UserError

from helpers import alive, fake_programs

# ---- shared inputs ----------------------------------------------------------------------------------


def _pairs(root: Path, cases: int, scale: float = 1.0, vocab: int = 64, flip: bool = False) -> tuple[Path, Path]:
    """A golden and a test folder of one-step cases (float64 logits times `scale`; `flip`: the test's
    order reversed, so the argmax and a huge KL differ per case)."""
    golden, mine = root / "golden", root / "mine"
    golden.mkdir(parents=True)
    mine.mkdir()
    for key in range(cases):
        values = np.linspace(-1.0, 1.0, vocab) * scale * (key + 1)
        torch.save(torch.as_tensor(values), golden / f"logits_boolq_{key}_0.pth")
        test = values[::-1].copy() if flip else values + 1e-3 * scale
        torch.save(torch.as_tensor(test), mine / f"logits_boolq_{key}_0.pth")
    return golden, mine


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ---- 1. data loss in dump ---------------------------------------------------------------------------


def _bad_csv(tmp_path: Path, keys: str = "1\n2\n") -> Path:
    path = tmp_path / "bad.csv"
    path.write_text("key\n" + keys)
    return path


def _dump(tmp_path: Path, *flags: str, out: str = "out", keys: str = "1\n2\n") -> subprocess.CompletedProcess:
    return cli("dump", "-e", runner_command(out), "-bcr", str(_bad_csv(tmp_path, keys)), "-tr", "2", *flags,
               cwd=tmp_path, timeout=300)


@pytest.mark.slow
def test_a_dump_without_resume_keeps_the_folder_it_finds(tmp_path: Path) -> None:
    """The probe: a second dump deleted the earlier cases and the user's own file; now it refuses in one line
    (naming --resume and --overwrite); --overwrite replaces the dump's own files and nothing else."""
    assert _dump(tmp_path).returncode == 0
    folder = logits_dir(tmp_path / "out")
    (folder / "notes.txt").write_text("the user's own file")
    before = {p: p.read_bytes() for p in files_under(folder)}
    done = _dump(tmp_path, keys="3\n")
    assert done.returncode == 1
    line = [x for x in done.stderr.splitlines() if x.startswith("logitsdump eval: error:")]
    assert len(line) == 1 and "already holds a dump of 2 case(s)" in line[0], done.stderr
    assert "--resume" in line[0] and "--overwrite" in line[0] and "Traceback" not in done.stderr
    assert {p: p.read_bytes() for p in files_under(folder)} == before  # nothing lost
    # another instance: --overwrite with a file logitsdump did not write in the folder is refused too
    done = _dump(tmp_path, "--overwrite", keys="3\n")
    assert done.returncode == 1 and "did not write (e.g. 'notes.txt')" in done.stderr, done.stderr
    assert {p: p.read_bytes() for p in files_under(folder)} == before
    # without it, --overwrite replaces the previous dump: its cases 1 and 2 go, case 3 comes
    (folder / "notes.txt").unlink()
    done = _dump(tmp_path, "--overwrite", keys="3\n")
    assert done.returncode == 0, done.stderr
    assert [r.index for r in store.read_manifest(folder)] == [3]
    assert sorted(p.name for p in folder.glob("*.pth")) == ["logits_GSM8K.jsonl_3_0.pth", "logits_GSM8K.jsonl_3_1.pth"]


@pytest.mark.slow
def test_overwrite_refuses_logits_files_no_manifest_lists(tmp_path: Path) -> None:
    """Another instance: a real modeltest's dump (logits files, no manifest) is not ours to remove."""
    folder = logits_dir(tmp_path / "out")
    folder.mkdir(parents=True)
    (folder / "logits_GSM8K.jsonl_7_0.pth").write_bytes(b"modeltest's")
    (folder / "sub").mkdir()
    for flags in ((), ("--overwrite",)):
        done = _dump(tmp_path, *flags)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert (folder / "logits_GSM8K.jsonl_7_0.pth").read_bytes() == b"modeltest's" and (folder / "sub").is_dir()
    assert cli("dump", "-e", "logitsdump eval", "-bcr", str(_bad_csv(tmp_path)), "--resume", "--overwrite",
               cwd=tmp_path).returncode == 2  # one of the two


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["symlink", "regular file", "a file where a folder belongs"])
def test_odd_logits_layouts_are_refused_before_the_model_loads(tmp_path: Path, layout: str) -> None:
    """The probe: a symlinked logits path (rmtree after the model loaded) and a regular file (NotADirectoryError)."""
    folder = logits_dir(tmp_path / "out")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.pth").write_bytes(b"x")
    if layout == "symlink":
        folder.parent.mkdir(parents=True)
        folder.symlink_to(elsewhere)
    elif layout == "regular file":
        folder.parent.mkdir(parents=True)
        folder.write_text("a file")
    else:
        (tmp_path / "out" / "data" / "CPU").mkdir(parents=True)
        (tmp_path / "out" / "data" / "CPU" / "precision_test").write_text("a file")
    done = _dump(tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    child = [x for x in done.stderr.splitlines() if x.startswith("logitsdump eval: error:")]
    assert len(child) == 1 and ("symbolic link" in child[0] or "not a folder" in child[0]
                                or "is a file where" in child[0]), done.stderr
    assert "bad cases to re-infer" not in done.stderr  # logged once the model is loaded: refused before
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.pth"]


@pytest.mark.slow
def test_concurrent_dumps_into_one_folder_each_complete_or_are_refused_in_one_line(tmp_path: Path) -> None:
    """The probe: five dumps into one --output_dir deleted each other's files (OSError: Directory not empty)."""
    bad = _bad_csv(tmp_path, "1\n2\n3\n")
    processes = [subprocess.Popen([sys.executable, "-m", "logitsdump", "dump", "-e", runner_command("out"), "-bcr",
                                   str(bad), "-tr", "2"], cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(5)]
    results = [(p, *p.communicate(timeout=600)) for p in processes]
    done = [r for r in results if r[0].returncode == 0]
    assert done, [r[2][-2000:] for r in results]
    for process, _stdout, stderr in results:
        assert "Traceback" not in stderr, stderr
        if process.returncode != 0:
            child = [x for x in stderr.splitlines() if x.startswith("logitsdump eval: error:")]
            assert len(child) == 1 and ("being written by another dump" in child[0]
                                        or "already holds a dump" in child[0]), stderr
    folder = logits_dir(tmp_path / "out")
    records = store.read_manifest(folder)
    assert [r.index for r in records] == [1, 2, 3]
    assert all((folder / f).is_file() and (folder / f).stat().st_size > 0 for r in records for f in r.files)


# ---- 2. orphan processes, the lock, SIGTERM ----------------------------------------------------------


def test_sigkill_of_dump_leaves_no_runner_behind(tmp_path: Path) -> None:
    """The probe: after SIGKILL of dump its runner (own session, no parent-death signal) ran to its end."""
    bin_dir = fake_programs(tmp_path / "bin", "modeltest")
    (tmp_path / "bad.csv").write_text("key\n1\n")
    process = subprocess.Popen([sys.executable, "-m", "logitsdump", "dump", "-e", "modeltest", "-bcr", "bad.csv"],
                               cwd=tmp_path, env=env(PATH=f"{bin_dir}:{env()['PATH']}", FAKE_MODE="sleep"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (bin_dir / "pids.json").exists(), 60, process, "the runner and its child")
        runner, grandchild = json.loads((bin_dir / "pids.json").read_text())
        process.kill()
        process.wait()
        wait_for(lambda: not alive(runner) and not alive(grandchild), 15, None, "the orphans to be stopped")
    finally:
        stop(process)
        for pid in json.loads((bin_dir / "pids.json").read_text()) if (bin_dir / "pids.json").exists() else []:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def _many_pairs(tmp_path: Path, count: int = 6000) -> tuple[Path, Path]:
    golden, mine = tmp_path / "g", tmp_path / "m"
    golden.mkdir()
    mine.mkdir()
    torch.save(torch.randn(1, 256), tmp_path / "a.pth")
    torch.save(torch.randn(1, 256), tmp_path / "b.pth")
    a, b = (tmp_path / "a.pth").read_bytes(), (tmp_path / "b.pth").read_bytes()
    for i in range(count):
        (golden / f"logits_x_{i}_0.pth").write_bytes(a)
        (mine / f"logits_x_{i}_0.pth").write_bytes(b)
    return golden, mine


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_compare_stopped_while_pairing_leaves_no_worker(tmp_path: Path, signum: int) -> None:
    """The probe: SIGTERM killed compare silently (status -15) and left its pool workers waiting forever;
    another instance: SIGKILL (the workers die with it)."""
    golden, mine = _many_pairs(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "logitsdump", "compare", "-gp", str(golden), "-mp", str(mine),
                                "-o", "out"], cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_for(lambda: len(children_of(process.pid)) >= 1, 60, process, "compare's pool workers")
        workers = children_of(process.pid)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
        wait_for(lambda: not any(alive(w) for w in workers), 15, None, "the workers to end")
    finally:
        stop(process)
    if signum == signal.SIGTERM:
        assert process.returncode == 143 and "Traceback" not in stderr, stderr
        assert stderr.strip().splitlines()[-1] == "logitsdump compare: interrupted by SIGTERM"
    assert not (tmp_path / "out").is_dir() or not _outputs(tmp_path / "out")


def test_sigterm_to_bcanalyze_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """Another instance of 'SIGTERM handled like SIGINT in every command': bcanalyze reading a large CSV."""
    rows = "".join(f"{i},q{i},{i % 2 == 0}\n" for i in range(600_000))
    (tmp_path / "g.csv").write_text("key,queries,pass\n" + rows)
    (tmp_path / "t.csv").write_text("key,queries,pass\n" + rows.replace("True", "x"))
    process = subprocess.Popen([sys.executable, "-m", "logitsdump", "bcanalyze", "-gp", "g.csv", "-mp", "t.csv",
                                "-o", "out"], cwd=tmp_path, env=env(), stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # inside the reading
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "logitsdump bcanalyze: interrupted by SIGTERM"
    assert not (tmp_path / "out").exists()


def test_the_logits_folder_lock_refuses_a_second_writer(tmp_path: Path) -> None:
    """The lock `--resume` honours, in one process: a second claim of the same folder is one line."""
    from logitsdump.protocol import DumpRequest
    from logitsdump.runner.logits_folder import claim

    folder = tmp_path / "out" / "data" / "CPU" / "p" / "t" / "fp32" / "m" / "logits"
    first = claim(folder, tmp_path / "out", DumpRequest(1, (1,)))
    try:
        with pytest.raises(UserError, match=rf"being written by another dump \(pid {os.getpid()}\)"):
            claim(folder, tmp_path / "out", DumpRequest(1, (1,), resume=True))
    finally:
        first.release()
    claim(folder, tmp_path / "out", DumpRequest(1, (1,), resume=True)).release()  # free again once released


@pytest.mark.slow
def test_resume_waits_for_nobody_but_refuses_while_an_orphan_holds_the_folder(tmp_path: Path) -> None:
    """The probe: a --resume started at once raced the orphaned runner (which crashed in atomic_open)."""
    lock = logits_dir(tmp_path / "out").parent / ".logits.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\nf = open(sys.argv[1], 'w')\n"
                               "fcntl.flock(f, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(120)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        done = _dump(tmp_path, "--resume")
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "is being written by another dump" in done.stderr
    assert not list(logits_dir(tmp_path / "out").parent.glob("logits/*.pth")) and took < 60
    # the lock is the kernel's: once its holder is gone, the same --resume runs
    assert _dump(tmp_path, "--resume").returncode == 0
    with open(lock) as handle:  # and releases it when it ends
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


# ---- 3. half-written result sets -------------------------------------------------------------------


def _file_size_limit(limit: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return preexec


@pytest.mark.parametrize("limit", [600, 5000])
def test_compare_at_a_file_size_limit_leaves_no_partial_set(tmp_path: Path, limit: int) -> None:
    """The probe: at a file-size limit compare failed in one line but left the CSV without the JSON."""
    golden, mine = _pairs(tmp_path, 8)
    done = cli("compare", "-gp", str(golden), "-mp", str(mine), "-o", "out", cwd=tmp_path,
               preexec_fn=_file_size_limit(limit))
    assert done.returncode == 1
    assert "File too large" in one_error_line(done, "compare")
    assert _outputs(tmp_path / "out") == []  # all three or none, no temporary left


def test_compare_with_a_writer_that_fails_leaves_no_partial_set(tmp_path: Path, monkeypatch) -> None:
    """Another instance: the disk fills up while the case JSON, the last of the three, is written."""
    import logitsdump.compare.run as run

    golden, mine = _pairs(tmp_path, 3)

    def full(path, document) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run, "write_cases_json", full)
    with pytest.raises(OSError, match="No space left on device"):
        run_compare(CompareOptions(golden, mine, tmp_path / "out"))
    assert _outputs(tmp_path / "out") == []


@pytest.mark.slow
def test_eval_outputs_appear_together_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    """Another writer of a set: eval's result file, infer results and debug CSVs."""
    from logitsdump.runner import outputs
    from logitsdump.runner.evaluate import EvalOptions, run_eval

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "write_debug_csv", full)
    with pytest.raises(OSError, match="No space left on device"):
        run_eval(EvalOptions(str(examples.model_config("fp32")), str(examples.task_config("boolq")),
                             output_dir=str(tmp_path / "out"), save_debug=True, device="cpu"))
    assert not [p for p in files_under(tmp_path / "out") if p.is_file()]


# ---- 4. special files and unbounded reads ----------------------------------------------------------


def test_fifos_and_devices_as_inputs_are_one_line(tmp_path: Path) -> None:
    """The probe: --tolerances FIFO, bcanalyze -gp FIFO (each hung forever) and --tolerances /dev/zero (read
    until memory ran out); other instances: the task YAML, a dataset file, the bad-case CSV, a samples file."""
    golden, mine = _pairs(tmp_path, 2)
    fifo = _fifo(tmp_path / "fifo")
    (tmp_path / "t.csv").write_text("key,pass\n1,True\n")
    _fifo(tmp_path / "bad.csv")
    cases = {
        "compare --tolerances FIFO": ["compare", "-gp", str(golden), "-mp", str(mine), "-o", "o", "--tolerances",
                                      str(fifo)],
        "compare --tolerances /dev/zero": ["compare", "-gp", str(golden), "-mp", str(mine), "-o", "o",
                                           "--tolerances", "/dev/zero"],
        "bcanalyze -gp FIFO": ["bcanalyze", "-gp", str(fifo), "-mp", "t.csv", "-o", "o"],
        "bcanalyze -mp FIFO.csv": ["bcanalyze", "-gp", "t.csv", "-mp", "bad.csv", "-o", "o"],
        "eval --task_config_path FIFO": ["eval", "--model_config_path", str(examples.model_config("fp32")),
                                         "--task_config_path", str(fifo), "--output_dir", "o", "--device", "cpu"],
        "dump -bcr FIFO": ["dump", "-e", "logitsdump eval", "-bcr", "bad.csv"],
        "dump --from-samples FIFO": ["dump", "--from-samples", str(fifo), "-bcr", "t.csv", "--model_config_path",
                                     str(examples.model_config("fp32"))],
    }
    for name, args in cases.items():
        done = cli(*args, cwd=tmp_path, timeout=60)
        assert done.returncode in (1, 2), (name, done.stderr)
        line = one_error_line(done, args[0])
        assert ("is not a file" in line or "not a regular file" in line or "more than the" in line), (name, line)
    assert not (tmp_path / "o").exists()


def test_a_fifo_in_the_data_is_one_line(tmp_path: Path) -> None:
    """Other instances: a FIFO dataset file read by eval, and a manifest.jsonl FIFO beside compare's logits."""
    task_yaml = tmp_path / "gsm8k.yaml"
    task_yaml.write_text(examples.task_config("gsm8k").read_text().replace(
        "local_dataset_path:", f"local_dataset_path: {tmp_path / 'data'} #"))
    (tmp_path / "data").mkdir()
    _fifo(tmp_path / "data" / "GSM8K.jsonl")
    done = cli("eval", "--model_config_path", str(examples.model_config("fp32")), "--task_config_path",
               str(task_yaml), "--output_dir", "o", "--device", "cpu", cwd=tmp_path, timeout=60)
    assert done.returncode == 1 and "is not a file: it is a FIFO" in one_error_line(done, "eval")
    golden, mine = _pairs(tmp_path / "c", 2)
    _fifo(golden / store.MANIFEST_NAME)
    done = cli("compare", "-gp", str(golden), "-mp", str(mine), "-o", "o", cwd=tmp_path, timeout=60)
    assert done.returncode == 1 and "is not a file: it is a FIFO" in one_error_line(done, "compare")


def test_a_fifo_named_like_a_case_json_does_not_hang_the_report(tmp_path: Path) -> None:
    """The probe: a FIFO named like a cases JSON in a report folder hung the report, printing nothing."""
    golden, mine = _pairs(tmp_path, 2)
    assert cli("compare", "-gp", str(golden), "-mp", str(mine), "-o", "out", cwd=tmp_path).returncode == 0
    fifo = _fifo(tmp_path / "out" / "logits_cmp_cases_29991231235959.json")  # the newest run, by its name
    done = cli("report", "out", cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr  # the folder's newest real run
    done = cli("report", str(fifo), cwd=tmp_path, timeout=60)  # another instance: the FIFO given itself
    assert done.returncode == 1 and "is not a file: it is a FIFO" in one_error_line(done, "report")


def test_small_inputs_are_read_with_a_size_cap(tmp_path: Path) -> None:
    """A tolerances file of 2 MB, a YAML of 20 MB: refused before they are read whole."""
    golden, mine = _pairs(tmp_path, 2)
    (tmp_path / "tol.json").write_text('{"noise_kl": 0.001, "pad": "' + "x" * (2 << 20) + '"}')
    done = cli("compare", "-gp", str(golden), "-mp", str(mine), "-o", "o", "--tolerances", "tol.json", cwd=tmp_path)
    assert done.returncode == 1 and "more than the 1048576" in one_error_line(done, "compare")
    with open(tmp_path / "big.yaml", "wb") as handle:
        handle.truncate(20 << 20)
    done = cli("eval", "--model_config_path", "big.yaml", "--task_config_path", str(examples.task_config("gsm8k")),
               "--output_dir", "o", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 1 and "more than the 16777216" in one_error_line(done, "eval")


# ---- 5. numbers at the edges -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1" * 400, "-" + "9" * 400, "1e999", "NaN", "Infinity", "-1e-3"])
def test_tolerances_are_range_checked_as_floats(tmp_path: Path, value: str) -> None:
    """The probe: a 400-digit integer in --tolerances gave an OverflowError traceback."""
    golden, mine = _pairs(tmp_path, 2)
    (tmp_path / "tol.json").write_text(f'{{"noise_kl": {value}}}')
    done = cli("compare", "-gp", str(golden), "-mp", str(mine), "-o", "o", "--tolerances", "tol.json", cwd=tmp_path)
    assert done.returncode == 1
    line = one_error_line(done, "compare")
    assert "noise_kl" in line and "must be" in line and len(line) < 300, line
    with pytest.raises(UserError, match="must be a finite number"):  # and through the library
        CompareOptions(golden, mine, noise_kl=10**400).validate()


@pytest.mark.parametrize("scale", [1e200, 1e306])
def test_logits_near_floats_limit_give_a_whole_result_set(tmp_path: Path, scale: float) -> None:
    """The probe: float64 logits near 1e200 (KL ~1e200 per case) gave an OverflowError in stats.mean_se and a
    half-written set."""
    golden, mine = _pairs(tmp_path, 4, scale=scale, flip=True)
    done = cli("compare", "-gp", str(golden), "-mp", str(mine), "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    outputs = _outputs(tmp_path / "out")
    assert len(outputs) == 3
    text = next((tmp_path / "out").glob("*.json")).read_text()
    json.loads(text)  # strict JSON: no NaN or Infinity
    assert "NaN" not in text and "Infinity" not in text
    assert cli("report", "out", cwd=tmp_path).returncode == 0


def test_a_case_json_with_extreme_values_still_reports(tmp_path: Path) -> None:
    """The probe: a case JSON with a step KL of -1e308 crashed the report in stats.mean_se."""
    golden, mine = _pairs(tmp_path, 2)
    assert cli("compare", "-gp", str(golden), "-mp", str(mine), "-o", "out", cwd=tmp_path).returncode == 0
    path = next((tmp_path / "out").glob("*.json"))
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("{") and '"steps"' in line:
            case = json.loads(line.rstrip(","))
            case["steps"][0]["kl_divergence"] = -1e308
            case["steps"][0]["signed_dp"] = 1e308
            case["worst_kl"] = 10**400  # another instance: an integer beyond float's range
            lines[i] = json.dumps(case) + ("," if line.endswith(",") else "")
    path.write_text("\n".join(lines) + "\n")
    done = cli("report", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_statistics_are_finite_safe() -> None:
    from logitsdump.compare.stats import mean_se, quantiles, rms_se

    mean, se = mean_se([1e200, 2e200, 3e200])
    assert math.isclose(mean, 2e200) and math.isclose(se, 1e200 / math.sqrt(3))
    assert mean_se([-1e308, -1e308]) == (-1e308, 0.0)
    rms, rms_err = rms_se([1e200, 3e200])
    assert math.isclose(rms, math.sqrt(5) * 1e200) and math.isfinite(rms_err)
    assert mean_se([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(0.6454972243679028))
    assert quantiles([1e308, 1.7e308], [0.5])[0] == pytest.approx(1.35e308)
    assert math.isinf(mean_se([math.inf, 1.0])[0])  # an infinite input: inf, never an exception


# ---- 6. scale: exactness and limits (the timings are bench/scale.py's) ------------------------------


def test_mcnemar_in_log_space_matches_the_exact_integer_sum() -> None:
    import random

    from logitsdump.compare import stats

    def exact(b: int, c: int) -> float:
        n, term, tail = b + c, 1, 1
        for k in range(min(b, c)):  # C(n, k + 1) from C(n, k), in integers
            term = term * (n - k) // (k + 1)
            tail += term
        return min(1.0, 2 * tail / 2**n)

    rng = random.Random(1)
    for _ in range(30):
        b, c = rng.randint(900, 2600), rng.randint(900, 2600)  # across the switch to log space
        assert stats.mcnemar_exact(b, c) == pytest.approx(exact(b, c), rel=1e-9, abs=1e-300)
    started = time.perf_counter()
    assert 0 < stats.mcnemar_exact(499_000, 501_000) < 0.1
    assert time.perf_counter() - started < 0.5  # the probe: minutes of big-integer sums


def test_a_large_run_details_the_cases_that_matter_and_says_so(tmp_path: Path, monkeypatch) -> None:
    """The report no longer renders every case: above the limit, the most severe cases get sections, every case
    a table row, and the page says what it left out (the probe: 5,000 cases, 684 MB, a 105 MB page)."""
    from logitsdump.report import index, load_compare, render_report

    monkeypatch.setattr(index, "DETAIL_LIMIT", 5)
    golden, mine = _pairs(tmp_path, 12, flip=True)  # every case changes its argmax
    for key in range(6):  # half of them identical: they do not matter
        shutil.copy(golden / f"logits_boolq_{key}_0.pth", mine / f"logits_boolq_{key}_0.pth")
    summary = run_compare(CompareOptions(golden, mine, tmp_path / "out"))
    page = render_report(load_compare(summary))
    assert page.count('<section class="case ') == 5
    assert page.count('<tr data-verdict=') == 12
    assert "detail the 5 most severe of the 6 that fail or changed a token" in page
    detailed = [int(n) for n in __import__("re").findall(r'id="case-(\d+)"', page)]
    assert all(n >= 6 for n in detailed)  # the failing ones, not the identical ones


def test_progress_is_shown_for_a_long_step(caplog) -> None:
    from logitsdump.progress import Progress

    now = [0.0]
    with caplog.at_level("INFO", logger="logitsdump"):
        progress = Progress("measuring file pairs", 100, "pair", clock=lambda: now[0])
        for _ in range(100):
            now[0] += 0.1
            progress.update()
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("measuring file pairs: 20 of 100 pairs (20%)")  # after 2 s, then every 5 s
    assert len(lines) == 3 and lines[-1].startswith("measuring file pairs: 100 pairs in 10.0 s")


# ---- 8. model files ---------------------------------------------------------------------------------


def _model_copy(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "model"
    shutil.copytree(examples.TINY_MODEL, model)
    yaml = tmp_path / "m.yaml"
    yaml.write_text("\n".join(f"model_path: {model}" if line.startswith("model_path:") else line
                              for line in examples.model_config("fp32").read_text().splitlines()) + "\n")
    return model, yaml


def _eval(tmp_path: Path, yaml: Path) -> subprocess.CompletedProcess:
    return cli("eval", "--model_config_path", str(yaml), "--task_config_path", str(examples.task_config("boolq")),
               "--output_dir", "o", "--device", "cpu", cwd=tmp_path, timeout=120)


def _edit_config(model: Path, **changes) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage", ["truncated", "vocab_size 1e9", "hidden_size", "num_hidden_layers",
                                    "header garbage", "missing shard"])
def test_damaged_or_mismatched_model_files_are_one_line_before_loading(tmp_path: Path, damage: str) -> None:
    """The probe: a truncated model.safetensors (SafetensorError traceback) and a config.json whose vocab_size
    (1e9) disagrees with the weights (a 256 GB allocation, then a traceback)."""
    model, yaml = _model_copy(tmp_path)
    weights = model / "model.safetensors"
    needle = {"truncated": "cut short", "vocab_size 1e9": "vocab_size 1000000000 disagrees",
              "hidden_size": "hidden_size 96 disagrees", "num_hidden_layers": "num_hidden_layers 7 disagrees",
              "header garbage": "header claims", "missing shard": "the model is incomplete"}[damage]
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "vocab_size 1e9":
        _edit_config(model, vocab_size=1_000_000_000)
    elif damage == "hidden_size":
        _edit_config(model, hidden_size=96)
    elif damage == "num_hidden_layers":
        _edit_config(model, num_hidden_layers=7)
    elif damage == "header garbage":
        weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    else:
        weights.rename(model / "model-00001-of-00002.safetensors")
        (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    started = time.monotonic()
    done = _eval(tmp_path, yaml)
    assert done.returncode == 1
    line = one_error_line(done, "eval")
    assert needle in line and str(model) in line, line
    assert time.monotonic() - started < 60 and not (tmp_path / "o" / "results").exists()


# ---- 9. small ones -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["empty folders", "no common file names"])
def test_calibrate_with_nothing_to_measure_is_one_line_and_writes_nothing(tmp_path: Path, layout: str) -> None:
    """The probe: exit 0 and `"tolerances": {}` (which compare then refused)."""
    golden, mine = tmp_path / "g", tmp_path / "m"
    golden.mkdir()
    mine.mkdir()
    if layout == "no common file names":
        torch.save(torch.randn(8), golden / "logits_boolq_1_0.pth")
        torch.save(torch.randn(8), mine / "logits_boolq_2_0.pth")
    for args in (["calibrate", "-gp", "g", "-mp", "m", "-o", "out"],
                 ["compare", "-gp", "g", "-mp", "m", "-o", "out", "--calibrate"]):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 1
        assert "nothing to calibrate on" in one_error_line(done, args[0])
        assert not list(tmp_path.rglob("logits_cmp_tolerances_*"))


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


def test_examples_on_a_full_disk_is_one_line(tmp_path: Path) -> None:
    """The probe: a shutil.Error traceback (copytree gathers the errors without an errno)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, "64k"):
        pytest.skip("mounting a small tmpfs needs root with CAP_SYS_ADMIN")
    try:
        done = cli("examples", str(disk / "ex"), cwd=tmp_path)
        assert done.returncode == 1
        assert "No space left on device" in one_error_line(done, "examples")
        assert not (disk / "ex").exists()  # no half copy
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_examples_cut_short_at_any_file_leave_nothing(tmp_path: Path, monkeypatch) -> None:
    """Another instance: the disk fills up at the third file copied (in the model's folder)."""
    from logitsdump.errors import WriteError

    plain, calls = shutil.copyfile, []

    def fills_up(source, destination, *args, **kwargs):
        calls.append(destination)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(destination))
        return plain(source, destination, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", fills_up)
    with pytest.raises(WriteError, match="No space left on device: free some space"):
        examples.copy_examples(tmp_path / "ex")
    assert not (tmp_path / "ex").exists()
