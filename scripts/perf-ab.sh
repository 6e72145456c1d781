#!/usr/bin/env bash
# A before/after sitting: two server binaries, the same load generator,
# runs alternated so that the machine's drift hits both alike.
#
#   scripts/perf-ab.sh BASE_BIN NEW_BIN OUTDIR [ROUNDS]
#
# Per round and binary: flood 100 B, flood 1 KiB, 10 msg/s, connect only
# (10,000 clients, io_uring, readiness receive). One report per run in
# OUTDIR/{base,new}-{flood100,flood1KiB,rate10,connect}-ROUND.txt.
# GEN_BIN (default NEW_BIN) is the generator for both.
set -euo pipefail
cd "$(dirname "$0")/.."
base=$1 new=$2 out=$3 rounds=${4:-2}
mkdir -p "$out"
gen=${GEN_BIN:-$new}
declare -A args=(
  [flood100]="-c 10000 --flood --warmup 2 --duration 10 --payload-size 100"
  [flood1KiB]="-c 10000 --flood --warmup 2 --duration 10 --payload-size 1KiB"
  [rate10]="-c 10000 --rate 10 --duration 10"
  [connect]="-c 10000 --connect-only"
)
for round in $(seq "$rounds"); do
  for kind in flood100 flood1KiB rate10 connect; do
    for side in base new; do
      bin=$base; [ "$side" = new ] && bin=$new
      f="$out/$side-$kind-$round.txt"
      echo "== $f"
      # shellcheck disable=SC2086
      BIN=$bin GEN_BIN=$gen scripts/perf-run.sh uring -- ${args[$kind]} >"$f" 2>&1 || echo "FAILED: $f"
    done
  done
done
