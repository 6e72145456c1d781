#!/usr/bin/env bash
# One side-by-side performance run: a server pinned to core 0, the load
# generator (and Redis) on core 1, as PERFORMANCE.md describes.
#
#   scripts/perf-run.sh SERVER [SERVERS] -- BENCH-ARGS...
#
# SERVER:  uring | epoll | bun
#          | floor (examples/floor.rs, a do-nothing server: the kernel's
#            share of the same work; build it with
#            `cargo build --release --example floor`)
# SERVERS: processes sharing the port through SO_REUSEPORT (default 1;
#          a process holds at most ~19,900 connections here). Not for bun.
# Env:     BIN (default target/release/ignis-ws), GEN_BIN (the load
#          generator's binary, default BIN), PORT (9000),
#          REDIS_PORT (6391, started if not running), BUN_DIR (the
#          installed shared/anchors/ignis-bun-perf, for SERVER=bun),
#          SERVER_ARGS (extra ignis-ws serve flags).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/ignis-ws}
PORT=${PORT:-9000}
REDIS_PORT=${REDIS_PORT:-6391}
kind=$1; shift
servers=1
if [ "${1:-}" != "--" ]; then servers=$1; shift; fi
[ "${1:-}" = "--" ] && shift

if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  taskset -c 1 redis-server --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
    --logfile "/tmp/ignis-perf-redis-$REDIS_PORT.log"
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# ignis-ws listens with SO_REUSEPORT: a server left over on this port would
# silently take a share of the connections and spoil every figure.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
if port_open; then
  echo "port $PORT is already in use (a server left over?): stop it or set PORT" >&2
  exit 2
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

for _ in $(seq "$servers"); do
  case "$kind" in
    uring|epoll)
      # shellcheck disable=SC2086
      taskset -c 0 "$BIN" serve --auth insecure --room-allow '**' --shards 1 --io "$kind" \
        --redis "redis://127.0.0.1:$REDIS_PORT" \
        --listen "127.0.0.1:$PORT" --log warn ${SERVER_ARGS:-} >/dev/null 2>&1 &
      pids+=($!)
      ;;
    floor)
      [ "$servers" = 1 ] || { echo "floor: one process only" >&2; exit 2; }
      taskset -c 0 "${FLOOR_BIN:-target/release/examples/floor}" "127.0.0.1:$PORT" \
        "redis://127.0.0.1:$REDIS_PORT" >/dev/null 2>&1 &
      pids+=($!)
      ;;
    bun)
      [ "$servers" = 1 ] || { echo "bun: one process only" >&2; exit 2; }
      (cd "${BUN_DIR:?set BUN_DIR}" && exec taskset -c 0 env PORT="$PORT" REDIS_PORT="$REDIS_PORT" \
        APP_ENV_LOGGER_FOLDER_PATH=/tmp/ignis-bun-logs node_modules/.bin/bun run server.ts) >/dev/null 2>&1 &
      pids+=($!)
      ;;
    *) echo "unknown server $kind" >&2; exit 2 ;;
  esac
done
# Ready when the port answers HTTP (health for ignis-ws, stats for Bun,
# anything for the floor).
for _ in $(seq 100); do
  if [ "$kind" = floor ]; then port_open && break; sleep 0.1; continue; fi
  curl -s -o /dev/null "http://127.0.0.1:$PORT/health" && curl -s -o /dev/null "http://127.0.0.1:$PORT/stats" && break
  curl -sf -o /dev/null "http://127.0.0.1:$PORT/health" && break
  curl -sf -o /dev/null "http://127.0.0.1:$PORT/stats" && break
  sleep 0.1
done
sleep 0.5
pidlist=$(IFS=,; echo "${pids[*]}")
taskset -c 1 "${GEN_BIN:-$BIN}" bench --url "ws://127.0.0.1:$PORT/ws" --redis "redis://127.0.0.1:$REDIS_PORT" \
  --server-pid "$pidlist" -q "$@"
