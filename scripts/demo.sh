#!/usr/bin/env bash
# The main job: installs what is missing, builds wsyncd, then runs the demo
# (scripts/demo/run_demo.py): a daemon, a simulated Megatron trainer
# (TP=2 x PP=2, Qwen3-MoE-shaped, LoRA on attention) and two simulated vLLM
# replicas (TP=4 staged, TP=1 in-place) as separate processes, several syncs
# including adapter_only LoRA, every generator byte checked against an
# independent numpy reconstruction, and a summary table. Exits 0 only if all
# bytes matched.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bazel build //daemon:wsyncd //client/cli:wsyncctl
bin=$(bazel info bazel-bin 2>/dev/null)
exec /usr/bin/python3 scripts/demo/run_demo.py --wsyncd "$bin/daemon/wsyncd" "$@"
