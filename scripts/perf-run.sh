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
#          TLS (the generator connects to wss:// with --ca-file):
#          | uring-tls | epoll-tls (ignis-ws serving TLS itself:
#            --tls-cert/--tls-key)
#          | bun-tls (Bun's own TLS: TLS_CERT/TLS_KEY)
#          | nginx (nginx terminating TLS on PORT, NGINX_WORKERS workers (2), proxying the
#            WebSocket to a plain ignis-ws --io uring on PORT+1; both on
#            core 0, and the server's CPU and RSS are those of nginx's
#            master and workers plus ignis-ws's)
# SERVERS: processes sharing the port through SO_REUSEPORT (default 1;
#          a process holds at most ~19,900 connections here). Not for bun,
#          bun-tls or nginx.
# Env:     BIN (default target/release/ignis-ws), GEN_BIN (the load
#          generator's binary, default BIN), PORT (9000),
#          REDIS_PORT (6391, started if not running), BUN_DIR (the
#          installed shared/anchors/ignis-bun-perf, for SERVER=bun/bun-tls),
#          SERVER_ARGS (extra ignis-ws serve flags), TLS_DIR (TLS modes:
#          ca.pem, cert.pem = leaf + CA, key.pem; default /tmp/tls-perf,
#          made by scripts/tls-test-ca.sh when missing), NGINX (nginx
#          binary, default nginx), COUNT_SYSCALLS=1 (the bench counts the
#          server's write system calls with perf: `--count-syscalls`),
#          CPU_SPLIT=1 (prints the server processes' user and system CPU
#          ticks over the whole bench run, from /proc/PID/stat: connects,
#          warm-up and measured phase together), THREAD_SPLIT=1 (the same
#          ticks per thread name: shards, the control thread).
# The shape of the writes: with one ignis-ws process the bench reads its
# /metrics (`--metrics-url`); every run reads the kernel's TCP counters.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/ignis-ws}
PORT=${PORT:-9000}
REDIS_PORT=${REDIS_PORT:-6391}
kind=$1; shift
servers=1
if [ "${1:-}" != "--" ]; then servers=$1; shift; fi
[ "${1:-}" = "--" ] && shift

TLS_DIR=${TLS_DIR:-/tmp/tls-perf}
scheme=ws
gen_tls=()
curl_tls=()
case "$kind" in
  *-tls|nginx)
    if [ ! -f "$TLS_DIR/ca.pem" ] || [ ! -f "$TLS_DIR/cert.pem" ] || [ ! -f "$TLS_DIR/key.pem" ]; then
      scripts/tls-test-ca.sh "$TLS_DIR" >&2
    fi
    scheme=wss
    gen_tls=(--ca-file "$TLS_DIR/ca.pem")
    curl_tls=(--cacert "$TLS_DIR/ca.pem")
    ;;
esac
case "$kind" in
  bun|bun-tls|nginx|floor) [ "$servers" = 1 ] || { echo "$kind: one process only" >&2; exit 2; } ;;
esac
http=http; [ "$scheme" = wss ] && http=https

if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  taskset -c 1 redis-server --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
    --logfile "/tmp/ignis-perf-redis-$REDIS_PORT.log"
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# ignis-ws listens with SO_REUSEPORT: a server left over on this port would
# silently take a share of the connections and spoil every figure.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/${1:-$PORT}") 2>/dev/null; }
if port_open; then
  echo "port $PORT is already in use (a server left over?): stop it or set PORT" >&2
  exit 2
fi
if [ "$kind" = nginx ] && port_open $((PORT + 1)); then
  echo "port $((PORT + 1)) (nginx's backend) is already in use: stop it or set PORT" >&2
  exit 2
fi

pids=()
nginx_dir=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -z "$nginx_dir" ] || rm -rf "$nginx_dir"
}
trap cleanup EXIT

