#!/usr/bin/env bash
# Every run behind PERFORMANCE.md, in one sitting: each server pinned to
# core 0, generator and Redis on core 1. Output: one file per run in
# ${OUT:-perf-results}/ (ONLY=regex: just the matching rows). Needs a release build (cargo build --release) and,
# for the Bun rows, BUN_DIR (see scripts/perf-run.sh). Takes ~20 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-perf-results}
mkdir -p "$OUT"
run() { # name server [servers] -- args
  local name=$1; shift
  # ONLY=regex runs the matching rows alone (e.g. ONLY='100k-flood').
  [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]] && return 0
  echo "== $name: $*" | tee "$OUT/$name.txt"
  scripts/perf-run.sh "$@" 2>&1 | tee -a "$OUT/$name.txt" | grep -E "connect |CPU: server|lost|latency|kdeliveries|server RSS|server CPU|generator|NOTE" || true
  sleep 2
}
servers="uring epoll"
[ -n "${BUN_DIR:-}" ] && servers="$servers bun"
# Connect + authenticate alone, three interleaved rounds, beside the
# do-nothing floor (examples/floor.rs): what the kernel's share of
# the same exchange allows on this machine. The floor sets
# TCP_DEFER_ACCEPT as ignis-ws does by default; "floor0" is the floor
# without it (FLOOR_DEFER_ACCEPT=0), as it was before.
cargo build --release --example floor -q
for round in 1 2 3; do
  for s in floor floor0 uring epoll ${BUN_DIR:+bun}; do
    if [ "$s" = floor0 ]; then
      FLOOR_DEFER_ACCEPT=0 run "connect-$s-$round" floor -- -c 10000 --connect-only --idle-settle 0
    else
      run "connect-$s-$round" "$s" -- -c 10000 --connect-only --idle-settle 0
    fi
  done
done
# The floor (examples/floor.rs) beside them: what the kernel costs for the
# same deliveries.
for s in floor $servers; do
  run "$s-10k-rate10" "$s" -- -c 10000 --rate 10 --duration 10
  run "$s-10k-flood-100B" "$s" -- -c 10000 --flood --warmup 2 --duration 10
  run "$s-10k-flood-1KiB" "$s" -- -c 10000 --flood --warmup 2 --duration 10 --payload-size 1KiB
done
# Bursts (issue 16): 300 messages at once, a burst every 4 s, three in
# the measured 12 s; the shape columns (write system calls by perf, TCP
# segments, the generator's CPU) come with each report. Two interleaved
# rounds at 1 KiB; "floor64" is the floor as it was before issue 16 (64
# iovecs per sendmsg, 5 writes per client per burst).
for round in 1 2; do
  for s in floor floor64 $servers; do
    kind=$s; iov=1024
    [ "$s" = floor64 ] && { kind=floor; iov=64; }
    FLOOR_MAX_IOV=$iov COUNT_SYSCALLS=1 run "$s-10k-burst-1KiB-$round" "$kind" -- -c 10000 --burst 300 \
      --burst-every 4 --duration 12 --warmup 4 --payload-size 1KiB
  done
done
for s in floor $servers; do
  COUNT_SYSCALLS=1 run "$s-10k-burst-100B" "$s" -- -c 10000 --burst 300 --burst-every 4 --duration 12 --warmup 4
done
for s in uring epoll; do
  run "$s-1k-rate10" "$s" -- -c 1000 --rate 10 --duration 10
  run "$s-1k-flood-100B" "$s" -- -c 1000 --flood --warmup 2 --duration 10
  run "$s-1k-flood-1KiB" "$s" -- -c 1000 --flood --warmup 2 --duration 10 --payload-size 1KiB
  # Several source addresses: each has its own ephemeral ports, and the
  # TIME_WAIT sockets of the previous runs hold some of them.
  run "$s-50k-rate1" "$s" 3 -- -c 50000 --source-ips 127.0.0.1-127.0.0.10 --rate 1 --duration 10
  # A window of 64 at 50k and 100k: 256 × 50,000 deliveries in flight are
  # several seconds of backlog, longer than the measured window is useful.
  run "$s-50k-flood-100B" "$s" 3 -- -c 50000 --source-ips 127.0.0.1-127.0.0.10 --flood --window 64 --warmup 2 --duration 10
  run "$s-50k-flood-1KiB" "$s" 3 -- -c 50000 --source-ips 127.0.0.1-127.0.0.10 --flood --window 64 --warmup 2 --duration 10 --payload-size 1KiB
  run "$s-100k-rate1" "$s" 6 -- -c 100000 --source-ips 127.0.0.11-127.0.0.30 --rate 1 --duration 10
  run "$s-100k-flood-100B" "$s" 6 -- -c 100000 --source-ips 127.0.0.31-127.0.0.50 --flood --window 64 --warmup 2 --duration 10
  run "$s-100k-flood-1KiB" "$s" 6 -- -c 100000 --source-ips 127.0.0.51-127.0.0.70 --flood --window 64 --warmup 2 --duration 10 --payload-size 1KiB
done
for us in 0 5000 20000 50000; do
  SERVER_ARGS="--write-coalesce-us $us" run "uring-10k-rate50-coalesce$us" uring -- -c 10000 --rate 50 --duration 10
done
