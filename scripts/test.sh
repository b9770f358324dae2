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
echo "${passed} passed, ${failed} failed"
exit "$rc"
