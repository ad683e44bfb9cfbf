#!/usr/bin/env bash
# channelsd and the centrifuge peer side by side, in one run on this
# machine (absolute figures move between runs and hosts; ratios measured in
# one run hold): the same harness (shared/fanout-bench, in the folder that
# holds the repository) drives one node of each, each on its own fresh
# loopback redis-server, one after the other, and two kernel floors are
# measured in the same run: one write into a hot loopback connection
# (BenchmarkKernelFloor/loopback-write), and the delivery workload's own,
# the same broadcasts written to SUBS connections by a bare loop of
# write(2) (BenchmarkKernelFloor/fanout-SUBS: the writes alone, to
# readers that sleep between broadcasts, which cost more) and, as
# channelsd's writers send where they can, in io_uring batches of 64
# (fanout-SUBS-uring), run once before each server's delivery phase and
# once after the last, so that the load of a shared machine falls on
# them as on the servers. Prints a Markdown table for BENCHMARKS.md.
#
# Needs Go, redis-server, redis-cli, curl, ss and jq. Environment:
#   FANOUT_BENCH  the harness folder (default: shared/fanout-bench beside
#                 the repository, or beside the main worktree's)
#   BIN           where bin/channelsd is and the harness and peer go (bin)
#   IDLE          idle joined sockets for the memory figure (10000)
#   SUBS, RATE, MSGS  the delivery workload: SUBS subscribers of one topic,
#                 MSGS broadcasts at RATE per second (5000, 10, 100)
#   FLOOR_COUNT   runs of the hot-connection kernel floor (3)
#   TABLE_ONLY=1  print the table again from the last run's files in
#                 $BIN/bench-peer, measuring nothing
#   HISTORY=1     no peer and no idle sockets: the delivery workload on
#                 channelsd alone, its topic declared without history and
#                 with it (HIST_SPEC, default {size: 100, ttl: 5m}, the
#                 default application's rooms), PAIRS pairs of runs in
#                 the order A B B A A B ... (A without), a fresh node and
#                 Redis each, so that drift on a shared machine falls on
#                 both; prints both figures and their ratio per pair.
#                 Results in $BIN/bench-history.
#   PAIRS         pairs of runs with HISTORY=1 (5)
# Everything it starts (Redis, nodes, harness) is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GO=${GO:-go}
BIN=${BIN:-bin}
IDLE=${IDLE:-10000}
SUBS=${SUBS:-5000}
RATE=${RATE:-10}
MSGS=${MSGS:-100}
FLOOR_COUNT=${FLOOR_COUNT:-3}
HISTORY=${HISTORY:-}
PAIRS=${PAIRS:-5}
HIST_SPEC=${HIST_SPEC:-"{size: 100, ttl: 5m}"}

say() { echo "bench-peer: $*" >&2; }
die() { say "$*"; exit 1; }

for c in redis-server redis-cli curl ss jq "$GO"; do
  command -v "$c" >/dev/null || die "$c not found (Debian: apt-get install redis-server curl iproute2 jq)"
done
[ -x "$BIN/channelsd" ] || die "$BIN/channelsd missing (make build)"

