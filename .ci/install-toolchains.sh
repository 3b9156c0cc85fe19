#!/bin/sh
# Install the HumanEval-X toolchains (g++, go, javac/java, node) from Debian's packages when missing.
# Run as root (or with sudo available). Safe to run again: it installs only what is absent.
set -eu
missing=""
command -v g++ >/dev/null 2>&1 || missing="$missing g++"
command -v go >/dev/null 2>&1 || missing="$missing golang"
{ command -v javac >/dev/null 2>&1 && command -v java >/dev/null 2>&1; } || missing="$missing default-jdk-headless"
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
if [ -z "$missing" ]; then
    echo "install-toolchains: g++, go, javac/java and node are already installed"
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "install-toolchains: installing$missing"
$sudo apt-get update
# shellcheck disable=SC2086  # the package list is meant to split
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends $missing
for tool in g++ go javac java node; do
    command -v "$tool" >/dev/null 2>&1 || { echo "install-toolchains: $tool still missing" >&2; exit 1; }
done