# nginx's configuration: TLS on PORT, the WebSocket proxied unbuffered to
# ignis-ws on PORT+1. Each client holds two connections in a worker (one
# from the client, one to ignis-ws). A process may hold 20,000 fds here, so
# 10,000 clients need two workers (NGINX_WORKERS, default 2, both on core 0
# like everything on the server side; `reuseport` splits the clients
# between them).
nginx_conf() {
  cat <<CONF
daemon off;
master_process on;
worker_processes ${NGINX_WORKERS:-2};
worker_rlimit_nofile 19500;
pid $nginx_dir/nginx.pid;
error_log $nginx_dir/error.log warn;
events {
  worker_connections 19000;
  multi_accept on;
}
http {
  access_log off;
  client_body_temp_path $nginx_dir/client_body;
  proxy_temp_path $nginx_dir/proxy;
  fastcgi_temp_path $nginx_dir/fastcgi;
  uwsgi_temp_path $nginx_dir/uwsgi;
  scgi_temp_path $nginx_dir/scgi;
  map \$http_upgrade \$connection_upgrade {
    default upgrade;
    ''      close;
  }
  server {
    listen 127.0.0.1:$PORT ssl reuseport;
    ssl_certificate $TLS_DIR/cert.pem;
    ssl_certificate_key $TLS_DIR/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://127.0.0.1:$((PORT + 1));
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }
  }
}
CONF
}

for _ in $(seq "$servers"); do
  case "$kind" in
    uring|epoll)
      # shellcheck disable=SC2086
      taskset -c 0 "$BIN" serve --auth insecure --room-allow '**' --shards 1 --io "$kind" \
        --redis "redis://127.0.0.1:$REDIS_PORT" \
        --listen "127.0.0.1:$PORT" --log warn ${SERVER_ARGS:-} >/dev/null 2>&1 &
      pids+=($!)
      ;;
    uring-tls|epoll-tls)
      # shellcheck disable=SC2086
      taskset -c 0 "$BIN" serve --auth insecure --room-allow '**' --shards 1 --io "${kind%-tls}" \
        --redis "redis://127.0.0.1:$REDIS_PORT" \
        --tls-cert "$TLS_DIR/cert.pem" --tls-key "$TLS_DIR/key.pem" \
        --listen "127.0.0.1:$PORT" --log warn ${SERVER_ARGS:-} >/dev/null 2>&1 &
      pids+=($!)
      ;;
    nginx)
      # ignis-ws behind nginx: plain, on PORT+1, same core.
      # shellcheck disable=SC2086
      taskset -c 0 "$BIN" serve --auth insecure --room-allow '**' --shards 1 --io uring \
        --redis "redis://127.0.0.1:$REDIS_PORT" \
        --listen "127.0.0.1:$((PORT + 1))" --log warn ${SERVER_ARGS:-} >/dev/null 2>&1 &
      pids+=($!)
      nginx_dir=$(mktemp -d /tmp/ignis-perf-nginx.XXXXXX)
      chmod 755 "$nginx_dir"
      nginx_conf >"$nginx_dir/nginx.conf"
      # taskset execs nginx: $! is nginx's master (its worker inherits core 0).
      taskset -c 0 "${NGINX:-nginx}" -p "$nginx_dir" -c "$nginx_dir/nginx.conf" \
        >"$nginx_dir/stdout.log" 2>&1 &
      pids+=($!)
      ;;
    floor)
      taskset -c 0 "${FLOOR_BIN:-target/release/examples/floor}" "127.0.0.1:$PORT" \
        "redis://127.0.0.1:$REDIS_PORT" >/dev/null 2>&1 &
      pids+=($!)
      ;;
    bun)
      (cd "${BUN_DIR:?set BUN_DIR}" && exec taskset -c 0 env PORT="$PORT" REDIS_PORT="$REDIS_PORT" \
        APP_ENV_LOGGER_FOLDER_PATH=/tmp/ignis-bun-logs node_modules/.bin/bun run server.ts) >/dev/null 2>&1 &
      pids+=($!)
      ;;
    bun-tls)
      (cd "${BUN_DIR:?set BUN_DIR}" && exec taskset -c 0 env PORT="$PORT" REDIS_PORT="$REDIS_PORT" \
        TLS_CERT="$TLS_DIR/cert.pem" TLS_KEY="$TLS_DIR/key.pem" \
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
  # Through nginx, /health answers once nginx and ignis-ws both do.
  curl -s "${curl_tls[@]}" -o /dev/null "$http://127.0.0.1:$PORT/health" \
    && curl -s "${curl_tls[@]}" -o /dev/null "$http://127.0.0.1:$PORT/stats" && break
  curl -sf "${curl_tls[@]}" -o /dev/null "$http://127.0.0.1:$PORT/health" && break
  curl -sf "${curl_tls[@]}" -o /dev/null "$http://127.0.0.1:$PORT/stats" && break
  sleep 0.1
done
sleep 0.5
nginx_log() { [ -z "$nginx_dir" ] || cat "$nginx_dir/error.log" "$nginx_dir/stdout.log" >&2 2>/dev/null || true; }
for p in "${pids[@]}"; do
  kill -0 "$p" 2>/dev/null || { echo "server process $p ($kind) is not running" >&2; nginx_log; exit 1; }
done
measured=("${pids[@]}")
if [ "$kind" = nginx ]; then
  # nginx's workers are the master's children; the figures are the sum of
  # every process named here.
  workers=$(pgrep -P "${pids[-1]}" || true)
  [ -n "$workers" ] || { echo "nginx started no worker" >&2; nginx_log; exit 1; }
  for w in $workers; do measured+=("$w"); done
fi
pidlist=$(IFS=,; echo "${measured[*]}")
echo "perf-run: $kind, server processes measured (summed): $(ps -o pid=,comm= -p "$pidlist" | tr -s ' \n' ' ')" >&2
shape=()
case "$kind" in
  uring|epoll|uring-tls|epoll-tls)
    [ "$servers" = 1 ] && shape+=(--metrics-url "http://127.0.0.1:$PORT/metrics")
    [ "$kind" = "${kind%-tls}" ] || shape=()  # /metrics is behind TLS there
    ;;
