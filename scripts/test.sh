#!/usr/bin/env bash
# All tests, on a fresh machine: installs what they need (system packages, the
# default model, and the small 0.5B model the local-provider tests load), then
# runs unit and end-to-end tests (the latter on the real embedded model).
set -euo pipefail
cd "$(dirname "$0")/.."
DOCSMITH_PROFILE=debug bash scripts/setup.sh
./target/debug/docsmith model install qwen2.5-coder-0.5b
export CARGO_TERM_COLOR=never
cargo test --workspace 2>&1
