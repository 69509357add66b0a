#!/usr/bin/env bash
# Installs what docsmith needs on a fresh Debian/Ubuntu machine, idempotently:
# system packages (cmake and libclang for llama.cpp, bubblewrap for the sandbox),
# ruff and bandit (optional checkers), and the embedded default model.
# Usage: [DOCSMITH_PROFILE=debug] scripts/setup.sh [MODEL]   (MODEL defaults to qwen2.5-coder-1.5b)
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-${DOCSMITH_SETUP_MODEL:-qwen2.5-coder-1.5b}}"

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v clang >/dev/null || need+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v python3 >/dev/null || need+=(python3 python3-pip)
# Debian's own interpreter and venv: the sandbox test of a venv's packages.
[ -x /usr/bin/python3 ] || need+=(python3)
dpkg -s python3-venv >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi
# Optional checkers used by validation and the security check when on PATH.
if ! command -v ruff >/dev/null || ! command -v bandit >/dev/null; then
  python3 -m pip install -q ruff bandit || echo "setup: ruff/bandit not installed; docsmith will skip them and say so"
fi
# DOCSMITH_PROFILE=debug reuses the test build (CI) instead of a second, release build.
profile="${DOCSMITH_PROFILE:-release}"
if [ "$profile" = release ]; then cargo build --release -q -p docsmith; else cargo build -q -p docsmith; fi
"./target/$profile/docsmith" model install "$model"
