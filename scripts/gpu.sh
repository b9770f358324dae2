#!/usr/bin/env bash
# GPU tests, memcheck and (with --bench) the GPU benchmark, on a machine with
# a GPU, the Bazel toolchain and the Debian packages:
#   bash scripts/gpu.sh [--bench]
# Elsewhere, see docs/building.md: scripts/gpu_bundle.sh builds the GPU
# binaries here and packs them to run on a GPU machine that lacks Bazel.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=$(mktemp -d)
bash scripts/gpu_bundle.sh "$out" --no-libs
"$out/run_all.sh" "$@"
