#!/usr/bin/env bash
# Creates the engines venv (once): the real trainer and generator packages
# from PyPI (megatron-core 0.16.x, vllm 0.33.x, and the torch they pull),
# plus what the wsync Python client needs there (grpcio, protobuf, numpy).
# It is large (several GB) and lives outside the repository and the Bazel
# tree, in $WSYNC_ENGINES_VENV (default /var/cache/wsync/engines-venv). It
# never sees Debian's Python packages. Prints the venv's python path.
# --check: creates nothing; prints the path and exits 0 if the venv is
# complete, else exits 1.
set -euo pipefail
venv=${WSYNC_ENGINES_VENV:-/var/cache/wsync/engines-venv}
stamp="$venv/.wsync-engines-1"
if [[ "${1:-}" == "--check" ]]; then
  [[ -f "$stamp" ]] || exit 1
  echo "$venv/bin/python"
  exit 0
fi
if [[ ! -f "$stamp" ]]; then
  echo "engines venv: creating $venv (megatron-core, vllm, torch from PyPI; several minutes cold)" >&2
  mkdir -p "$(dirname "$venv")"
  [[ -x "$venv/bin/python" ]] || /usr/bin/python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q "megatron-core==0.16.*" "vllm==0.33.*" \
    grpcio protobuf numpy pytest >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
