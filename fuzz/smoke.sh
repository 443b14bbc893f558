#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 15) from its
# seeds, two at a time; fails if any finds a crash, leak, timeout or
# out-of-memory.
#   bash fuzz/smoke.sh [SECONDS] [TARGET...]
# Needs cargo-fuzz (`cargo install --locked cargo-fuzz`). cargo-fuzz asks
# rustc for the nightly-only sanitizer and coverage flags; RUSTC_BOOTSTRAP=1
# lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
seconds="${1:-15}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
# The seeds and fixtures are committed; make them if they are missing.
if [ ! -d seeds ] || [ ! -d fixtures ]; then
    cargo run --release --example seeds
fi
# The default build: optimized, with debug assertions, overflow checks and
# AddressSanitizer. (`--release`/`-O` would turn the overflow checks off.)
cargo fuzz build
mkdir -p corpus logs

run_one() {
    local t="$1" seconds="$2" start execs
    mkdir -p "corpus/$t"
    start=$(date +%s)
    # The working corpus first (new inputs go there), then the committed seeds.
    if ! cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
        > "logs/$t.log" 2>&1; then
        # The first lines name the failure and its stack; cargo-fuzz then dumps the input.
        grep -m1 -B2 -A40 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)" "logs/$t.log" ||
            tail -n 40 "logs/$t.log"
        echo "fuzz: $t FAILED: input in fuzz/artifacts/$t/, log in fuzz/logs/$t.log"
        return 1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log")
    echo "fuzz: $t ok: ${execs:-?} executions in $(($(date +%s) - start))s, 0 crashes"
}
export -f run_one

# Two at a time (the machine has two cores).
printf '%s\n' "${targets[@]}" | xargs -P 2 -I{} bash -c 'run_one "$1" "$2"' _ {} "$seconds"
