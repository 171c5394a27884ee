#!/usr/bin/env bash
# Benchmarks on the release build. Prints side-by-side timings and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo pgrx install --release --pg-config "${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" >/dev/null
cargo run --release -q -p synclink-e2e --bin bench
