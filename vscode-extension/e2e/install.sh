#!/usr/bin/env bash
# Installs what the VS Code end-to-end test needs, idempotently: Debian's
# chromium, libkrb5-dev and ripgrep; the extension's npm packages; code-server
# 4.100.3 (VS Code 1.100.3) and playwright-core. code-server's @vscode/ripgrep
# would download rg from the internet: its download cache is pre-filled with
# Debian's rg instead.
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" != 20 ]; then
  echo "e2e: code-server 4.100.3 needs Node.js 20 and npm (found: $(node --version 2>/dev/null || echo none)); install Node 20 and re-run" >&2
  exit 1
fi
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v rg >/dev/null || need+=(ripgrep)
dpkg -s libkrb5-dev >/dev/null 2>&1 || need+=(libkrb5-dev)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
tmp="${TMPDIR:-/tmp}"
cache="$tmp/vscode-ripgrep-cache-1.15.11"
if [ ! -f "$cache/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz" ]; then
  mkdir -p "$cache" "$tmp/docsmith-rg"
  cp "$(command -v rg)" "$tmp/docsmith-rg/rg"
  tar -czf "$cache/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz" -C "$tmp/docsmith-rg" rg
fi
export npm_config_yes=true npm_config_unsafe_perm=true npm_config_fund=false npm_config_audit=false
(cd .. && [ -d node_modules/vscode-languageclient ] || npm install --no-audit --no-fund >&2)
[ -x node_modules/.bin/code-server ] || npm install --no-audit --no-fund >&2
echo "e2e: code-server $(node -p "require('./node_modules/code-server/package.json').version")"
