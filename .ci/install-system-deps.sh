#!/bin/sh
# Debian packages the tests use: the HumanEval-X toolchains and chromium (the report's browser test).
# Installs only what is missing; safe to run again.
set -eu
here=$(dirname "$0")
"$here/install-toolchains.sh"
if ! command -v chromium >/dev/null 2>&1; then
    echo "install-system-deps: installing chromium"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi
