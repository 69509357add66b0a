#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, then generate a function from
# its docstring in a copy of examples/stubs.py with the embedded default model,
# printing the diff, the tests and the findings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
work="$(mktemp -d)"
cp examples/stubs.py "$work/stubs.py"
git -C "$work" init -q 2>/dev/null || true
for fn in ${DOCSMITH_DEMO_FUNCTIONS:-running_max slugify}; do
  echo "== docsmith generate stubs.py --function $fn --yes --apply"
  ./target/release/docsmith generate "$work/stubs.py" --function "$fn" --yes --apply || echo "(exit code $?)"
done
echo "== the file now:"
cat "$work/stubs.py"
echo "== history"
./target/release/docsmith history --workspace "$work"
