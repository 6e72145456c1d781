#!/usr/bin/env bash
# Cluster run (issue 15, PERFORMANCE.md "Cluster"): K ignis-ws nodes as
# processes on one Redis, loaded by examples/cluster_load.rs.
#
#   scripts/perf-cluster.sh MODE K [--no-local] [CLUSTER_LOAD-ARGS...]
#
# MODE:  pattern | interest   (the nodes' --redis-subscribe, on one Redis)
#        | sharded (a 3-master Redis Cluster on REDIS_PORT..+2, all on
#          core 1; nodes with --redis-cluster --redis-sharded true; the
#          generator SPUBLISHes to each channel's master; Redis CPU is the
#          three masters' sum)
#        | cluster-interest (the same cluster, classic PUBLISH/SUBSCRIBE:
#          what sharding saves)
# K:     number of nodes (1, 2, 4, 8)
#
# Layout: a fresh redis-server on REDIS_PORT (6393; --save '' --appendonly
# no) pinned to core 1; K nodes (release binary, --shards 1 --pin-cores
# false, --auth insecure --room-allow '**') on ports BASE_PORT+1..+K, all
# pinned to core 0; the generator on core 1. Clients on node k join
# room-k-r and `all`; the generator publishes a mix of room (one node's
# members), spread (`all`, members on every node) and broadcast messages
# straight to Redis as emitter envelopes, checks that every client got every
# message addressed to it exactly once and records the latency.
#
# Figures (the generator's JSON report, summarised below it):
# - per node: envelopes received (delta of ignis_ws_redis_envelopes_in_total
#   summed over types, over the publishing + drain window, read from
#   /metrics), the envelopes among them with a local recipient (the node's
#   rooms' messages + spread + broadcast: the generator knows what it
#   published), the rest = envelopes with no local recipient, and the
#   node's CPU (utime+stime from /proc/PID/stat) over the same window;
# - Redis CPU over the window per PUBLISH and per delivered envelope
#   (delivered = sum over the nodes of envelopes received);
# - end to end: expected/received/lost/dup, latency p50/p99/max.
#
# CPU on envelopes with no local recipient (the method): a control run.
# With CONTROL=1 (default) and MODE=pattern the script runs the generator a
# second time on the same nodes with --no-local: every message goes to a
# room nobody joined, every node receives it (pattern) and delivers it to
# nobody, so node CPU / envelopes received in that run = the CPU one
# no-local envelope costs (µs, averaged over the nodes; net of the nodes'
# idle CPU, measured by the generator over --idle-secs (2 s) of no traffic
# just before publishing). It is saved in
# $STATE_DIR/nolocal-K.json. The estimate printed for a run is then
#   no-local envelopes × that unit cost
# (for MODE=interest the unit cost of the last pattern run with the same K
# is used; run pattern first; with interest the count should be 0 anyway).
# The unit cost includes everything a node does per envelope (reading it
# from the socket, parsing, looking the room up). CPU is the sum of the
# process's threads' run time from /proc/PID/task/*/schedstat (ns), which
# the generator reads; the script's own whole-run cross-check uses
# utime+stime from /proc/PID/stat (ticks, getconf CLK_TCK).
#
# --no-local as the first extra argument runs only the control run.
#
# Env: BIN (target/release/ignis-ws), GEN_BIN
#      (target/release/examples/cluster_load), REDIS_PORT (6393),
#      BASE_PORT (9100), CLIENTS (per node, 500), RATE (msgs/s total,
#      2000), DURATION (s, 10), CONTROL (1), OUT (directory for the JSON
#      reports; default a temp dir, printed), STATE_DIR
#      (/tmp/ignis-perf-cluster), NODE_ARGS (extra `serve` flags).
#
# A full sweep (pattern before interest for each K, so interest finds the
# unit cost):
#   cargo build --release && cargo build --release --example cluster_load
#   for k in 1 2 4 8; do for m in pattern interest; do
#     OUT=/tmp/cluster-sweep scripts/perf-cluster.sh $m $k --rooms-per-node 50 \
#       --room-share 0.98 --spread-share 0.01 --broadcast-share 0.01; done; done
# (the trial mix: ~100-180 k deliveries/s at K=4-8, what one generator core
# keeps up with; 0.8/0.1/0.1 with 500 clients per node is ~0.4-1.6 M/s)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/ignis-ws}
GEN_BIN=${GEN_BIN:-target/release/examples/cluster_load}
REDIS_PORT=${REDIS_PORT:-6393}
BASE_PORT=${BASE_PORT:-9100}
CLIENTS=${CLIENTS:-500}
RATE=${RATE:-2000}
DURATION=${DURATION:-10}
CONTROL=${CONTROL:-1}
STATE_DIR=${STATE_DIR:-/tmp/ignis-perf-cluster}
mode=${1:?MODE: pattern or interest}
k=${2:?K: number of nodes}
shift 2
only_control=0
if [ "${1:-}" = "--no-local" ]; then only_control=1; shift; fi
case "$mode" in pattern|interest|sharded|cluster-interest) ;; *) echo "MODE: pattern, interest, sharded or cluster-interest" >&2; exit 2 ;; esac
cluster=0
case "$mode" in sharded|cluster-interest) cluster=1 ;; esac
[ -x "$BIN" ] || { echo "$BIN missing: cargo build --release" >&2; exit 2; }
[ -x "$GEN_BIN" ] || { echo "$GEN_BIN missing: cargo build --release --example cluster_load" >&2; exit 2; }
mkdir -p "$STATE_DIR"
OUT=${OUT:-$(mktemp -d /tmp/ignis-perf-cluster-out.XXXXXX)}
mkdir -p "$OUT"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$REDIS_PORT" $((REDIS_PORT + 1)) $((REDIS_PORT + 2)) $(seq $((BASE_PORT + 1)) $((BASE_PORT + k))); do
  if port_open "$p"; then echo "port $p is in use (left over?): stop it or set REDIS_PORT/BASE_PORT" >&2; exit 2; fi
