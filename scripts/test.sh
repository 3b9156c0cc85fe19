#!/usr/bin/env bash
# Set everything up and run the whole test suite (the README's test command; CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PATH="$PWD/.venv/bin:$PATH"  # the runner command of `dump -e "logitsdump eval ..."`
.venv/bin/ruff check src tests bench tools
.venv/bin/python -m pytest -q "$@"
