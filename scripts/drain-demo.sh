#!/usr/bin/env bash
# A drain seen by 20,000 clients: two ignis-ws processes share the port
# (SO_REUSEPORT; a process holds at most 20,000 fds here), two watchers
# (examples/drain_watch.rs) hold 10,000 authenticated clients each; the
# servers get SIGTERM and the watchers print when the closes arrived.
#
#   cargo build --release --bin ignis-ws --example drain_watch
#   scripts/drain-demo.sh [CLIENTS_PER_WATCHER] [DELAY_MS] [SPREAD_MS]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/ignis-ws}
WATCH=${WATCH:-target/release/examples/drain_watch}
PORT=${PORT:-9100}
n=${1:-10000} delay=${2:-2000} spread=${3:-10000}
out=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
for i in 1 2; do
  "$BIN" serve --auth insecure --shards 1 --listen "127.0.0.1:$PORT" --log warn \
    --drain-delay-ms "$delay" --drain-spread-ms "$spread" >"$out/server$i.log" 2>&1 &
  pids+=($!)
done
servers=("${pids[@]}")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
for i in 1 2; do
  "$WATCH" "ws://127.0.0.1:$PORT/ws" "$n" >"$out/watch$i.out" 2>"$out/watch$i.err" &
  pids+=($!)
done
watchers=("${pids[@]:2}")
until grep -q ready "$out/watch1.out" 2>/dev/null && grep -q ready "$out/watch2.out" 2>/dev/null; do
  sleep 0.2
done
t0=$(date +%s.%N)
kill -TERM "${servers[@]}"
for p in "${watchers[@]}"; do wait "$p"; done
t1=$(date +%s.%N)
echo "SIGTERM to both servers; drain delay ${delay} ms, spread ${spread} ms; watchers done after $(echo "$t1 - $t0" | bc) s"
for i in 1 2; do tail -n 1 "$out/watch$i.out"; done