# The harness lives outside the repository, beside it; a linked worktree
# looks beside the main one too.
fb=${FANOUT_BENCH:-}
if [ -z "$fb" ]; then
  fb=$(dirname "$ROOT")/shared/fanout-bench
  if [ ! -d "$fb" ]; then
    common=$(git rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
    [ -n "$common" ] && fb=$(dirname "$(dirname "$common")")/shared/fanout-bench
  fi
fi
if [ ! -f "$fb/go.mod" ] || [ ! -d "$fb/cmd/fanout" ] || [ ! -d "$fb/peer-centrifuge" ]; then
  where=${FANOUT_BENCH:-$(dirname "$ROOT")/shared/fanout-bench}
  die "the shared harness is missing: no fanout-bench (go.mod, cmd/fanout, peer-centrifuge) at $where; set FANOUT_BENCH to its folder"
fi

# Every socket is a file: one process holds at most the open-file limit.
# The harness puts at most 15,000 clients in each worker process; a node
# holds all of its run's sockets plus its Redis and listening ones.
nofile=$(ulimit -n)
[ -z "$HISTORY" ] || IDLE=0
for n in "$IDLE" "$SUBS"; do
  [ "$n" -le $((nofile - 500)) ] || die "$n sockets on one node exceed the open-file limit ($nofile) less a margin"
done
[ "$nofile" -gt 15500 ] || die "the harness's workers hold 15,000 clients each: open-file limit $nofile is too low"

run=$BIN/bench-peer
[ -z "$HISTORY" ] || run=$BIN/bench-history
if [ -z "${TABLE_ONLY:-}" ]; then
  rm -rf "$run"
  mkdir -p "$run"
fi
run=$(cd "$run" && pwd)

build_harness() {
  say "building the harness and the peer from $fb into $run"
  (cd "$fb" && "$GO" build -o "$run/" ./cmd/fanout ./peer-centrifuge) || die "building the harness failed"
}

# The test binary is built once: its fan-out floor runs between the
# servers' and must not compile meanwhile.
floor_bin=
fanout_floor() { # label
  say "fan-out floor: $SUBS connections, $MSGS broadcasts at $RATE/s ($1)"
  (cd transport && TRANSPORT_FANOUT_SUBS=$SUBS TRANSPORT_FANOUT_RATE=$RATE "$floor_bin" -test.run '^$' \
    -test.bench "^BenchmarkKernelFloor\$/^fanout-$SUBS(-uring)?\$" -test.benchtime "${MSGS}x") > "$run/floor-$1.txt" 2>&1 \
    || { cat "$run/floor-$1.txt" >&2; die "the fan-out floor benchmark failed"; }
  cat "$run/floor-$1.txt" >> "$run/floor.txt"
}

measure() {
  build_harness
  floor_bin=$run/transport.test
  "$GO" test -c -o "$floor_bin" ./transport || die "building the floor benchmark failed"
  say "kernel floor, hot connection ($FLOOR_COUNT runs)"
  (cd transport && "$floor_bin" -test.run '^$' -test.bench '^BenchmarkKernelFloor$/^(syscall|loopback-write)$' \
    -test.count "$FLOOR_COUNT") > "$run/floor.txt" 2>&1 \
    || { cat "$run/floor.txt" >&2; die "the kernel floor benchmark failed"; }
  local server
  for server in channelsd peer; do
    scenario "$server" "idle$IDLE" -n "$IDLE"
    fanout_floor "before-$server"
    scenario "$server" "fanout$SUBS-r$RATE" -n "$SUBS" -m "$MSGS" -rate "$RATE" -drain-max 60s
  done
  fanout_floor after
}

pids=()
stop() { # pid...: TERM, then KILL after 5 s
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
# Newest first: a node stops before the Redis it uses.
cleanup() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop "${pids[$i]}"; done
  pids=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { # base: the first port from base on that nothing listens on
  local p
  for p in $(seq "$1" $(($1 + 100))); do
    if [ -z "$(ss -Hltn "sport = :$p")" ]; then echo "$p"; return; fi
  done
  die "no free port from $1 to $(($1 + 100))"
}

wait_http() { # url seconds
  local i
  for i in $(seq $(($2 * 10))); do
    curl -sf -o /dev/null "$1" && return
    sleep 0.1
  done
  die "$1 did not answer within $2 s"
}

redis_pid=
start_redis() { # label
  local port
  port=$(free_port 6500)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --logfile "$run/redis-$1.log" >/dev/null 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  local i
  for i in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && { redis_port=$port; return; }
    sleep 0.1
  done
  die "redis-server on 127.0.0.1:$port did not start (see $run/redis-$1.log)"
}

# The peer has neither presence nor history on its channels: channelsd's
# room:* is declared the same way, without them.
printf 'channels:\n  - topic: "room:*"\n' > "$run/channels.yaml"
# The history mode's second declaration: the same, with history.
printf 'channels:\n  - topic: "room:*"\n    history: %s\n' "$HIST_SPEC" > "$run/channels-history.yaml"
config=$run/channels.yaml

server_pid=
url=
start_server() { # channelsd|peer label
  start_redis "$2"
  local port
  port=$(free_port 8600)
  case $1 in
    channelsd)
      "$BIN/channelsd" --addr "127.0.0.1:$port" --redis "redis://127.0.0.1:$redis_port" \
        --config "$config" --log-level warn --drain-window 0 > "$run/$2.server.log" 2>&1 &
      server_pid=$!
      pids+=("$server_pid")
      wait_http "http://127.0.0.1:$port/readyz" 20
      url="ws://127.0.0.1:$port/socket/websocket?vsn=2.0.0"
      ;;
    peer)
      "$run/peer-centrifuge" -addr "127.0.0.1:$port" -redis "127.0.0.1:$redis_port" -name n1 \
        > "$run/$2.server.log" 2>&1 &
      server_pid=$!
      pids+=("$server_pid")
      wait_http "http://127.0.0.1:$port/healthz" 20
      url="ws://127.0.0.1:$port/connection/websocket"
      ;;
  esac
}

