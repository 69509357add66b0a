#!/usr/bin/env bash
# All tests, on a fresh machine: installs what they need (system packages, the
# model), then runs unit, protocol and end-to-end tests (the latter on the real
# embedded model).
set -euo pipefail
cd "$(dirname "$0")/.."
DOCSMITH_PROFILE=debug bash scripts/setup.sh
export CARGO_TERM_COLOR=never
cargo test --workspace 2>&1
