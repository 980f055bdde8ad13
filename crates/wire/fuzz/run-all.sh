#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each, seeded from seeds/.
# Usage: crates/wire/fuzz/run-all.sh [SECONDS] [extra cargo-fuzz args, e.g. --sanitizer none]
# Full logs go to logs/<target>.log, crashes to artifacts/<target>/.
set -uo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(cd ../../.. && pwd)/target-wire-fuzz}"
# cargo-fuzz's sanitizer flags are nightly-only; this lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
mkdir -p logs
failed=0
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target" "seeds/$target"
    log="logs/$target.log"
    if cargo fuzz run "$@" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        failed=1
    fi
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)
    rss=$(grep -oE 'stat::peak_rss_mb: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
    echo "$target: $result, $runs runs, $cov, peak rss ${rss} MB"
done
exit "$failed"
