#!/usr/bin/env bash
# Regenerates the Python gRPC stubs of wsync.v1 into client/python/wsync/v1
# with Debian's protoc and grpc_python_plugin. The stubs are committed so the
# package installs without a build step; tests check they are current.
#   bash scripts/gen_python.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-client/python}
protoc --proto_path=proto \
  --python_out="$out" \
  --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin --grpc_python_out="$out" \
  proto/wsync/v1/types.proto proto/wsync/v1/wsync.proto proto/wsync/v1/peer.proto
touch "$out/wsync/v1/__init__.py"
