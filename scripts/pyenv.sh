#!/usr/bin/env bash
# Creates .venv (once): Debian's python3 with its system packages (numpy,
# grpcio, protobuf, pytest) visible, plus the test-only packages from PyPI
# that Debian lacks (safetensors, an independent reader/writer of the
# format). Prints the venv's python path.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
  /usr/bin/python3 -m venv --system-site-packages .venv >&2
fi
if ! .venv/bin/python -c "import safetensors" 2>/dev/null; then
  echo "pyenv: installing safetensors from PyPI into .venv" >&2
  .venv/bin/pip install -q "safetensors>=0.4" >&2
fi
echo "$PWD/.venv/bin/python"
