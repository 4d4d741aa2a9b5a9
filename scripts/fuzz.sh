#!/usr/bin/env bash
# Coverage-guided fuzzing of every reader of user input (cargo-fuzz, libFuzzer), from the
# seed corpora in fuzz/corpus/ (copied from the tests and examples).
#
#   scripts/fuzz.sh                  # every target, RUNS executions each (default 1000000)
#   RUNS=20000 scripts/fuzz.sh       # a smoke run (what .ci/run does)
#   scripts/fuzz.sh dsl_parse        # one target
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`; installed here when missing) and a
# nightly toolchain; with only a stable one, RUSTC_BOOTSTRAP=1 lets cargo-fuzz's flags
# through. Without a sanitizer (`-s none`): the targets are safe Rust; what is hunted is
# panics (debug assertions on: integer overflow included), aborts (failed allocations) and
# hangs (libFuzzer's -timeout). A crash leaves its input in fuzz/artifacts/<target>/; make it
# a regression test before fixing it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
RUNS=${RUNS:-1000000}
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <("${fuzz[@]}" list)
fi
"${fuzz[@]}" build -s none
for t in "${targets[@]}"; do
    echo "== fuzz $t: $RUNS runs"
    # Seeds are read from corpus/$t; new inputs go to a scratch copy, so a run leaves the
    # checked-in corpus as it was.
    scratch=$(mktemp -d)
    log=$(mktemp)
    status=0
    "${fuzz[@]}" run -s none "$t" "$scratch" "corpus/$t" -- \
        -runs="$RUNS" -timeout=10 -rss_limit_mb=4096 -malloc_limit_mb=4096 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ *DONE)' "$log" || true
    rm -rf "$scratch"
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log"
        echo "fuzz $t: FAILED (exit $status); the input is in fuzz/artifacts/$t/"
        exit 1
    fi
    rm -f "$log"
done
echo "fuzz: ${#targets[@]} targets, $RUNS runs each, no crash"
