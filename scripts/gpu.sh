#!/usr/bin/env bash
# GPU tests. On a machine with a GPU, the Bazel toolchain and the Debian
# packages:   bash scripts/gpu.sh
# Elsewhere, see docs/building.md: scripts/gpu_bundle.sh builds the GPU test
# binaries here and packs them (with the shared libraries they need) to run
# on a GPU machine that lacks Bazel.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bazel test --config=gpu //...
