#!/usr/bin/env bash
# Installs what wsync needs to build and test on Debian 12, from Debian's
# archive only. Safe to run again: it installs only missing packages.
#
# CUDA is optional: when /usr/local/cuda (or $CUDA_HOME) has nvcc, the CUDA
# kernels are built too; otherwise they are skipped (see docs/building.md).
set -euo pipefail

PACKAGES=(
  bazel-bootstrap bazel-platforms
  g++ pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libspdlog-dev libfmt-dev libcli11-dev catch2 libgloo-dev nlohmann-json3-dev
  libcpp-httplib-dev
  openssl
  clang-14 libclang-rt-14-dev
  python3 python3-venv python3-grpcio python3-protobuf python3-numpy python3-pytest
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: all Debian packages present"
fi

if [[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]]; then
  echo "setup: CUDA toolkit at ${CUDA_HOME:-/usr/local/cuda}: CUDA targets will be built"
else
  echo "setup: no CUDA toolkit found: CUDA targets will be skipped"
fi
