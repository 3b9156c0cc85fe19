"""bench/gpu_check.py's parts that run without a GPU: its command line and the vLLM-vs-HF checks' helpers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dump(folder: Path, shift: float = 0.0) -> Path:
    import torch

    folder.mkdir(parents=True)
    for step in range(3):
        logits = torch.linspace(-2.0, 2.0, 50) * (step + 1)
        logits[7 + step] += shift
        torch.save(logits, folder / f"logits_GSM8K.jsonl_0_{step}.pth")
    return folder


def test_eval_command_names_the_backend(gpu_check, tmp_path):
    assert gpu_check.eval_cmd(tmp_path / "m.yaml", tmp_path, "cuda", "vllm").endswith("--device cuda --backend vllm")
    assert "--backend" not in gpu_check.eval_cmd(tmp_path / "m.yaml", tmp_path, "cuda")


def test_max_logit_delta_over_common_files(gpu_check, tmp_path):
    golden, test = _dump(tmp_path / "a"), _dump(tmp_path / "b", shift=0.25)
    worst, files = gpu_check.max_logit_delta(golden, test)
    assert files == 3 and worst == pytest.approx(0.25)


def test_token_columns_of_a_debug_csv(gpu_check, tmp_path):
    csv = tmp_path / "debug.csv"
    csv.write_text("key,queries,input_token_ids,output_token_ids,test_result,golden_result,pass\n"
                   '0,q,"[1, 2]","[5, 6]",a,b,False\n1,r,[3],[7],c,c,True\n', encoding="utf-8")
    assert gpu_check.token_columns(csv) == [("0", "[5, 6]"), ("1", "[7]")]


@pytest.mark.slow  # two logitsdump processes
def test_compare_verdicts_counts_the_good_cases(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", cli_env()["PATH"])
    same = gpu_check.compare_verdicts(_dump(tmp_path / "a"), _dump(tmp_path / "b"), tmp_path / "cmp-same", 1e-3)
    assert same == (1, 1)
    apart = gpu_check.compare_verdicts(tmp_path / "a", _dump(tmp_path / "c", shift=5.0), tmp_path / "cmp-apart", 1e-3)
    assert apart == (0, 1)


@pytest.mark.slow  # starts the script (torch import)
@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_flag_without_vllm_says_how_to_install():
    done = subprocess.run([sys.executable, str(SCRIPT), "--vllm"], env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "logitsdump[vllm]" in done.stderr


@pytest.mark.slow  # starts the script (torch import)
def test_without_cuda_there_is_nothing_to_check():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the real check runs instead")
    done = subprocess.run([sys.executable, str(SCRIPT)], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "no CUDA device" in done.stderr
