#!/usr/bin/env bash
# A local cluster on a local Redis Cluster, for trying sharded pub/sub out:
# REDIS_MASTERS (3) masters with REDIS_REPLICAS (1) replicas each, in
# cluster mode on 127.0.0.1 from REDIS_PORT (7000) up (their cluster bus on
# port+10000), formed with redis-cli --cluster create, then three channelsd
# nodes on :4000, :4001 and :4002 given --redis redis-cluster://... Ctrl-C
# stops everything and removes the servers' directory. Extra arguments go
# to every node (e.g. --conformance).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
REDIS_PORT=${REDIS_PORT:-7000}
REDIS_MASTERS=${REDIS_MASTERS:-3}
REDIS_REPLICAS=${REDIS_REPLICAS:-1}

for c in redis-server redis-cli; do
  command -v "$c" >/dev/null || { echo "run-redis-cluster: $c not found (apt-get install redis-server)" >&2; exit 1; }
done
[ -x "$BIN/channelsd" ] || { echo "run-redis-cluster: $BIN/channelsd missing (make build)" >&2; exit 1; }
[ "$REDIS_MASTERS" -ge 3 ] || { echo "run-redis-cluster: redis-cli --cluster create needs REDIS_MASTERS >= 3" >&2; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/channelsd-redis-cluster.XXXXXX")
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

count=$((REDIS_MASTERS * (REDIS_REPLICAS + 1)))
addrs=()
for ((i = 0; i < count; i++)); do
  port=$((REDIS_PORT + i))
  mkdir "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/$port" --save "" --appendonly no \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 --repl-diskless-sync-delay 0 \
    --loglevel warning --logfile "$dir/$port/redis.log" &
  pids+=($!)
  addrs+=("127.0.0.1:$port")
done
# A server that has just started offers nothing to wait on but PING.
for a in "${addrs[@]}"; do
  for ((try = 0; ; try++)); do
    redis-cli -h 127.0.0.1 -p "${a##*:}" ping >/dev/null 2>&1 && break
    [ "$try" -lt 100 ] || { echo "run-redis-cluster: redis-server on $a did not start (see $dir/${a##*:}/redis.log)" >&2; cat "$dir/${a##*:}/redis.log" >&2; exit 1; }
    sleep 0.1
  done
done
redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$REDIS_REPLICAS" --cluster-yes >"$dir/create.log" 2>&1 ||
  { cat "$dir/create.log" >&2; exit 1; }
# --cluster create returns once the slots are assigned; every node must
# agree before the channelsd nodes read the slot map, and each replica
# must hold its master's data: one that never synced refuses to take over.
for a in "${addrs[@]}"; do
  for ((try = 0; ; try++)); do
    info=$(redis-cli -h 127.0.0.1 -p "${a##*:}" info replication 2>/dev/null; redis-cli -h 127.0.0.1 -p "${a##*:}" cluster info 2>/dev/null)
    if grep -q '^cluster_state:ok' <<<"$info" && { grep -q '^role:master' <<<"$info" || grep -q '^master_link_status:up' <<<"$info"; }; then
      break
    fi
    [ "$try" -lt 300 ] || { echo "run-redis-cluster: the cluster did not form (node $a)" >&2; exit 1; }
    sleep 0.1
  done
done

url="redis-cluster://$(IFS=,; echo "${addrs[*]:0:$REDIS_MASTERS}")"
nodes=()
for i in 0 1 2; do
  "$BIN/channelsd" --addr ":400$i" --node-id "node$i" --redis "$url" "$@" &
  nodes+=($!)
done
pids+=("${nodes[@]}")
echo "run-redis-cluster: $REDIS_MASTERS masters, $REDIS_REPLICAS replica(s) each, on ${addrs[0]}..${addrs[-1]}"
echo "run-redis-cluster: nodes on :4000 :4001 :4002 with --redis $url (pids ${nodes[*]}); Ctrl-C stops"
# A Redis server that dies is a failover to watch, not the end: only a
# node's exit ends the run.
wait -n "${nodes[@]}"