# One harness run against a fresh node and Redis (a reused node reports
# too little memory: its heap holds what the last run freed).
scenario() { # channelsd|peer name harness-args...
  local server=$1 name=$2 proto=phoenix
  shift 2
  [ "$server" = peer ] && proto=centrifuge
  start_server "$server" "$server-$name"
  say "$server: $name"
  timeout 6m "$run/fanout" -proto "$proto" -urls "$url" -pids "$server_pid" -extra-pids "$redis_pid" \
    -label "$server/$name" -json-out "$run/results.jsonl" -q -max-time 5m "$@" \
    > /dev/null 2> "$run/$server-$name.log" || { cat "$run/$server-$name.log" >&2; die "$server $name: the harness failed"; }
  [ -z "$after" ] || "$after" "$name"
  cleanup
}
after=

# ---- HISTORY=1: a topic with history against the same topic without
# The stream's meta hash says how many broadcasts took an offset: every one
# of a history run, none of a run without (else the run measured the
# wrong thing).
check_history() { # name
  local top want=0
  top=$(redis-cli -p "$redis_port" hget 'channelsd:h:{room:bench}:m' top)
  [[ $1 == history-* ]] && want=$MSGS
  [ "${top:-0}" = "$want" ] || die "$1: the history holds offset ${top:-none}, expected $want"
  echo "$1 history top ${top:-none}" >> "$run/checks.txt"
}

history_measure() {
  build_harness
  local i k kinds
  after=check_history
  for i in $(seq "$PAIRS"); do
    kinds="plain history"
    [ $((i % 2)) -eq 0 ] && kinds="history plain"
    for k in $kinds; do
      config=$run/channels.yaml
      [ "$k" = history ] && config=$run/channels-history.yaml
      scenario channelsd "$k-$i" -n "$SUBS" -m "$MSGS" -rate "$RATE" -drain-max 60s
    done
  done
}

