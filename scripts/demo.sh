#!/usr/bin/env bash
# Demo: two throwaway PostgreSQL clusters on loopback, `products` linked, changes flowing both
# ways. Everything is removed again on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config >/dev/null
BIN=/usr/lib/postgresql/15/bin

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

BASE=$(mktemp -d /tmp/synclink-demo.XXXXXX)
chmod 755 "$BASE"
[ "$(id -u)" -eq 0 ] && chown postgres "$BASE"
PORT_A=${PORT_A:-55433}
PORT_B=${PORT_B:-55434}
PASSWORD="demo-$RANDOM$RANDOM"

cleanup() {
  for n in a b; do as_pg "$BIN/pg_ctl" -D "$BASE/$n" -m fast stop >/dev/null 2>&1 || true; done
  rm -rf "$BASE"
}
trap cleanup EXIT

start() { # name port
  as_pg "$BIN/initdb" -D "$BASE/$1" -U postgres -A trust --no-sync >/dev/null
  cat >>"$BASE/$1/postgresql.conf" <<CONF
port = $2
listen_addresses = '127.0.0.1'
unix_socket_directories = '$BASE'
CONF
  # loopback TCP (what postgres_fdw uses) asks for a password
  sed -i 's/^host\(.*\)trust$/host\1scram-sha-256/' "$BASE/$1/pg_hba.conf"
  as_pg "$BIN/pg_ctl" -D "$BASE/$1" -l "$BASE/$1.log" -w start >/dev/null
}
psql_on() { # port, sql...
  local port=$1; shift
  as_pg "$BIN/psql" -X -q -h "$BASE" -p "$port" -U postgres -d shop -v ON_ERROR_STOP=1 "$@"
}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting two clusters: A on $PORT_A, B on $PORT_B"
start a "$PORT_A"; start b "$PORT_B"
for p in "$PORT_A" "$PORT_B"; do
  as_pg "$BIN/psql" -X -q -h "$BASE" -p "$p" -U postgres -d postgres \
    -c "CREATE ROLE sync LOGIN SUPERUSER PASSWORD '$PASSWORD'" -c "CREATE DATABASE shop"
  psql_on "$p" <<SQL
CREATE EXTENSION synclink;
CREATE TABLE products (
  id bigserial PRIMARY KEY,
  name varchar(255) NOT NULL,
  price integer,
  created_at timestamp NOT NULL DEFAULT now(),
  updated_at timestamp NOT NULL DEFAULT now()
);
SQL
done

say "on A: register B, on B: register A, then link products from A only"
psql_on "$PORT_A" -c "SELECT sync_add_peer('b', 'host=127.0.0.1 port=$PORT_B dbname=shop user=sync password=$PASSWORD') AS peer_node"
psql_on "$PORT_B" -c "SELECT sync_add_peer('a', 'host=127.0.0.1 port=$PORT_A dbname=shop user=sync password=$PASSWORD') AS peer_node"
psql_on "$PORT_A" -c "SELECT sync_link_table('products')"
psql_on "$PORT_A" -c "SELECT \"table\", peer, peer_node, mode, key, conninfo FROM sync_status"

say "INSERT on A (ids 1..3 and a bulk of 1000), UPDATE and DELETE on B"
psql_on "$PORT_A" -c "INSERT INTO products (id, name, price) VALUES (1, 'kettle', 25), (2, 'teapot', 30), (3, 'mug', 8)"
psql_on "$PORT_A" -c "INSERT INTO products (id, name, price) SELECT g, 'item ' || g, g % 100 FROM generate_series(100, 1099) g"
psql_on "$PORT_B" -c "UPDATE products SET price = price * 2 WHERE id <= 3" -c "DELETE FROM products WHERE id >= 1000"

say "both sides now hold the same rows"
for p in "$PORT_A" "$PORT_B"; do
  psql_on "$p" -At -c "SELECT format('port %s: %s rows, checksum %s, kettle costs %s', $p, count(*), md5(string_agg(format('%s|%s|%s', id, name, price), ',' ORDER BY id)), max(price) FILTER (WHERE id = 1)) FROM products"
done

say "B goes down: A keeps working, the change waits in A's outbox"
as_pg "$BIN/pg_ctl" -D "$BASE/b" -m immediate stop >/dev/null
psql_on "$PORT_A" -c "INSERT INTO products (id, name, price) VALUES (4, 'saucer', 4)"
psql_on "$PORT_A" -c "SELECT peer, peer_reachable, queued, left(last_error, 70) AS last_error FROM sync_status"

say "B is back: sync_flush() delivers the queue (a preloaded background worker would do it unasked)"
as_pg "$BIN/pg_ctl" -D "$BASE/b" -l "$BASE/b.log" -w start >/dev/null
psql_on "$PORT_A" -c "SELECT sync_flush('b') AS delivered"
psql_on "$PORT_B" -At -c "SELECT 'B has the saucer: ' || EXISTS (SELECT 1 FROM products WHERE id = 4)"

say "unlink: tables and rows stay, the triggers go"
psql_on "$PORT_A" -c "SELECT sync_unlink_table('products')"
psql_on "$PORT_A" -c "INSERT INTO products (id, name) VALUES (5000, 'not mirrored')"
psql_on "$PORT_B" -At -c "SELECT 'B has id 5000: ' || EXISTS (SELECT 1 FROM products WHERE id = 5000)"
say "done; stopping the clusters"
