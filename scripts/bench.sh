#!/usr/bin/env bash
# Benchmarks on the release build. Prints side-by-side timings and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# The alternatives the peers part sets up next to synclink: pglogical, and Bucardo with the
# PL/Perl its control database runs on. Only the benchmark needs them.
PG_MAJOR=15
need_apt=()
for pkg in postgresql-${PG_MAJOR}-pglogical bucardo postgresql-plperl-${PG_MAJOR}; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bench: installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
cargo pgrx install --release --pg-config "${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" >/dev/null
cargo run --release -q -p synclink-e2e --bin bench
