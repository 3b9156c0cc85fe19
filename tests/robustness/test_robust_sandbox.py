"""Untrusted code (issue 27, class 7): a HumanEval dataset's `test` field and a model's completion run behind
the boundary `runner.sandbox` sets up (namespaces and Landlock), or are refused in one line where there is
none, unless LOGITSDUMP_ALLOW_CODE_EVAL=1.

The payloads write outside, read a file outside, open sockets (TCP and UDP to a listener of ours), fork without
limit, and signal the parent and another process. Where this machine offers no boundary the payload tests
are skipped, unless LOGITSDUMP_EXPECT_SANDBOX=1 (CI sets it) makes that a failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logitsdump.errors import ConfigError
from logitsdump.runner import sandbox
from logitsdump.runner.tasks.humaneval import HumanEvalTask, run_problem


@pytest.fixture
def boundary() -> None:
    found = sandbox.boundary()
    if not found.available:
        if os.environ.get("LOGITSDUMP_EXPECT_SANDBOX") == "1":
            pytest.fail(f"no sandbox on this machine: {found.reason}")
        pytest.skip(f"no sandbox on this machine: {found.reason}")


def _problem(test: str) -> dict[str, str]:
    """A HumanEval problem whose `test` field is the payload (the canonical completion is harmless)."""
    return {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n", "canonical_solution": "    return a + b\n",
            "test": test, "entry_point": "add"}


def _sandboxed(parent: int) -> list[int]:
    """Live processes of the sandbox started by process `parent` (the bootstrap's command line names it;
    forked children keep that command line)."""
    found = []
    needle = f'"parent": {parent},'.encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                if b"logitsdump.runner.confine" in cmdline and needle in cmdline:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if stat[stat.rfind(")") + 2] != "Z":
                        found.append(int(entry))
            except OSError:
                continue
    return found


def test_the_test_field_cannot_write_outside(tmp_path: Path, boundary: None) -> None:
    """The probe: a HumanEval `test` field wrote a file outside the output folder (as root)."""
    targets = [tmp_path / "pwned.txt", Path.home() / f".logitsdump-pwned-{os.getpid()}"]
    code = "".join(f"    open({str(t)!r}, 'w').write('x')\n" for t in targets)
    passed, status = run_problem(_problem(f"def check(f):\n{code}"), "    return a + b\n")
    assert not passed and "PermissionError" in status, status
    assert not any(t.exists() for t in targets)


def test_the_test_field_cannot_read_outside(tmp_path: Path, boundary: None) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    for path in (secret, Path("/etc/shadow"), Path(f"/proc/{os.getpid()}/environ")):
        result = sandbox.run_python(f"print(open({str(path)!r}).read())")
        assert not result.passed and "PermissionError" in result.status, (path, result.status)
        assert "s3cr3t" not in result.stdout


def test_the_test_field_has_no_network(boundary: None) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        for code in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
                     f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                     f"s.sendto(b'x', ('127.0.0.1', {port}))\n",
                     "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n"):
            result = sandbox.run_python(code, timeout_s=5)
            assert not result.passed and not result.timed_out, result.status
            assert "Error" in result.status, result.status  # refused or unreachable, at once


def test_a_fork_bomb_is_capped_and_cleaned_up(boundary: None) -> None:
    started = time.monotonic()
    result = sandbox.run_python("import os\nwhile True:\n    os.fork()\n", timeout_s=5)
    assert not result.passed
    assert time.monotonic() - started < 15
    time.sleep(0.2)
    assert not _sandboxed(os.getpid())  # nothing left
    counted = sandbox.run_python("import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
                                 "            import time\n            time.sleep(5)\n            os._exit(0)\n"
                                 "        n += 1\nexcept OSError:\n    print(n)\n", timeout_s=8)
    assert counted.passed and int(counted.stdout) < sandbox.MAX_PROCESSES, counted.status


def test_the_test_field_cannot_signal_the_parent_or_others(boundary: None) -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for code in (f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n",
                     f"import os, signal\nos.kill({victim.pid}, signal.SIGKILL)\n",
                     "import os, signal\nos.kill(os.getppid() or 1, signal.SIGKILL)\n",
                     "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
                     "import os, signal\nos.killpg(0, signal.SIGKILL)\n"):
            sandbox.run_python(code)
        assert victim.poll() is None  # alive, and so are we
    finally:
        victim.kill()
        victim.wait()


def test_without_a_boundary_humaneval_is_refused_before_the_model_loads(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sandbox, "boundary", lambda: sandbox.Boundary(False, "Landlock (not in this kernel)"))
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    with pytest.raises(ConfigError) as raised:
        HumanEvalTask().load_cases(None, tmp_path)  # type: ignore[arg-type]  # refused before the config is read
    message = str(raised.value)
    assert "\n" not in message and "no sandbox" in message and sandbox.ALLOW_ENV in message
    with pytest.raises(ConfigError):
        sandbox.run_python("print(1)")  # and at run time, should a caller skip the check


def test_the_opt_in_runs_the_code_with_its_limits_only(monkeypatch, caplog) -> None:
    monkeypatch.setattr(sandbox, "boundary", lambda: sandbox.Boundary(False, "user namespaces are disabled"))
    monkeypatch.setenv(sandbox.ALLOW_ENV, "1")
    sandbox._warn_unconfined.cache_clear()
    with caplog.at_level("WARNING", logger="logitsdump"):
        result = sandbox.run_python("import os\nprint(os.getpid() != 1)\n")
    assert result.passed and result.stdout.strip() == "True"  # outside any PID namespace
    assert any("WITHOUT a sandbox" in r.getMessage() for r in caplog.records)
    assert sandbox.run_python("while True:\n    pass\n", timeout_s=0.5).timed_out  # the limits still hold


def test_the_boundary_is_detected_here() -> None:
    """The probe ran as root with all capabilities: Landlock and user namespaces are there; say why not."""
    found = sandbox.boundary()
    if os.environ.get("LOGITSDUMP_EXPECT_SANDBOX") == "1":
        assert found.available, found.reason
    assert found.available or found.reason


def test_sigkill_of_the_evaluation_kills_the_sandboxed_code(tmp_path: Path, boundary: None) -> None:
    """No process of ours outlives the command: the sandbox dies with the process that started it."""
    script = ("from logitsdump.runner import sandbox\n"
              "assert sandbox.boundary().available\nprint('probed', flush=True)\n"  # the probe is over
              "sandbox.run_python('import time\\ntime.sleep(60)', timeout_s=60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "probed"
        deadline = time.monotonic() + 60
        while len(_sandboxed(parent.pid)) < 2 and time.monotonic() < deadline:  # the bootstrap and process 1
            time.sleep(0.05)
        assert len(_sandboxed(parent.pid)) >= 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _sandboxed(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _sandboxed(parent.pid)
    finally:
        parent.kill()
        parent.wait()
        for pid in _sandboxed(parent.pid):
            os.kill(pid, signal.SIGKILL)
