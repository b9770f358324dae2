#!/usr/bin/env bash
# The main job: installs what is missing, builds wsyncd and wsyncctl, starts a
# daemon on a temporary socket, shows its health and status, and stops it
# with SIGTERM (clean drain, exit 0, socket removed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

bazel build //daemon:wsyncd //client/cli:wsyncctl
bin=$(bazel info bazel-bin 2>/dev/null)
wsyncd="$bin/daemon/wsyncd"
wsyncctl="$bin/client/cli/wsyncctl"

dir=$(mktemp -d /tmp/wsync-demo-XXXXXX)
sock="$dir/run/wsyncd.sock"
"$wsyncd" --socket "$sock" --daemon-id demo-node 2>"$dir/wsyncd.log" &
pid=$!
trap 'kill -KILL $pid 2>/dev/null || true' EXIT

for _ in $(seq 100); do
  "$wsyncctl" --socket "$sock" --timeout-ms 200 health >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$dir/wsyncd.log"; exit 1; }
  sleep 0.1
done

echo "== wsyncctl health"
"$wsyncctl" --socket "$sock" health
echo
echo "== wsyncctl status"
"$wsyncctl" --socket "$sock" status
echo
echo "== SIGTERM"
kill -TERM $pid
wait $pid && echo "wsyncd exited 0"
[[ ! -e "$sock" ]] && echo "socket $sock removed"
echo
echo "== daemon log"
cat "$dir/wsyncd.log"
rm -rf "$dir"
