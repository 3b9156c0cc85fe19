"""launch.py: command validation and running the child for real (fake runners on PATH)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from logitsdump.errors import LaunchError, UsageError
from logitsdump.launch import launch, split_command, validate_command
from logitsdump.protocol import DumpRequest

from helpers import fake_programs, fake_record


def env_with(folder: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


# ---- validation ---------------------------------------------------------------------------------


def test_split_on_white_space() -> None:
    assert split_command("  modeltest --a 1\t--b=2\n") == ["modeltest", "--a", "1", "--b=2"]


@pytest.mark.parametrize(
    "command",
    [
        "modeltest; rm -rf /",
        "modeltest | tee x",
        "modeltest $HOME",
        "modeltest `id`",
        "modeltest > out",
        "modeltest && ls",
    ],
)
def test_unsafe_characters_are_usage_errors(command: str) -> None:
    with pytest.raises(UsageError, match="unsafe character") as info:
        split_command(command)
    assert info.value.exit_code == 2


def test_empty_command() -> None:
    with pytest.raises(LaunchError, match="empty") as info:
        split_command("   ")
    assert info.value.exit_code == 1


def test_program_must_be_allowed(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="must start with torchrun, modeltest or logitsdump"):
        validate_command("python run.py", path=str(tmp_path))


def test_missing_program(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="command not found on PATH: modeltest"):
        validate_command("modeltest --x", path=str(tmp_path))


@pytest.mark.parametrize(
    ("command", "ours"),
    [
        ("modeltest --a", False),
        ("model-test", False),
        ("logitsdump eval", True),
        ("torchrun --nproc_per_node 2 --no-python logitsdump eval", True),
        ("torchrun --no-python modeltest", False),
    ],
)
def test_runner_detection(tmp_path: Path, command: str, ours: bool) -> None:
    folder = fake_programs(tmp_path / "bin", "modeltest", "model-test", "logitsdump", "torchrun")
    cmd = validate_command(command, path=str(folder))
    assert cmd.is_logitsdump is ours and cmd.executable.startswith(str(folder))


# ---- running ------------------------------------------------------------------------------------


def test_protocol_values_and_environ_untouched(tmp_path: Path) -> None:
    folder = fake_programs(tmp_path / "bin", "modeltest")
    before = dict(os.environ)
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    request = DumpRequest(token_max_length=3, indices=(1, 2, 5), logits_fp32=True)
    launch("modeltest --output_dir x", request, base_env=env_with(folder))
    got = fake_record(folder)
    assert got["BAD_CASE_LOGITS_DUMP"] == "True"
    assert got["LOGITS_DUMP_TOKEN_MAX_LENGTH"] == "3"
    assert got["BAD_CASE_LIST"] == "[1, 2, 5]"
    assert got["LOGITSDUMP_LOGITS_FP32"] == "1" and got["LOGITSDUMP_RESUME"] is None
    assert got["argv"][1:] == ["--output_dir", "x"]
    assert dict(os.environ) == before
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_child_status_is_reported(tmp_path: Path) -> None:
    folder = fake_programs(tmp_path / "bin", "modeltest")
    with pytest.raises(LaunchError, match="exited with status 3") as info:
        launch("modeltest", DumpRequest(1, (1,)), base_env=env_with(folder, FAKE_MODE="exit3"))
    assert info.value.exit_code == 1


def test_child_killed_by_signal(tmp_path: Path) -> None:
    folder = fake_programs(tmp_path / "bin", "modeltest")
    with pytest.raises(LaunchError, match="killed by signal SIGKILL"):
        launch("modeltest", DumpRequest(1, (1,)), base_env=env_with(folder, FAKE_MODE="kill"))


def test_long_list_goes_to_a_file_for_our_runner(tmp_path: Path) -> None:
    folder = fake_programs(tmp_path / "bin", "logitsdump")
    request = DumpRequest(1, tuple(range(100_000, 130_000)))
    launch("logitsdump eval", request, base_env=env_with(folder))
    got = fake_record(folder)
    assert got["BAD_CASE_LIST"] is None
    assert got["list_file_text"] == request.list_literal()
    assert not Path(got["LOGITSDUMP_BAD_CASE_LIST_FILE"]).exists()


def test_long_list_is_refused_for_modeltest(tmp_path: Path) -> None:
    folder = fake_programs(tmp_path / "bin", "modeltest")
    with pytest.raises(LaunchError, match=r"too long for one environment variable.*Split the bad-case CSV"):
        launch("modeltest", DumpRequest(1, tuple(range(100_000, 130_000))), base_env=env_with(folder))
    assert not (folder / "record.json").exists()