history_table() {
  get() { jq -r --arg l "$1" "select(.label == \$l) | $2" "$run/results.jsonl"; }
  med() { sort -g | awk '{a[NR]=$1} END{ if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
  local i k us p50 p99 ratios=() rp50=() rp99=()
  declare -A v
  echo
  echo "host: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) CPUs; $("$GO" version | cut -d' ' -f3); Redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
  echo "delivery: $SUBS subscribers of one topic, $MSGS broadcasts at $RATE/s, one node with --redis; the topic's room:* declared without history (plain) and with history $HIST_SPEC; $PAIRS pairs, order A B B A ..."
  echo
  echo "| run | server CPU per delivery | harness CPU per delivery | p50 | p99 | lost | cores: server / harness / machine busy |"
  echo "|---|---:|---:|---:|---:|---|---|"
  for i in $(seq "$PAIRS"); do
    for k in plain history; do
      local l="channelsd/$k-$i"
      us=$(get "$l" '1e6 * .fanout.cpu.server_cpu_s / .fanout.received')
      [[ "$us" =~ ^[0-9.e+-]+$ ]] || die "$l: no figure in $run/results.jsonl"
      v[$k.$i.us]=$us
      v[$k.$i.p50]=$(get "$l" '.fanout.latency.p50_ms')
      v[$k.$i.p99]=$(get "$l" '.fanout.latency.p99_ms')
      printf '| %s | %.1f µs | %.1f µs | %.1f ms | %.1f ms | %s | %s |\n' "$k-$i" "$us" \
        "$(get "$l" '1e6 * .fanout.cpu.harness_cpu_s / .fanout.received')" "${v[$k.$i.p50]}" "${v[$k.$i.p99]}" \
        "$(get "$l" '"\(.fanout.lost) of \(.fanout.expected) (\(.fanout.drain_stop))"')" \
        "$(get "$l" '"\(.fanout.cpu.server_cores * 100 | round / 100) / \(.fanout.cpu.harness_cores * 100 | round / 100) / \(.fanout.cpu.machine_busy_pct | round) %"')"
      local w
      w=$(get "$l" '(.warnings // []) | join("; ")')
      [ -z "$w" ] || echo "$k-$i: $w" >> "$run/warnings.txt"
    done
    ratios+=("$(awk -v a="${v[history.$i.us]}" -v b="${v[plain.$i.us]}" 'BEGIN{printf "%.3f", a/b}')")
    rp50+=("$(awk -v a="${v[history.$i.p50]}" -v b="${v[plain.$i.p50]}" 'BEGIN{printf "%.3f", a/b}')")
    rp99+=("$(awk -v a="${v[history.$i.p99]}" -v b="${v[plain.$i.p99]}" 'BEGIN{printf "%.3f", a/b}')")
  done
  echo
  for k in plain history; do
    v[$k.mus]=$(for i in $(seq "$PAIRS"); do echo "${v[$k.$i.us]}"; done | med)
  done
  printf 'server CPU per delivery, median: plain %.2f µs, history %.2f µs\n' "${v[plain.mus]}" "${v[history.mus]}"
  printf 'history / plain per pair: CPU per delivery %s (median %s); p50 %s; p99 %s\n' \
    "${ratios[*]}" "$(printf '%s\n' "${ratios[@]}" | med)" "${rp50[*]}" "${rp99[*]}"
  [ ! -s "$run/warnings.txt" ] || { echo; echo "harness warnings:"; sed 's/^/- /' "$run/warnings.txt"; }
  echo
  say "harness tables and JSON results in $run"
}

if [ -n "$HISTORY" ]; then
  [ -n "${TABLE_ONLY:-}" ] || { rm -f "$run/checks.txt" "$run/warnings.txt"; history_measure; }
  rm -f "$run/warnings.txt"
  history_table
  exit 0
fi

[ -n "${TABLE_ONLY:-}" ] || measure

# ---- the table
floor_ns() { # sub-benchmark: its ns/op over the runs, sorted
  awk -v b="BenchmarkKernelFloor/$1" '$1 ~ "^"b"(-[0-9]+)?$" {print $3}' "$run/floor.txt" | sort -g
}
mapfile -t fw < <(floor_ns loopback-write)
mapfile -t fs < <(floor_ns syscall)
[ ${#fw[@]} -gt 0 ] || die "no loopback-write figure in $run/floor.txt"
floor_us=$(awk -v v="${fw[$(( ${#fw[@]} / 2 ))]}" 'BEGIN{printf "%.3f", v/1000}')
# A fan-out floor's cpu-ns/write, in the order of the runs, and their
# median in µs.
fanout_floor_ns() { # sub-benchmark
  awk -v b="BenchmarkKernelFloor/$1" \
    '$1 ~ "^"b"(-[0-9]+)?$" { for (i = 2; i < NF; i++) if ($(i+1) == "cpu-ns/write") print $i }' "$run/floor.txt"
}
median_us() { sort -g | awk '{a[NR]=$1} END{ if (NR % 2) v=a[(NR+1)/2]; else v=(a[NR/2]+a[NR/2+1])/2; printf "%.3f", v/1000 }'; }
mapfile -t ff < <(fanout_floor_ns "fanout-$SUBS")
[ ${#ff[@]} -gt 0 ] || die "no fanout-$SUBS figure in $run/floor.txt"
ffloor_us=$(printf '%s\n' "${ff[@]}" | median_us)
mapfile -t fu < <(fanout_floor_ns "fanout-$SUBS-uring")
ufloor_us=
[ ${#fu[@]} -eq 0 ] || ufloor_us=$(printf '%s\n' "${fu[@]}" | median_us)
cores=$(nproc)
get() { jq -r --arg l "$1" "select(.label == \$l) | $2" "$run/results.jsonl"; }

declare -A v
for s in channelsd peer; do
  v[$s.kib]=$(get "$s/idle$IDLE" '.memory.kib_per_conn')
  v[$s.idleok]=$(get "$s/idle$IDLE" '.connect.ok')
  v[$s.join]=$(get "$s/idle$IDLE" '.connect.rate_per_s')
  f="$s/fanout$SUBS-r$RATE"
  v[$s.us]=$(get "$f" '1e6 * .fanout.cpu.server_cpu_s / .fanout.received')
  v[$s.hus]=$(get "$f" '1e6 * .fanout.cpu.harness_cpu_s / .fanout.received')
  v[$s.p50]=$(get "$f" '.fanout.latency.p50_ms')
  v[$s.p99]=$(get "$f" '.fanout.latency.p99_ms')
  v[$s.lost]=$(get "$f" '"\(.fanout.lost) of \(.fanout.expected) (\(.fanout.drain_stop))"')
  v[$s.cores]=$(get "$f" '"\(.fanout.cpu.server_cores * 100 | round / 100) / \(.fanout.cpu.harness_cores * 100 | round / 100) / \(.fanout.cpu.machine_busy_pct | round) %"')
  v[$s.warn]=$(get "$f" '(.warnings // []) | join("; ")')
  v[$s.iwarn]=$(get "$s/idle$IDLE" '(.warnings // []) | join("; ")')
  for k in kib join us hus p50 p99; do
    [[ "${v[$s.$k]}" =~ ^[0-9.e+-]+$ ]] || die "$s: no $k figure in $run/results.jsonl"
  done
done

r() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b + 0 > 0) printf "%.2f×", a/b; else print "–" }'; }
f1() { awk -v a="$1" 'BEGIN{printf "%.1f", a}'; }
f0() { awk -v a="$1" 'BEGIN{printf "%.0f", a}'; }
limit_ms=$(awk -v n="$SUBS" -v f="$floor_us" -v c="$cores" 'BEGIN{printf "%.1f", n*f/c/1000}')
flimit_ms=$(awk -v n="$SUBS" -v f="$ffloor_us" -v c="$cores" 'BEGIN{printf "%.1f", n*f/c/1000}')

echo
echo "host: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $cores CPUs; $("$GO" version | cut -d' ' -f3); Redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
echo "kernel floor, hot connection (go test ./transport -run '^\$' -bench 'KernelFloor/(syscall|loopback-write)\$' -count $FLOOR_COUNT): loopback write ${fw[*]} ns/op (median $floor_us µs); syscall ${fs[*]} ns/op"
uring_text="in io_uring batches of 64 (fanout-$SUBS-uring): none, no io_uring here"
[ -z "$ufloor_us" ] || uring_text="in io_uring batches of 64 (fanout-$SUBS-uring): ${fu[*]} ns per send (median $ufloor_us µs)"
echo "kernel floor, fan-out (TRANSPORT_FANOUT_SUBS=$SUBS TRANSPORT_FANOUT_RATE=$RATE go test ./transport -run '^\$' -bench 'KernelFloor/fanout-$SUBS(-uring)?\$' -benchtime ${MSGS}x; before channelsd's delivery, before the peer's, after): $(printf '%s ' "${ff[@]}")ns per write (median $ffloor_us µs); $uring_text"
echo "memory: $IDLE idle joined sockets; delivery: $SUBS subscribers of one topic, $MSGS broadcasts at $RATE/s, one node with --redis each"
echo
echo "| figure | channelsd | peer (centrifuge) | channelsd / peer |"
echo "|---|---:|---:|---:|"
echo "| RSS per idle joined socket ($IDLE idle) | $(f1 "${v[channelsd.kib]}") KiB | $(f1 "${v[peer.kib]}") KiB | $(r "${v[channelsd.kib]}" "${v[peer.kib]}") |"
echo "| connect+join rate ($IDLE) | $(f0 "${v[channelsd.join]}") /s | $(f0 "${v[peer.join]}") /s | $(r "${v[channelsd.join]}" "${v[peer.join]}") |"
echo "| server CPU per delivery | $(f1 "${v[channelsd.us]}") µs | $(f1 "${v[peer.us]}") µs | $(r "${v[channelsd.us]}" "${v[peer.us]}") |"
echo "| … over the fan-out floor, bare write(2) loop, $SUBS readers ($ffloor_us µs) | $(r "${v[channelsd.us]}" "$ffloor_us") | $(r "${v[peer.us]}" "$ffloor_us") | |"
[ -z "$ufloor_us" ] || echo "| … over the fan-out floor in io_uring batches of 64 ($ufloor_us µs) | $(r "${v[channelsd.us]}" "$ufloor_us") | $(r "${v[peer.us]}" "$ufloor_us") | |"
echo "| … over the hot-connection floor, loopback-write ($floor_us µs) | $(r "${v[channelsd.us]}" "$floor_us") | $(r "${v[peer.us]}" "$floor_us") | |"
echo "| p99 latency | $(f1 "${v[channelsd.p99]}") ms | $(f1 "${v[peer.p99]}") ms | $(r "${v[channelsd.p99]}" "${v[peer.p99]}") |"
echo "| … over the limit $SUBS × hot-connection floor / $cores cores ($limit_ms ms) | $(r "${v[channelsd.p99]}" "$limit_ms") | $(r "${v[peer.p99]}" "$limit_ms") | |"
echo "| … over the limit $SUBS × fan-out floor / $cores cores ($flimit_ms ms) | $(r "${v[channelsd.p99]}" "$flimit_ms") | $(r "${v[peer.p99]}" "$flimit_ms") | |"
echo "| p50 latency | $(f1 "${v[channelsd.p50]}") ms | $(f1 "${v[peer.p50]}") ms | $(r "${v[channelsd.p50]}" "${v[peer.p50]}") |"
echo "| lost | ${v[channelsd.lost]} | ${v[peer.lost]} | |"
echo "| harness CPU per delivery | $(f1 "${v[channelsd.hus]}") µs | $(f1 "${v[peer.hus]}") µs | |"
echo "| cores: server / harness / machine busy (delivery) | ${v[channelsd.cores]} | ${v[peer.cores]} | |"
for s in channelsd peer; do
  [ -z "${v[$s.iwarn]}" ] || echo "$s idle, harness warnings: ${v[$s.iwarn]}"
  [ -z "${v[$s.warn]}" ] || echo "$s delivery, harness warnings: ${v[$s.warn]}"
  [ "${v[$s.idleok]}" = "$IDLE" ] || echo "$s idle: only ${v[$s.idleok]} of $IDLE sockets joined"
done
echo
say "harness tables and JSON results in $run"
