#!/usr/bin/env bash
# Where a bulk statement's time goes (docs/performance.md): two throwaway clusters with the
# library and auto_explain preloaded, three tables (unlinked, linked async, linked sync), and
# a 100,000-row INSERT, UPDATE and DELETE on each under EXPLAIN (ANALYZE, BUFFERS, WAL).
# auto_explain logs every nested statement that takes 50 ms or more (AE_MIN) on both nodes:
# the capture function's statements on the writer, the worker's delivery, the peer's apply.
# The server logs are left in /tmp/profile-a.log and /tmp/profile-b.log. Install the build to
# measure first (cargo pgrx install --release). N rows (default 100000).
set -euo pipefail
BIN=/usr/lib/postgresql/15/bin
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
BASE=$(mktemp -d /tmp/synclink-profile.XXXXXX); chmod 755 "$BASE"
[ "$(id -u)" -eq 0 ] && chown postgres "$BASE"
PA=${PORT_A:-56433}; PB=${PORT_B:-56434}; PW="profile-$RANDOM$RANDOM"
cleanup() {
  for n in a b; do as_pg "$BIN/pg_ctl" -D "$BASE/$n" -m fast stop >/dev/null 2>&1 || true; done
  rm -rf "$BASE"
}
trap cleanup EXIT
start() {
  as_pg "$BIN/initdb" -D "$BASE/$1" -U postgres -A trust --no-sync >/dev/null
  cat >>"$BASE/$1/postgresql.conf" <<CONF
port = $2
listen_addresses = '127.0.0.1'
unix_socket_directories = '$BASE'
shared_preload_libraries = 'synclink,auto_explain'
auto_explain.log_min_duration = '${AE_MIN:-50ms}'
auto_explain.log_analyze = on
auto_explain.log_buffers = on
auto_explain.log_wal = on
auto_explain.log_nested_statements = on
auto_explain.log_timing = on
log_line_prefix = '%m [%p] '
max_wal_size = '4GB'
CONF
  sed -i 's/^host\(.*\)trust$/host\1scram-sha-256/' "$BASE/$1/pg_hba.conf"
  as_pg "$BIN/pg_ctl" -D "$BASE/$1" -l "$BASE/$1.log" -w start >/dev/null
}
q() { local p=$1; shift; as_pg "$BIN/psql" -X -q -h "$BASE" -p "$p" -U postgres -d shop -v ON_ERROR_STOP=1 "$@"; }
start a $PA; start b $PB
for p in $PA $PB; do
  as_pg "$BIN/psql" -X -q -h "$BASE" -p $p -U postgres -d postgres -c "CREATE ROLE sync LOGIN SUPERUSER PASSWORD '$PW'" -c "CREATE DATABASE shop"
  q $p -c "CREATE EXTENSION synclink" -c "$(for t in t_plain t_async t_sync; do echo "CREATE TABLE $t (id bigserial PRIMARY KEY, name varchar(255), price integer, created_at timestamp NOT NULL, updated_at timestamp NOT NULL);"; done)"
done
q $PA -c "SELECT sync_add_peer('b', 'host=127.0.0.1 port=$PB dbname=shop user=sync password=$PW')"
q $PB -c "SELECT sync_add_peer('a', 'host=127.0.0.1 port=$PA dbname=shop user=sync password=$PW')"
q $PA -c "SELECT sync_link_table('t_async', mode => 'async')" -c "SELECT sync_link_table('t_sync')"
N=${N:-100000}
# Each statement on each table, from a checkpoint, with its plan, time, trigger time and WAL.
measure() { # label, statement with TABLE for the table
  for t in t_plain t_async t_sync; do
    q $PA -c "CHECKPOINT" >/dev/null
    echo "=== $t $1 $N"
    q $PA -c "EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF) ${2//TABLE/$t}" \
      | grep -E "Execution|Planning|Trigger|WAL|(Insert|Update|Delete) on"
  done
  sleep 5  # the worker delivers the async table's changes before the next statement
}
measure INSERT "INSERT INTO TABLE (name, price, created_at, updated_at) SELECT 'item ' || g, g, now(), now() FROM generate_series(1, $N) g"
measure UPDATE "UPDATE TABLE SET price = price + 1"
measure DELETE "DELETE FROM TABLE"
sleep 8
q $PB -c "SELECT (SELECT count(*) FROM t_async) AS async_rows_on_b, (SELECT count(*) FROM t_sync) AS sync_rows_on_b"
cp "$BASE/a.log" /tmp/profile-a.log; cp "$BASE/b.log" /tmp/profile-b.log
echo "server logs with every nested statement's plan: /tmp/profile-a.log (writer), /tmp/profile-b.log (peer)"
