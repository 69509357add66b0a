#!/usr/bin/env bash
# Builds llama.cpp's own OpenAI-compatible server, `llama-server`, for the tests
# that run docsmith against a real endpoint (tests/llama_server.rs).
#
# The sources come from PyPI (the only registry this project's machines reach):
# the `llama-cpp-python` sdist vendors the whole llama.cpp tree, server included
# (the `llama-cpp-sys-2` crate vendors llama.cpp without tools/server). The sdist
# is pinned by sha256. Only the `llama-server` target is built: CPU, static,
# no web UI, no OpenSSL. Idempotent: prints the binary's path and exits at once
# when it is already built.
#
# Usage: scripts/build_llama_server.sh     (prints the path of llama-server)
set -euo pipefail
version="0.3.36"
sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
root="${XDG_CACHE_HOME:-$HOME/.cache}/docsmith/llama-server/$version"
bin="$root/llama-server"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi

mkdir -p "$root"
work="$(mktemp -d "$root/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
sdist="$work/llama_cpp_python-$version.tar.gz"
echo "build_llama_server: downloading llama-cpp-python $version (sdist) from PyPI" >&2
python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
  "llama-cpp-python==$version" -d "$work" >&2 2>/dev/null \
  || python3 -m pip download -q --no-deps "llama-cpp-python==$version" -d "$work" >&2
got="$(sha256sum "$sdist" | cut -d' ' -f1)"
if [ "$got" != "$sha256" ]; then
  echo "build_llama_server: sha256 mismatch for $sdist: got $got, pinned $sha256" >&2
  exit 1
fi
tar xzf "$sdist" -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
echo "build_llama_server: building llama-server (a few minutes on 2 cores)" >&2
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_OPENSSL=OFF -DGGML_OPENMP=OFF >"$work/cmake.log" 2>&1 \
  || { tail -40 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; exit 1; }
install -m 755 "$work/build/bin/llama-server" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$bin"