done

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Redis, in the foreground of its own background job: $! is its pid.
redis_pids=()
redis_ports=("$REDIS_PORT")
[ "$cluster" = 1 ] && redis_ports=("$REDIS_PORT" $((REDIS_PORT + 1)) $((REDIS_PORT + 2)))
cdir=$(mktemp -d /tmp/ignis-perf-cluster-redis.XXXXXX)
for rp in "${redis_ports[@]}"; do
  extra=()
  [ "$cluster" = 1 ] && extra=(--cluster-enabled yes --cluster-config-file "$cdir/nodes-$rp.conf" --dir "$cdir")
  taskset -c 1 redis-server --port "$rp" --save '' --appendonly no \
    --logfile "$STATE_DIR/redis-$rp.log" "${extra[@]}" &
  redis_pids+=($!)
  pids+=($!)
done
for rp in "${redis_ports[@]}"; do
  for _ in $(seq 50); do redis-cli -p "$rp" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$rp" ping >/dev/null
done
redis_pid=$(IFS=,; echo "${redis_pids[*]}")
redis_urls=$(for rp in "${redis_ports[@]}"; do printf 'redis://127.0.0.1:%s,' "$rp"; done)
redis_urls=${redis_urls%,}
if [ "$cluster" = 1 ]; then
  redis-cli --cluster create $(for rp in "${redis_ports[@]}"; do printf '127.0.0.1:%s ' "$rp"; done) \
    --cluster-replicas 0 --cluster-yes >/dev/null
  for _ in $(seq 100); do
    ok=1
    for rp in "${redis_ports[@]}"; do redis-cli -p "$rp" cluster info | grep -q cluster_state:ok || ok=0; done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
fi

