#!/usr/bin/env bash
# The TLS sitting of PERFORMANCE.md: ignis-ws without and with TLS, Ignis on
# Bun with its own TLS, and nginx terminating TLS in front of ignis-ws, at
# 10,000 clients, each server side on core 0 (see perf-run.sh), for every
# workload, one file per run.
#
#   scripts/perf-tls.sh OUTDIR [ROUNDS]
#
# Env: BUN_DIR (installed shared/anchors/ignis-bun-perf), TLS_DIR (test CA
# and certificate, made by scripts/tls-test-ca.sh if missing), BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
outdir=${1:?usage: scripts/perf-tls.sh OUTDIR [ROUNDS]}
rounds=${2:-1}
declare -A W=(
  [flood100]="-c 10000 --flood --warmup 2 --duration 10 --payload-size 100"
  [flood1k]="-c 10000 --flood --warmup 2 --duration 10 --payload-size 1KiB"
  [rate10]="-c 10000 --rate 10 --duration 10"
  [connect]="-c 10000 --connect-only"
)
for r in $(seq "$rounds"); do
  out="$outdir/round$r"
  mkdir -p "$out"
  for w in connect flood100 flood1k rate10; do
    for k in uring uring-tls bun-tls nginx; do
      echo "== round $r $w $k $(date -u +%H:%M:%S)"
      # shellcheck disable=SC2086
      timeout 300 scripts/perf-run.sh "$k" -- ${W[$w]} >"$out/$w-$k.txt" 2>&1 || echo "exit $?"
      grep -E 'per delivery|per idle|per connection|lost' "$out/$w-$k.txt" | head -4
      sleep 2
    done
  done
done
