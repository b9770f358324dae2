#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang-14, ASan+UBSan) in their
# own Bazel output base (so the default build's toolchain is left alone) and
# runs each for FUZZ_SECONDS seconds (default 30) from its checked-in seed
# corpus. Inputs it finds go to a temporary directory, not into the
# repository. A crash, leak or timeout fails the run; the input that caused
# it is kept under FUZZ_ARTIFACTS (default /tmp/wsync-fuzz-artifacts): fix the
# bug and add the input to tests/fuzz/corpus/<target>/, where every
# `bazel test` replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}
artifacts=${FUZZ_ARTIFACTS:-/tmp/wsync-fuzz-artifacts}
names=(safetensors manifest config requests)
base="${HOME}/.cache/wsync-bazel-fuzz"
mkdir -p "$artifacts"
targets=()
for n in "${names[@]}"; do targets+=("//tests/fuzz:${n}_fuzzer"); done
# --symlink_prefix=/: leave the workspace's bazel-* links to the default output base.
bazel --output_base="$base" build --config=fuzz --symlink_prefix=/ "${targets[@]}"
bin=$(bazel --output_base="$base" info --config=fuzz bazel-bin 2>/dev/null)
rc=0
for n in "${names[@]}"; do
  work=$(mktemp -d)
  cp tests/fuzz/corpus/"$n"/* "$work"/
  echo "fuzz: $n for ${seconds}s"
  if ! "$bin/tests/fuzz/${n}_fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix="$artifacts/$n-" -print_final_stats=1 "$work" >"$work.log" 2>&1; then
    echo "fuzz: $n FAILED; the input is in $artifacts:" >&2
    tail -60 "$work.log" >&2
    rc=1
  else
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$work.log" | sed "s/^/fuzz: $n /"
  fi
  rm -rf "$work" "$work.log"
done
bazel --output_base="$base" shutdown
exit "$rc"
