#!/usr/bin/env bash
# The main job: installs what is missing, builds wsyncd, then runs the demo
# (scripts/demo/run_demo.py): a daemon, a simulated Megatron trainer
# (TP=2 x PP=2, Qwen3-MoE-shaped, LoRA on attention) and two simulated vLLM
# replicas (TP=4 staged, TP=1 in-place) as separate processes, several syncs
# including adapter_only LoRA, every generator byte checked against an
# independent numpy reconstruction, and a summary table. Exits 0 only if all
# bytes matched.
#
# --vllm: the same syncs into real vLLM 0.33 model instances on CPU (TP=2
# with expert parallelism, staged; TP=1, in place), checked against vLLM's
# own load_weights. It needs the engines venv (scripts/engines_venv.sh:
# about 9.5 GB from PyPI, several minutes the first time), which it creates
# if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
vllm=0
args=()
for a in "$@"; do
  if [[ "$a" == "--vllm" ]]; then vllm=1; else args+=("$a"); fi
done
bash scripts/setup.sh
bazel build //daemon:wsyncd //client/cli:wsyncctl
bin=$(bazel info bazel-bin 2>/dev/null)
if ((vllm)); then
  engines=$(bash scripts/engines_venv.sh)
  exec /usr/bin/python3 scripts/demo/run_demo.py --wsyncd "$bin/daemon/wsyncd" --vllm-python "$engines" \
    ${args[@]+"${args[@]}"}
fi
set +e
/usr/bin/python3 scripts/demo/run_demo.py --wsyncd "$bin/daemon/wsyncd" ${args[@]+"${args[@]}"}
rc=$?
set -e
if engines=$(bash scripts/engines_venv.sh --check); then
  echo "Real vLLM: the engines venv is present ($engines); 'bash scripts/demo.sh --vllm' runs the same syncs into real vLLM model instances on CPU."
else
  echo "Real vLLM: the engines venv is not present; 'bash scripts/demo.sh --vllm' creates it (about 9.5 GB from PyPI, several minutes) and runs the same syncs into real vLLM model instances on CPU."
fi
exit $rc
