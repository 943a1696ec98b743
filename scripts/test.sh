#!/usr/bin/env bash
# The whole test suite: unit, property and end-to-end tests (real coordinator, worker and CLI
# processes over gRPC on loopback). Installs libtorch into .venv on first use. CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# The end-to-end tests start the real binaries, so build them first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
