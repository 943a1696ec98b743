#!/usr/bin/env bash
# The whole test suite: unit, property and end-to-end tests (real coordinator, worker and CLI
# processes over gRPC on loopback). Installs libtorch into .venv on first use. CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# The end-to-end tests start the real binaries, so build them first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
# The tree benches' smoke runs (quality against XGBoost on the pooled test sets; speed through the
# real coordinator and workers): they report and fail only on errors, never on a timing. The
# measured numbers are in benches/RESULTS.md.
bench_out=$(mktemp -d)
trap 'rm -rf "$bench_out"' EXIT
cargo run --quiet -p confide-benches --bin gbdt_quality -- "$bench_out/quality" --quick
cargo run --quiet -p confide-benches --bin gbdt_speed -- "$bench_out/speed" --quick
