#!/usr/bin/env bash
# Installs what is missing, builds everything (CUDA code too, where nvcc is
# present) and runs every CPU test. GPU tests: scripts/gpu.sh on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
bazel test //... 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
passed=$(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$log" || true)
failed=$(grep -cE '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|INCOMPLETE)' "$log" || true)

# Python tests (Debian's python3 + .venv for PyPI-only test packages).
python=$(bash scripts/pyenv.sh)
set +e
WSYNCCTL="$(bazel info bazel-bin 2>/dev/null)/client/cli/wsyncctl" \
  "$python" -m pytest -q tests/python 2>&1 | tee "$log.py"
prc=${PIPESTATUS[0]}
set -e
ppassed=$(grep -oE '[0-9]+ passed' "$log.py" | tail -1 | grep -oE '[0-9]+' || echo 0)
pfailed=$( (grep -oE '[0-9]+ (failed|error)' "$log.py" || true) | awk '{s+=$1} END {print s+0}')
rm -f "$log.py"
((prc == 0)) || rc=1
echo "bazel: ${passed} test targets passed, ${failed} failed; pytest: ${ppassed} passed, ${pfailed} failed"
echo "$((passed + ppassed)) passed, $((failed + pfailed)) failed"
exit "$rc"
