#!/usr/bin/env bash
# The soak (issue 6): the release `ignis-ws` binary under client churn for
# SECONDS (default 300), about 5,000 clients connected at the peak.
#
#   scripts/soak.sh [SECONDS]
#
# Runs tests/soak.rs in release mode with SOAK_SECS=SECONDS and prints its
# summary line: duration, clients churned, publishes, deliveries checked,
# and the server's RSS (baseline after a warm-up wave, peak, final).
# SOAK_SEED=N repeats a run's random choices (the seed is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
SOAK_SECS=$secs cargo test --release --test soak -- --nocapture 2>&1 | tee "$log" || status=$?
echo
grep -E '^soak( summary)?:' "$log" || echo "soak: no summary (the run failed before its end)"
exit "$status"
