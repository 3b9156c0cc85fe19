"""The sandbox runs generated code in a separate, limited process."""

from __future__ import annotations

import json
import os
import time

import pytest

from logitsdump.demo import examples
from logitsdump.runner.sandbox import run_python
from logitsdump.runner.tasks.humaneval import run_problem

PROBLEMS = [
    json.loads(line)
    for line in (examples.DATASETS / "humaneval" / "human-eval.jsonl").read_text().splitlines()
    if line.strip()
]


@pytest.mark.parametrize("problem", PROBLEMS, ids=[p["task_id"] for p in PROBLEMS])
def test_canonical_solutions_pass(problem):
    passed, status = run_problem(problem, problem["canonical_solution"])
    assert passed, status


def test_wrong_solution_fails():
    passed, status = run_problem(PROBLEMS[0], "    return a - b\n")
    assert not passed
    assert status.startswith("failed: AssertionError")


def test_plain_run_and_output():
    result = run_python("import sys\nprint('hello')\nprint('oops', file=sys.stderr)\n")
    assert result.passed and result.status == "passed"
    assert result.stdout == "hello\n" and result.stderr == "oops\n"


def test_exception_fails_with_its_last_line():
    result = run_python("raise KeyError('boom')\n")
    assert not result.passed and result.returncode == 1
    assert result.status == "failed: KeyError: 'boom'"


def test_infinite_loop_times_out_quickly():
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout_s=0.5)
    assert result.timed_out and not result.passed and result.status == "timed out"
    assert time.monotonic() - start < 5


def test_timeout_kills_the_whole_group():
    marker = f"logitsdump-test-{os.getpid()}-{time.monotonic_ns()}"  # pids inside the sandbox are its own
    code = "import subprocess, sys, time\n"
    code += f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
    code += "print(p.pid, flush=True)\ntime.sleep(60)\n"
    result = run_python(code, timeout_s=2)
    assert result.timed_out and result.stdout.split()  # the grandchild was started
    time.sleep(0.2)
    assert not _running_with(marker)


def _running_with(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line holds `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if marker.encode() not in handle.read():
                    continue
            with open(f"/proc/{entry}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry))
        except OSError:
            continue
    return found


def test_memory_hog_is_stopped():
    start = time.monotonic()
    result = run_python("blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))\n", timeout_s=10)
    assert not result.passed and not result.timed_out
    assert "MemoryError" in result.status
    assert time.monotonic() - start < 10


def test_big_file_is_stopped():
    result = run_python("open('big', 'wb').write(b'x' * (64 << 20))\n", timeout_s=10, file_size_bytes=1 << 20)
    assert not result.passed


def test_runs_isolated_in_a_temporary_folder():
    code = "import os, sys\nprint(os.getcwd())\nprint(sorted(os.environ))\nprint(sys.flags.isolated)\n"
    result = run_python(code)
    cwd, env, isolated = result.stdout.splitlines()
    assert cwd != os.getcwd() and "logitsdump-sandbox-" in cwd
    assert not os.path.exists(cwd)  # removed afterwards
    assert "PYTHONPATH" not in env and "HOME" in env
    assert isolated == "1"


def test_runner_process_is_unaffected():
    import resource

    before = resource.getrlimit(resource.RLIMIT_AS), os.getcwd(), dict(os.environ)
    run_python("import os\nos.chdir('/')\nos.environ['X'] = '1'\nraise SystemExit(3)\n")
    run_python("while True:\n    pass\n", timeout_s=0.3)
    assert (resource.getrlimit(resource.RLIMIT_AS), os.getcwd(), dict(os.environ)) == before
    assert bytearray(64 << 20)  # this process may still allocate freely
