#!/usr/bin/env bash
# The VS Code extension: unit tests, the .vsix, and the end-to-end test in real
# VS Code (code-server) with the real embedded model. Installs what it needs.
# Needs the server built (target/debug/docsmith) and the default model installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash vscode-extension/e2e/install.sh
cd vscode-extension
npm test
npm run typecheck
npm run package
node e2e/run.mjs --vsix docsmith.vsix --server ../target/debug/docsmith
echo "screenshots and result: vscode-extension/e2e/artifacts/"
