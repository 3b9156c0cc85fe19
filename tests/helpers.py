"""Helpers for tests that run the installed `logitsdump` command as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from logitsdump.demo import examples
from logitsdump.runner.evaluate import EvalOptions

from conftest import PROTOCOL_VARS


def cli_env(**extra: str) -> dict[str, str]:
    """A clean environment for a `logitsdump` subprocess (offline, one thread, no protocol vars)."""
    env = {k: v for k, v in os.environ.items() if k not in PROTOCOL_VARS}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    # the venv's console scripts (logitsdump, torchrun) first, whether or not the venv is activated
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m logitsdump ARGS`; capture text output."""
    return subprocess.run(
        [sys.executable, "-m", "logitsdump", *args],
        cwd=cwd, env=env if env is not None else cli_env(), capture_output=True, text=True, timeout=timeout,
    )


#: A stand-in for modeltest, torchrun or our own runner: records the protocol variables (and the
#: list file's text) in record.json beside itself, prints a line, then acts as FAKE_MODE says:
#: exit3, kill (SIGKILL itself), sleep / stubborn (start a grandchild, write pids.json, sleep;
#: stubborn ignores SIGINT and SIGTERM), write (empty logits files as a dump would name them).
FAKE_RUNNER = """\
import ast, json, os, pathlib, signal, subprocess, sys, time
here = pathlib.Path(__file__).resolve().parent
names = ["BAD_CASE_LOGITS_DUMP", "LOGITS_DUMP_TOKEN_MAX_LENGTH", "BAD_CASE_LIST",
         "LOGITSDUMP_BAD_CASE_LIST_FILE", "LOGITSDUMP_RESUME", "LOGITSDUMP_LOGITS_FP32"]
record = {name: os.environ.get(name) for name in names}
record["argv"] = sys.argv
list_file = os.environ.get("LOGITSDUMP_BAD_CASE_LIST_FILE")
if list_file:
    record["list_file_text"] = pathlib.Path(list_file).read_text()
(here / "record.json").write_text(json.dumps(record))
print("hello from the child", flush=True)
mode = os.environ.get("FAKE_MODE", "")
if mode == "exit3":
    print("the child failed", file=sys.stderr)
    sys.exit(3)
if mode == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if mode in ("sleep", "stubborn"):
    ready = here / "grandchild-ready"
    code = "import pathlib, signal, sys, time\\n"
    if mode == "stubborn":
        code += "signal.signal(signal.SIGINT, signal.SIG_IGN)\\n"
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    code += "pathlib.Path(sys.argv[1]).touch(); time.sleep(120)"
    grandchild = subprocess.Popen([sys.executable, "-c", code, str(ready)])
    while not ready.exists():
        time.sleep(0.01)
    (here / "pids.tmp").write_text(json.dumps([os.getpid(), grandchild.pid]))
    os.replace(here / "pids.tmp", here / "pids.json")
    time.sleep(120)
if mode == "write":
    argv = sys.argv
    out = argv[argv.index("--output_dir") + 1] if "--output_dir" in argv else "."
    folder = pathlib.Path(out, "data", "CPU", "precision_test", "boolq", "fp32", "fake", "logits")
    folder.mkdir(parents=True, exist_ok=True)
    indices = ast.literal_eval(os.environ["BAD_CASE_LIST"])
    for index in indices[: int(os.environ.get("FAKE_LIMIT", len(indices)))]:
        for t in range(int(os.environ["LOGITS_DUMP_TOKEN_MAX_LENGTH"])):
            (folder / f"logits_dev_{index}_{t}.pth").write_bytes(b"")
"""


