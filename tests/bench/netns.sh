#!/usr/bin/env bash
# Emulated nodes for multinode_bench: network namespaces wsnode0..N-1 on a
# bridge, node i at 10.77.0.(i+1), each with its own link shaped to RATE in
# both directions (tbf), so that every "node" has a NIC of its own.
#
#   netns.sh up N RATE     e.g. netns.sh up 5 2gbit   (needs root and iproute2)
#   netns.sh down N
set -euo pipefail
cmd=${1:?up or down}
n=${2:?number of nodes}
bridge=wsbr0
down() {
  for ((i = 0; i < n; i++)); do ip netns del "wsnode$i" 2>/dev/null || true; done
  ip link del "$bridge" 2>/dev/null || true
}
if [[ $cmd == down ]]; then
  down
  exit 0
fi
rate=${3:?rate, e.g. 2gbit}
down
ip link add "$bridge" type bridge
ip link set "$bridge" up
for ((i = 0; i < n; i++)); do
  ns="wsnode$i"
  ip netns add "$ns"
  ip link add "wsv$i" type veth peer name "wse$i"
  ip link set "wse$i" netns "$ns"
  ip link set "wsv$i" master "$bridge"
  ip link set "wsv$i" up
  ip -n "$ns" addr add "10.77.0.$((i + 1))/24" dev "wse$i"
  ip -n "$ns" link set "wse$i" up
  ip -n "$ns" link set lo up
  # Upload (node -> bridge) and download (bridge -> node), each at RATE.
  ip netns exec "$ns" tc qdisc add dev "wse$i" root tbf rate "$rate" burst 1mb latency 100ms
  tc qdisc add dev "wsv$i" root tbf rate "$rate" burst 1mb latency 100ms
done
