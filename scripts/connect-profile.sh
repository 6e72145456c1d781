#!/usr/bin/env bash
# Where a connect storm's CPU goes: a system-wide profile of core 0 (the
# server's core) for 0.4 s in the middle of a 10,000-client
# `--connect-only` run, the samples of the server's threads classified by
# what the call stack shows: user space, each system call, softirq.
#
#   scripts/connect-profile.sh floor|uring|epoll [BIN]
#
# BIN: the ignis-ws binary (default target/release/ignis-ws); the floor is
# target/release/examples/floor. Redis on REDIS_PORT (6391) must be running
# (scripts/perf-run.sh starts one). Needs perf.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=$1
BIN=${2:-target/release/ignis-ws}
REDIS_PORT=${REDIS_PORT:-6391}
PORT=${PORT:-9000}
out=${OUT:-/tmp/connect-profile-$kind}
if [ "$kind" = floor ]; then
  taskset -c 0 target/release/examples/floor "127.0.0.1:$PORT" "redis://127.0.0.1:$REDIS_PORT" >/dev/null 2>&1 &
else
  taskset -c 0 "$BIN" serve --auth insecure --room-allow '**' --shards 1 --io "$kind" \
    --redis "redis://127.0.0.1:$REDIS_PORT" --listen "127.0.0.1:$PORT" --log warn >/dev/null 2>&1 &
fi
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
sleep 1
taskset -c 1 "$BIN" bench --url "ws://127.0.0.1:$PORT/ws" --redis "redis://127.0.0.1:$REDIS_PORT" -q \
  -c 10000 --connect-only --idle-settle 2 --server-pid "$pid" 2>&1 | grep -E "connected|CPU:" &
bench=$!
sleep 0.15
perf record -C 0 -g -F 4000 -o "$out.data" -- sleep 0.4 >/dev/null 2>&1
wait $bench
perf script -i "$out.data" -F comm,ip,sym 2>/dev/null | python3 -c '
import sys, collections
server = {"floor", "ignis-shard-0", "ignis-control"}
cats = collections.Counter()
total = 0
for block in sys.stdin.read().split("\n\n"):
    lines = [l.strip() for l in block.strip().split("\n") if l.strip()]
    if not lines or lines[0].split()[0] not in server:
        continue
    comm = lines[0].split()[0]
    frames = [l.split(None, 1)[1] if len(l.split(None, 1)) > 1 else "" for l in lines[1:]]
    total += 1
    calls = [f.split("+")[0] for f in frames
             if f.startswith("__x64_sys_") or f.startswith("__do_sys_io_uring_enter")]
    if calls:
        what = calls[-1].replace("__x64_sys_", "").replace("__do_sys_", "")
    elif any("handle_softirqs" in f for f in frames):
        what = "softirq"
    elif frames and not frames[0].startswith(("entry_", "asm_", "__", "do_", "ret_")) \
            and "[kernel" not in frames[0]:
        what = "user space"
    else:
        what = "other kernel"
    cats[f"{comm}: {what}"] += 1
print(f"{total} samples of the server threads on core 0")
for k, v in cats.most_common(20):
    print(f"{v:7d}  {k}")
'
