#!/usr/bin/env bash
# A local cluster for trying things out: one redis-server on 127.0.0.1:6390
# and three channelsd nodes on :4000, :4001 and :4002 sharing it. Ctrl-C
# stops everything. Extra arguments go to every node (e.g. --conformance).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
REDIS_PORT=${REDIS_PORT:-6390}

command -v redis-server >/dev/null || { echo "run-cluster: redis-server not found (apt-get install redis-server)" >&2; exit 1; }
[ -x "$BIN/channelsd" ] || { echo "run-cluster: $BIN/channelsd missing (make build)" >&2; exit 1; }

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --loglevel warning &
pids+=($!)
for i in 0 1 2; do
  "$BIN/channelsd" --addr ":400$i" --node-id "node$i" --redis "redis://127.0.0.1:$REDIS_PORT" "$@" &
  pids+=($!)
done
echo "run-cluster: redis on 127.0.0.1:$REDIS_PORT, nodes on :4000 :4001 :4002 (pids ${pids[*]}); Ctrl-C stops"
wait -n