def fake_programs(folder: Path, *names: str) -> Path:
    """`folder` (created if needed) holding executable FAKE_RUNNER copies named `names`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        script = folder / name
        script.write_text(f"#!{sys.executable}\n{FAKE_RUNNER}")
        script.chmod(0o755)
    return folder


def fake_record(folder: Path) -> dict:
    """What the last fake program run from `folder` recorded."""
    return json.loads((folder / "record.json").read_text())


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def eval_options(output_dir: Path | str, task: str, dtype: str = "fp32", **changes) -> EvalOptions:
    """EvalOptions for the shipped tiny-model and task YAMLs, on the CPU; `changes` sets other fields."""
    return EvalOptions(str(examples.model_config(dtype)), str(examples.task_config(task)),
                       output_dir=str(output_dir), device="cpu", **changes)  # fmt: skip


#: The spec's boolq.yaml (modeltest.md §2.2), verbatim.
SPEC_BOOLQ = """\
task_type: precision
task_name: boolq
local_dataset_path: data/boolq
prompt: "{title} -- {passage}\\nQuestion: {text}?\\nAnswer:"
choices: ["true", "false"]
shots: 0
requested_max_input_length: 3072
requested_max_output_length: 1
need_logits: true
metric: {metric_type: acc}
metadata: {version: 1.0}
subject_mapping: {dev.jsonl: {name: dev}}
"""


# The bcanalyze example of msit-cli.md §2: two result CSVs and the bad-case CSV expected from them.
RESULT_HEADER = "key,queries,input_token_ids,output_token_ids,test_result,golden_result,pass\n"
GOLDEN_CSV = RESULT_HEADER + (
    '1,Is the sky blue?,"[5, 6]","[7, 8]",yes,yes,False\n2,q2,[9],[10],a,a,True\n3,q3,[1],[2],x,x,True\n'
)
TEST_CSV = RESULT_HEADER + (
    '1,Is the sky blue?,"[5, 6]","[7, 8, 9]",,yes,Correct\n2,q2,[9],[10],b,a,wrong\n3,q3,[1],[2],,,TRUE\n'
)
#: The example output of msit-cli.md §2, byte for byte.
BCANALYZE_EXPECTED = (
    "key,queries,input_token_ids_golden,input_token_ids_test,output_token_ids_golden,output_token_ids_test,"
    "passed_golden,passed_test\n"
    '1,Is the sky blue?,"[5, 6]","[5, 6]","[7, 8]","[7, 8, 9]",false,true\n'
    "2,q2,[9],[9],[10],[10],true,false\n"
)


#: msit-cli.md §4, row `logits_dev.jsonl_7_0.pth`: tensors solved so that our float64 metrics
#: give msit's printed values exactly (sum|g| = 32, max g - max m = 0.6015625, max m in [8, 16)).
#: A few ulps away from [10, 7, -8, 7], chosen by a search so that both implementations of
#: `pair_sums` (the C pair loop and the numpy path) round to exactly msit's printed KL.
ROW7_G = np.array([10.0, 7.000000000000001, -8.0, 6.999999999999999])
ROW7_M = np.array([9.3984375, 8.140565779930418, -9.687172859140887, 5.267613410131603])


def build_tiny_model(out: Path, head_dim: int) -> Path:
    """The embedded tiny model's architecture with `head_dim`-wide heads (vLLM needs >= 32), built by
    tools/make_tiny_model.py into `out`."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "make_tiny_model.py"
    subprocess.run([sys.executable, str(tool), "--head-dim", str(head_dim), "--out", str(out)], check=True,
                   capture_output=True, timeout=120)
    return out


def model_yaml_for(path: Path, model_dir: Path, name: str, data_type: str = "fp32",
                   framework: str = "Huggingface") -> Path:
    """The shipped tiny-model YAML pointed at `model_dir`, with another name, dtype and framework."""
    text = examples.model_config("fp32").read_text(encoding="utf-8")
    text = text.replace("model_path: ../../model/tiny_llama", f"model_path: {model_dir}")
    text = text.replace("model_name: tiny_llama", f"model_name: {name}").replace("data_type: fp32",
                                                                                 f"data_type: {data_type}")
    text = text.replace("requested_gpu_framework: Huggingface", f"requested_gpu_framework: {framework}")
    path.write_text(text, encoding="utf-8")
    return path


#: docs/tasks.md and the heading of its table of modeltest's tasks, which tests read row by row.
TASKS_DOC = Path(__file__).resolve().parents[1] / "docs" / "tasks.md"
TASKS_DOC_SECTION = "## modeltest's tasks and their status"


@dataclass(frozen=True)
class TaskRow:
    """One row of the status table of docs/tasks.md."""

    modeltest_yaml: str  # "" where modeltest has none (longbench_e)
    task_name: str
    status: str
    sample_yaml: str  # "" for the tasks not supported

    @property
    def id(self) -> str:
        return self.modeltest_yaml or self.task_name

    @property
    def supported(self) -> bool:
        return self.status.startswith("supported")


def _cell(text: str) -> str:
    text = text.strip()
    return "" if text == "—" else text.strip("`")


def task_table_rows() -> list[TaskRow]:
    """The rows of the status table of docs/tasks.md."""
    section = TASKS_DOC.read_text(encoding="utf-8").split(TASKS_DOC_SECTION, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| modeltest YAML | task_name | status | sample YAML |"), lines[0]
    rows = []
    for line in lines[2:]:  # after the header and its rule
        cells = [_cell(c) for c in line.strip().strip("|").split("|")]
        assert len(cells) == 4, line
        rows.append(TaskRow(*cells))
    return rows


def replayed_dump(root: Path, dtype: str, task: str, replay: Path | None,
                  cases: tuple[int, ...] = (0, 1, 2, 3)) -> Path:
    """Cases `cases` of `task` dumped (8 tokens) in-process by our runner on the tiny model in `dtype`,
    replaying `replay` when given; the logits folder."""
    import pytest

    from logitsdump.runner.evaluate import run_eval

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BAD_CASE_LOGITS_DUMP", "True")
        mp.setenv("LOGITS_DUMP_TOKEN_MAX_LENGTH", "8")
        mp.setenv("BAD_CASE_LIST", str(list(cases)))
        if replay is not None:
            mp.setenv("LOGITSDUMP_REPLAY_DIR", str(replay))
        run_eval(EvalOptions(model_config_path=str(examples.model_config(dtype)),
                             task_config_path=str(examples.task_config(task)), output_dir=str(root / dtype),
                             device="cpu"))
    (folder,) = (root / dtype).glob(f"data/*/precision_test/{task}/*/*/logits")
    return folder