node_pids=()
urls=()
for i in $(seq 1 "$k"); do
  port=$((BASE_PORT + i))
  # shellcheck disable=SC2086
  case "$mode" in
    sharded) redis_args=(--redis-cluster "$redis_urls" --redis-sharded true) ;;
    cluster-interest) redis_args=(--redis-cluster "$redis_urls") ;;
    *) redis_args=(--redis "redis://127.0.0.1:$REDIS_PORT" --redis-subscribe "$mode") ;;
  esac
  taskset -c 0 "$BIN" serve --listen "127.0.0.1:$port" --auth insecure --room-allow '**' \
    "${redis_args[@]}" --shards 1 --pin-cores false \
    --log warn ${NODE_ARGS:-} >"$STATE_DIR/node-$port.log" 2>&1 &
  node_pids+=($!)
  pids+=($!)
  urls+=("ws://127.0.0.1:$port/ws")
done
for i in $(seq 1 "$k"); do
  port=$((BASE_PORT + i))
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://127.0.0.1:$port/health" || { echo "node on $port did not come up:" >&2; cat "$STATE_DIR/node-$port.log" >&2; exit 1; }
done
sleep 0.3

url_list=$(IFS=,; echo "${urls[*]}")
pid_list=$(IFS=,; echo "${node_pids[*]}")
echo "perf-cluster: mode=$mode k=$k redis pid $redis_pid (core 1), nodes $pid_list (core 0), clients/node $CLIENTS, rate $RATE/s, ${DURATION}s" >&2

tck=$(getconf CLK_TCK)
cpu() { awk -v t="$tck" '{ sub(/.*\) /, ""); split($0, f, " "); printf "%.2f", (f[12] + f[13]) / t }' "/proc/$1/stat"; }

gen() { # gen OUTFILE [args...]
  local out=$1; shift
  local route=()
  [ "$mode" = sharded ] && route=(--publish-cmd SPUBLISH --redis-cluster "$redis_urls")
  taskset -c 1 "$GEN_BIN" --nodes "$url_list" --node-pids "$pid_list" --redis-pid "$redis_pid" \
    --redis "redis://127.0.0.1:$REDIS_PORT" --clients "$CLIENTS" --rate "$RATE" --duration "$DURATION" \
    --label "$mode k=$k" "${route[@]}" "$@" >"$out"
}

summary() { # summary JSON UNIT_US
  python3 - "$1" "${2:-}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
unit = float(sys.argv[2]) if sys.argv[2] else None
t, d, l, p = r["totals"], r["deliveries"], r["latency_us"], r["published"]
f = lambda v, fmt="{:.2f}": (fmt.format(v) if v is not None else "-")
print(f"== {r['label']} ({r['mode']}, {r['publish_cmd']}): {r['nodes_count']} nodes x {r['clients_per_node']} clients "
      f"({r['rooms_per_node']} rooms/node), {p['total']} msgs at {p['achieved_rate']:.0f}/s "
      f"(room {p['room']}, spread {p['spread']}, broadcast {p['broadcast']}, no-local {p['no_local']}), "
      f"window {r['window_s']:.1f} s")
print(f"{'node':<24}{'clients':>8}{'chans':>7}{'env in':>9}{'local':>9}{'no-local':>9}"
      f"{'cpu s':>8}{'net s':>8}{'net us/env':>11}{'est no-local s':>16}")
for n in r["nodes"]:
    est = f(n['envelopes_no_local_recipient'] * unit / 1e6, "{:.3f}") if unit is not None and r["mode"] == "mixed" else "-"
    print(f"{n['url'][5:]:<24}{n['clients']:>8}{str(n['subscribed_channels']):>7}{n['envelopes_in']:>9}"
          f"{n['envelopes_with_local_recipient']:>9}{n['envelopes_no_local_recipient']:>9}"
          f"{f(n['cpu_s']):>8}{f(n['cpu_net_s']):>8}{f(n['cpu_net_us_per_envelope']):>11}{est:>16}")
print(f"totals: envelopes {t['envelopes_in']} (no local recipient {t['envelopes_no_local_recipient']}); "
      f"node cpu {f(t['node_cpu_s'])} s, net of idle {f(t['node_cpu_net_s'])} s = {f(t['node_cpu_net_us_per_envelope'])} us/envelope")
print(f"redis cpu {f(t['redis_cpu_s'])} s, net of idle {f(t['redis_cpu_net_s'])} s = "
      f"{f(t['redis_cpu_net_us_per_publish'])} us/PUBLISH, {f(t['redis_cpu_net_us_per_delivered_envelope'])} us/delivered envelope "
      f"(gross {f(t['redis_cpu_us_per_publish'])} / {f(t['redis_cpu_us_per_delivered_envelope'])})")
if unit is not None and r["mode"] == "mixed":
    print(f"estimated node cpu on no-local envelopes: {t['envelopes_no_local_recipient'] * unit / 1e6:.3f} s "
          f"({unit:.2f} us each, from the pattern control run)")
gc = t.get("generator_cpu_s")
if gc is not None:
    print(f"generator cpu {gc:.2f} s over the {r['window_s']:.1f} s window (if near 1 s per s, the generator is the bottleneck and latency includes its queueing)")
print(f"end to end: expected {d['expected']}, received {d['received']}, lost {d['lost']}, dup {d['dup']}, "
      f"misrouted {d['misrouted']}; latency us p50 {l['p50']} p90 {l['p90']} p99 {l['p99']} max {l['max']}; "
      f"clients {r['setup']['clients_connected']} ok / {r['setup']['clients_failed']} failed; publish errors {p['errors']}")
PY
}

