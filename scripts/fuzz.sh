#!/usr/bin/env bash
# Run every fuzz target for a bounded time (default 60 s each).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). libFuzzer's
# sanitizer flags are nightly-only; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them (AddressSanitizer, cargo-fuzz's default).
# Each target starts from its checked-in seeds (fuzz/corpus/TARGET) and
# grows a working corpus in fuzz/work/TARGET (not in git). A crash stops
# the run and leaves its input in fuzz/artifacts/TARGET/: copy it to
# fuzz/regressions/TARGET/ with the fix, so `cargo test` replays it
# (tests/fuzz_corpus.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame_parser frame_differential frame_roundtrip handshake client_message redis_envelope redis_replies publish_head room_pattern tls_records)
fi
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2; exit 2; }
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  dict=()
  case "$t" in
    handshake|publish_head) dict=(-dict=fuzz/dict/http.dict) ;;
    client_message|redis_envelope) dict=(-dict=fuzz/dict/json.dict) ;;
    room_pattern) dict=(-dict=fuzz/dict/room.dict) ;;
  esac
  mkdir -p "fuzz/work/$t"
  echo "== $t: ${secs}s"
  cargo fuzz run --fuzz-dir fuzz "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -max_len=4096 -print_final_stats=1 "${dict[@]}" 2>&1 \
    | grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==ERROR|SUMMARY|thread .* panicked|Test unit written)" || true
  if ls "fuzz/artifacts/$t"/crash-* >/dev/null 2>&1; then
    echo "CRASH in $t: $(ls fuzz/artifacts/$t/crash-*)" >&2
    exit 1
  fi
done
echo "== no crash"
