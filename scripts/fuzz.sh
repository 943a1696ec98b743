#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and reports executions and findings: the
# secure-aggregation codec and state machines (secagg/fuzz) and every other decoder of network
# bytes (fuzz/: uploads, tasks, job submissions, checkpoints), and random event sequences against
# the coordinator's JobMachine (fuzz/: job_machine).
#
#   scripts/fuzz.sh [seconds-per-target]     (default 60)
#
# cargo-fuzz needs nightly compiler flags (-Zsanitizer); on the stable toolchain this script sets
# RUSTC_BOOTSTRAP=1. Installs cargo-fuzz if missing. Not part of CI. Corpora and crash artifacts
# stay in <fuzz dir>/{corpus,artifacts} (git-ignored). Exits non-zero if any target found a crash.
set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz..."
    cargo install cargo-fuzz --locked
fi

failed=0
summary=()
for FUZZ_DIR in "$ROOT/secagg/fuzz" "$ROOT/fuzz"; do
    export CARGO_TARGET_DIR="$FUZZ_DIR/target"
    cd "$FUZZ_DIR"
    mapfile -t TARGETS < <(cargo fuzz list)
    echo "$(basename "$(dirname "$FUZZ_DIR")")/$(basename "$FUZZ_DIR"): ${TARGETS[*]} (${SECONDS_PER_TARGET}s each)"
    cargo fuzz build --release

    for target in "${TARGETS[@]}"; do
        log="$(mktemp)"
        mkdir -p "corpus/$target"
        set +e
        cargo fuzz run --release "$target" "corpus/$target" -- \
            -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 >"$log" 2>&1
        rc=$?
        set -e
        execs="$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)"
        corpus="$(find "corpus/$target" -type f | wc -l)"
        crashes="$(find "artifacts/$target" -type f 2>/dev/null | wc -l)"
        if [[ $rc -ne 0 ]]; then
            failed=1
            echo "---- $target FAILED (exit $rc); last lines:"
            tail -n 30 "$log"
        fi
        summary+=("$(printf '%-24s execs=%-10s corpus=%-6s artifacts=%-3s exit=%s' "$target" "${execs:-?}" "$corpus" "$crashes" "$rc")")
        rm -f "$log"
    done
done

echo
echo "== fuzz summary =="
printf '%s\n' "${summary[@]}"
if [[ $failed -ne 0 ]]; then
    echo "findings: see secagg/fuzz/artifacts/ and fuzz/artifacts/"
    exit 1
fi
echo "findings: none"
