#!/usr/bin/env bash
# Installs everything synclink needs to build, test and demo on a Debian machine with Rust.
# Idempotent: each step checks before it acts, so running it again costs seconds.
set -euo pipefail

PG_MAJOR=15
PGRX_VERSION=0.18.0
PG_CONFIG=/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config

need_apt=()
for pkg in postgresql-${PG_MAJOR} postgresql-server-dev-${PG_MAJOR} postgresql-contrib sudo \
           libclang-dev clang pkg-config libssl-dev libreadline-dev zlib1g-dev bison flex make; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "${PGRX_VERSION}"; then
  echo "setup: installing cargo-pgrx ${PGRX_VERSION} (a few minutes)"
  cargo install cargo-pgrx --version "=${PGRX_VERSION}" --locked
fi

if ! grep -qs "pg${PG_MAJOR}" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  echo "setup: registering PostgreSQL ${PG_MAJOR} with pgrx"
  cargo pgrx init --pg${PG_MAJOR} "${PG_CONFIG}"
fi
echo "setup: ok"