unit_file="$STATE_DIR/nolocal-$k.json"
control() {
  local out="$OUT/cluster-$mode-k$k-nolocal.json"
  gen "$out" --no-local "$@"
  summary "$out"
  if [ "$mode" = pattern ]; then
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
u = r["totals"]["node_cpu_net_us_per_envelope"]
json.dump({"k": r["nodes_count"], "unit_us": u, "from": sys.argv[1]}, open(sys.argv[2], "w"))
print("no-local unit cost: %s us per envelope (saved in %s)" % (u, sys.argv[2]))
' "$out" "$unit_file"
  fi
}

if [ "$only_control" = 1 ]; then
  control "$@"
  exit 0
fi

rm -f "$OUT/cluster-$mode-k$k-nolocal.txt" "$OUT/cluster-$mode-k$k-nolocal.json"
declare -A c0
for p in "${redis_pids[@]}" "${node_pids[@]}"; do c0[$p]=$(cpu "$p"); done
out="$OUT/cluster-$mode-k$k.json"
gen "$out" "$@"
declare -A c1
for p in "${redis_pids[@]}" "${node_pids[@]}"; do c1[$p]=$(cpu "$p"); done

if [ "$CONTROL" = 1 ] && [ "$mode" = pattern ]; then
  echo "perf-cluster: control run (--no-local) on the same nodes" >&2
  control "$@" >"$OUT/cluster-$mode-k$k-nolocal.txt"
fi
unit=
[ -f "$unit_file" ] && unit=$(python3 -c 'import json,sys; u=json.load(open(sys.argv[1]))["unit_us"]; print(u if u is not None else "")' "$unit_file")

summary "$out" "$unit"
# Whole generator run (connects, probes, publishing, drain) as the script
# saw it, and the nodes' lifetime envelope counters: a cross-check.
echo "whole generator run, cpu s: redis $(for p in "${redis_pids[@]}"; do echo "${c0[$p]} ${c1[$p]}"; done | awk '{s += $2 - $1} END {printf "%.2f", s}')$(
  for p in "${node_pids[@]}"; do printf ', node %s %.2f' "$p" "$(awk -v a="${c0[$p]}" -v b="${c1[$p]}" 'BEGIN{print b-a}')"; done)"
for i in $(seq 1 "$k"); do
  port=$((BASE_PORT + i))
  echo "node :$port lifetime envelopes_in: $(curl -s "http://127.0.0.1:$port/metrics" | awk '/^ignis_ws_redis_envelopes_in_total/ { s += $2; split($1, a, "\""); printf "%s=%s ", a[2], $2 } END { printf "(sum %d)", s }')"
done
if [ -f "$OUT/cluster-$mode-k$k-nolocal.txt" ]; then cat "$OUT/cluster-$mode-k$k-nolocal.txt"; fi
echo "reports: $OUT/cluster-$mode-k$k*.json" >&2