esac
[ "${COUNT_SYSCALLS:-0}" = 1 ] && shape+=(--count-syscalls)
# User and system ticks of every measured server process, summed.
ticks() {
  local u=0 s=0 a b p
  for p in "${measured[@]}"; do
    read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat")
    u=$((u + a)); s=$((s + b))
  done
  echo "$u $s"
}
[ "${CPU_SPLIT:-0}" = 1 ] && read -r u0 s0 < <(ticks)
# User+system ticks of each thread of the measured processes, by name.
thread_ticks() {
  local p t
  for p in "${measured[@]}"; do
    for t in /proc/"$p"/task/*; do
      awk -v tid="${t##*/}" '{ sub(/^[^(]*\(/, ""); name=$0; sub(/\).*/, "", name);
        sub(/^[^)]*\) /, ""); print tid, name, $12 + $13 }' "$t/stat" 2>/dev/null
    done
  done
}
[ "${THREAD_SPLIT:-0}" = 1 ] && thread_ticks > "/tmp/perf-run-threads.$$"
rc=0
taskset -c 1 "${GEN_BIN:-$BIN}" bench --url "$scheme://127.0.0.1:$PORT/ws" "${gen_tls[@]}" \
  --redis "redis://127.0.0.1:$REDIS_PORT" --server-pid "$pidlist" "${shape[@]}" -q "$@" || rc=$?
if [ "${CPU_SPLIT:-0}" = 1 ]; then
  read -r u1 s1 < <(ticks)
  echo "perf-run: server CPU over the whole run: user $((u1 - u0)) ticks, system $((s1 - s0)) ticks ($(getconf CLK_TCK) per second)" >&2
fi
if [ "${THREAD_SPLIT:-0}" = 1 ]; then
  thread_ticks | awk 'NR == FNR { before[$1] = $3; next }
    { by[$2] += $3 - before[$1] }
    END { printf "perf-run: server CPU by thread (ticks):"; for (n in by) printf " %s=%d", n, by[n]; print "" }' \
    "/tmp/perf-run-threads.$$" - >&2
  rm -f "/tmp/perf-run-threads.$$"
fi
exit $rc
