#!/usr/bin/env bash
# Installs what is missing, builds everything (CUDA code too, where nvcc is
# present) and runs every CPU test: the Bazel tests, the same core, layout,
# transport and integration tests under ASan+UBSan and under TSan, each fuzz
# target for FUZZ_SECONDS (default 30) from its seed corpus, the Python
# tests, the tests against the real engine packages (tests/engines, in the
# engines venv), and a bounded load-and-fault soak (SOAK_SECONDS, default 20).
# GPU tests: scripts/gpu.sh on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

log=$(mktemp)
trap 'rm -f "$log" "$log".*' EXIT
passed=0
failed=0
rc=0
# Runs `bazel test` with the given flags and adds up its targets.
bazel_test() {
  set +e
  bazel test "$@" 2>&1 | tee "$log"
  local r=${PIPESTATUS[0]}
  set -e
  passed=$((passed + $(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$log" || true)))
  failed=$((failed + $(grep -cE '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|INCOMPLETE)' "$log" || true)))
  ((r == 0)) || rc=1
}

bazel_test //...

# Sanitizers over the threaded and memory-handling code (docs/building.md).
sanitized=(//daemon/... //tests/integration/... //client/... //kernels/... //tests/fuzz/...)
bazel_test --config=asan "${sanitized[@]}"
bazel_test --config=tsan \
  --test_env=TSAN_OPTIONS="suppressions=$PWD/tests/sanitizers/tsan.supp:second_deadlock_stack=1" \
  //daemon/... //tests/integration/...

# The bazel-bin symlink follows the last build's configuration: point it back
# at the default one (everything is cached), for the steps below and for
# whoever runs the binaries next.
bazel build //daemon:wsyncd //client/cli:wsyncctl
bin=$(bazel info bazel-bin 2>/dev/null)

# Fuzzing, bounded: every parser and validator that takes outside bytes.
if bash scripts/fuzz.sh; then passed=$((passed + 1)); else failed=$((failed + 1)); rc=1; fi

# Python tests (Debian's python3 + .venv for PyPI-only test packages).
python=$(bash scripts/pyenv.sh)
set +e
WSYNCCTL="$bin/client/cli/wsyncctl" WSYNCD="$bin/daemon/wsyncd" \
  "$python" -m pytest -q tests/python 2>&1 | tee "$log.py"
prc=${PIPESTATUS[0]}
set -e
ppassed=$(grep -oE '[0-9]+ passed' "$log.py" | tail -1 | grep -oE '[0-9]+' || echo 0)
pfailed=$( (grep -oE '[0-9]+ (failed|error)' "$log.py" || true) | awk '{s+=$1} END {print s+0}')
((prc == 0)) || rc=1

# The real engines (megatron-core, vllm from PyPI) in their own venv, created
# once outside the repository (scripts/engines_venv.sh).
engines=$(bash scripts/engines_venv.sh)
set +e
WSYNCCTL="$bin/client/cli/wsyncctl" WSYNCD="$bin/daemon/wsyncd" \
  "$engines" -m pytest -q -p no:cacheprovider tests/engines 2>&1 | tee "$log.eng"
erc=${PIPESTATUS[0]}
set -e
ppassed=$((ppassed + $(grep -oE '[0-9]+ passed' "$log.eng" | tail -1 | grep -oE '[0-9]+' || echo 0)))
pfailed=$((pfailed + $( (grep -oE '[0-9]+ (failed|error)' "$log.eng" || true) | awk '{s+=$1} END {print s+0}')))
((erc == 0)) || rc=1

# The soak: concurrent clients syncing, cancelling and dying; every version a
# generator reports committed is checked byte for byte.
if "$python" tests/soak/soak.py --wsyncd "$bin/daemon/wsyncd" \
    --seconds "${SOAK_SECONDS:-20}"; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
  rc=1
fi

echo "bazel, fuzz and soak: ${passed} passed, ${failed} failed; pytest: ${ppassed} passed, ${pfailed} failed"
echo "$((passed + ppassed)) passed, $((failed + pfailed)) failed"
exit "$rc"
