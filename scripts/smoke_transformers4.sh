#!/usr/bin/env bash
# Smoke test on the newest transformers 4.x: in its own venv (.venv-tf4), evaluate and dump
# the embedded tiny model, and check the files equal those of the main venv (transformers 5.x).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
VENV=.venv-tf4 TRANSFORMERS_SPEC="transformers==4.57.6" scripts/setup.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
assets=src/logitsdump/demo/assets/configs
run() {  # run VENV OUT: eval gsm8k, then dump cases 1 and 4 with 5 tokens
  local venv=$1 out=$2
  "$venv/bin/logitsdump" eval --model_config_path $assets/model/tiny_llama_fp32.yaml \
    --task_config_path $assets/task/gsm8k.yaml --output_dir "$out" --save_debug_enable > /dev/null
  printf 'key,passed_golden,passed_test\n1,true,false\n4,false,true\n' > "$work/bad.csv"
  PATH="$PWD/$venv/bin:$PATH" "$venv/bin/logitsdump" dump -bcr "$work/bad.csv" -tr 5 -e "logitsdump eval --model_config_path \
    $assets/model/tiny_llama_fp32.yaml --task_config_path $assets/task/gsm8k.yaml --output_dir $out/dump" > /dev/null
}
run .venv-tf4 "$work/tf4"
run .venv "$work/tf5"
debug=debug/CPU/precision_test/gsm8k/fp32/tiny_llama/gsm8k_pa_batch1_tp1_debug_info.csv
cmp "$work/tf4/$debug" "$work/tf5/$debug"
logits=dump/data/CPU/precision_test/gsm8k/fp32/tiny_llama/logits
n=$(ls "$work/tf4/$logits"/*.pth | wc -l)
[ "$n" -eq 10 ] || { echo "expected 10 logits files, found $n"; exit 1; }
.venv/bin/logitsdump compare -gp "$work/tf4/$logits" -mp "$work/tf5/$logits" -o "$work/cmp" > "$work/cmp.txt"
grep -q "identical 2" "$work/cmp.txt" || { cat "$work/cmp.txt"; echo "expected 2 identical cases"; exit 1; }
echo "transformers 4.x smoke test: eval and dump match transformers 5.x (debug CSV identical, $n logits files identical)"
