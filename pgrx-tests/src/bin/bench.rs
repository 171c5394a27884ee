//! synclink benchmarks, measured side by side in one run on two local clusters.
//!
//!   bulk:   100,000-row INSERT … SELECT into the same table, then an UPDATE and a DELETE of
//!           every row, unlinked, linked with synclink (sync and async mode), and with
//!           hand-written row-level triggers that send each row through postgres_fdw
//!   single: single-row INSERT transactions per second from 4 pgbench clients (async mode
//!           also with the peer stopped, to show the writers' own share)
//!   lag:    async mode, commit on one node to visible on the other, at steady rates
//!   drain:  how fast the background worker delivers a backlog of queued changes
//!   sequences: insert cost per row with an own, a shared and an interleaved sequence
//!   diff:   sync_diff and sync_reconcile of a 1,000,000-row table with 100 differences
//!   million: one UPDATE of every row of a 1,000,000-row table present on both nodes, unlinked
//!           and linked (sync and async mode), with the peak memory of the backends doing it
//!   peers:  the alternatives, pglogical 2 and Bucardo 5, two-way on clusters of their own:
//!           bulk INSERT/UPDATE/DELETE, single-row tps, a stopped peer's backlog (bench/peers.rs)
//!   clone:  a 1,000,000-row table copied into an empty database of the other cluster, by
//!           pg_dump piped into psql and by sync_clone
//!
//! Variants run in rotating order within each round and every ratio is taken against the
//! unlinked figure of the same round (for single, of the run right next to it), so machine
//! noise hits all of them alike.
//! Run with `make bench` (installs the release build first). BENCH_ONLY, BENCH_ROUNDS,
//! BENCH_SECONDS, BENCH_SINGLE_PAIRS, BENCH_ROWS, BENCH_BACKLOG, BENCH_LAG_RATES,
//! BENCH_LAG_SAMPLES, BENCH_SEQ_ROWS, BENCH_DIFF_ROWS, BENCH_MILLION_ROWS, BENCH_CLONE_ROWS
//! and BENCH_PEERS_BACKLOG tune it; BENCH_CONF adds settings to both servers.

use std::process::Command;
use std::time::{Duration, Instant};
use synclink_e2e::{count, queued, same, wait_until, Nodes};

#[path = "bench/hub.rs"]
mod hub;
#[path = "bench/peers.rs"]
mod peers;

const TABLE: &str = "(id bigserial PRIMARY KEY, name varchar(255), price integer,
    created_at timestamp NOT NULL, updated_at timestamp NOT NULL)";

/// Hand-written row-level triggers over postgres_fdw: one remote INSERT, UPDATE or DELETE per
/// row, the UPDATE and DELETE finding the peer's row by id.
const ROW_TRIGGER: &str = "
CREATE FOREIGN TABLE legacy_bench_rowtrig (id bigint, name varchar(255), price integer,
    created_at timestamp NOT NULL, updated_at timestamp NOT NULL)
    SERVER synclink_b OPTIONS (table_name 'bench_rowtrig');
CREATE FUNCTION insert_legacy_products() RETURNS trigger AS $$
BEGIN
  INSERT INTO legacy_bench_rowtrig(id, name, price, created_at, updated_at)
  VALUES (NEW.id, NEW.name, NEW.price, NEW.created_at, NEW.updated_at);
  RETURN NEW;
EXCEPTION
  WHEN undefined_table THEN
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER after_products_insert AFTER INSERT ON bench_rowtrig
    FOR EACH ROW EXECUTE PROCEDURE insert_legacy_products();
CREATE FUNCTION update_legacy_products() RETURNS trigger AS $$
BEGIN
  UPDATE legacy_bench_rowtrig
     SET id = NEW.id, name = NEW.name, price = NEW.price,
         created_at = NEW.created_at, updated_at = NEW.updated_at
   WHERE id = OLD.id;
  RETURN NEW;
EXCEPTION
  WHEN undefined_table THEN
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER after_products_update AFTER UPDATE ON bench_rowtrig
    FOR EACH ROW EXECUTE PROCEDURE update_legacy_products();
CREATE FUNCTION delete_legacy_products() RETURNS trigger AS $$
BEGIN
  DELETE FROM legacy_bench_rowtrig WHERE id = OLD.id;
  RETURN OLD;
EXCEPTION
  WHEN undefined_table THEN
    RETURN OLD;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER after_products_delete AFTER DELETE ON bench_rowtrig
    FOR EACH ROW EXECUTE PROCEDURE delete_legacy_products();";

/// The bulk part's statements, in the order each round runs them on a variant's table: the
/// UPDATE and the DELETE work on the rows the statement before left.
#[derive(Clone, Copy)]
enum Bulk {
    Insert,
    Update,
    Delete,
}

impl Bulk {
    const ALL: [Bulk; 3] = [Bulk::Insert, Bulk::Update, Bulk::Delete];

    fn label(self) -> &'static str {
        match self {
            Bulk::Insert => "INSERT … SELECT",
            Bulk::Update => "UPDATE of every row",
            Bulk::Delete => "DELETE of every row",
        }
    }

    fn sql(self, table: &str, rows: i64) -> String {
        match self {
            Bulk::Insert => format!(
                "INSERT INTO {table} (id, name, price, created_at, updated_at) \
                 SELECT g, 'item ' || g, g % 1000, now(), now() FROM generate_series(1, {rows}) g"
            ),
            Bulk::Update => format!("UPDATE {table} SET price = price + 1, updated_at = now()"),
            Bulk::Delete => format!("DELETE FROM {table}"),
        }
    }

    /// The rows the table holds after the statement.
    fn leaves(self, rows: i64) -> i64 {
        match self {
            Bulk::Insert | Bulk::Update => rows,
            Bulk::Delete => 0,
        }
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn pgbench_tps(pair: &Nodes, table: &str, seconds: u64) -> f64 {
    pgbench_tps_on(pair.a.cluster(), &pair.a.db, table, seconds)
}

/// Single-row INSERT transactions per second into `table` of `db` on `a`, 4 clients.
fn pgbench_tps_on(a: &synclink_e2e::Cluster, db: &str, table: &str, seconds: u64) -> f64 {
    let script = std::env::temp_dir().join(format!("synclink-bench-{table}.sql"));
    std::fs::write(&script, format!("INSERT INTO {table} (name, price, created_at, updated_at) VALUES ('item', 1, now(), now());\n")).unwrap();
    let out = Command::new(a.bindir().join("pgbench"))
        .args(["-n", "-c", "4", "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .args(["-h"])
        .arg(a.socket_dir())
        .args(["-p", &a.port.to_string(), "-U", "postgres", db])
        .output()
        .expect("pgbench runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{text}"))
}

/// Empty a variant's table on both nodes. A linked table is truncated on A only and the
/// TRUNCATE travels; truncating both sides of an async link would race: B's queued TRUNCATE
/// could reach A after A's next rows. Then a checkpoint on both: every run starts with no
/// dirty pages left over from the one before, and none of them meets the timed checkpoint
/// (every 5 minutes) that would otherwise land in whichever run it happens to fall.
/// One run of the lag part: `samples` single-row commits on A at `rate` a second, and the
/// milliseconds from each commit until B shows it, sorted.
fn lag_run(
    pair: &Nodes,
    a: &mut postgres::Client,
    b: &mut postgres::Client,
    rate: u64,
    samples: i64,
) -> Vec<f64> {
    reset(a, b, "bench_async", true);
    let committed_at: std::sync::Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        std::sync::Arc::new(std::sync::Mutex::new(vec![None; samples as usize + 1]));
    let writer = {
        let committed_at = committed_at.clone();
        let conninfo = pair.a.socket_conninfo();
        std::thread::spawn(move || {
            let mut w = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
            let start = Instant::now();
            for i in 1..=samples {
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                w.execute(
                    "INSERT INTO bench_async VALUES ($1, 'lag', 1, now(), now())",
                    &[&i],
                )
                .unwrap();
                committed_at.lock().unwrap()[i as usize] = Some(Instant::now());
            }
        })
    };
    let mut seen = 0i64;
    let mut lags = Vec::new();
    while seen < samples {
        let max: Option<i64> = b
            .query_one("SELECT max(id) FROM bench_async", &[])
            .unwrap()
            .get(0);
        let now = Instant::now();
        let max = max.unwrap_or(0);
        if max > seen {
            let c = committed_at.lock().unwrap();
            for id in (seen + 1)..=max {
                if let Some(t) = c[id as usize] {
                    lags.push(now.saturating_duration_since(t).as_secs_f64() * 1000.0);
                }
            }
            seen = max;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    writer.join().unwrap();
    lags.sort_by(|x, y| x.partial_cmp(y).unwrap());
    lags
}

fn reset(a: &mut postgres::Client, b: &mut postgres::Client, table: &str, linked: bool) {
    a.batch_execute(&format!("TRUNCATE {table}")).unwrap();
    if !linked {
        b.batch_execute(&format!("TRUNCATE {table}")).unwrap();
    }
    let sql = format!("SELECT count(*) FROM {table}");
    wait_until(Duration::from_secs(120), || {
        count(a, "SELECT count(*) FROM synclink.outbox") == 0
            && count(b, "SELECT count(*) FROM synclink.outbox") == 0
            && count(b, &sql) == 0
    });
    for c in [a, b] {
        c.batch_execute("CHECKPOINT").unwrap();
    }
}

/// Before a timed statement on rows the one before left: VACUUM ANALYZE of the table and of
/// its links' version tables, and a checkpoint, on both nodes. Autovacuum, woken by the
/// previous statement's new or dead rows, would otherwise land in whichever run it happens to
/// fall, and the planner sees the tables' sizes as it would once the rows had been there a
/// while.
fn settle(a: &mut postgres::Client, b: &mut postgres::Client, table: &str) {
    for c in [a, b] {
        let mut tables = vec![table.to_string()];
        for row in c
            .query(
                "SELECT version_table FROM synclink.link WHERE relid = $1::text::regclass",
                &[&table],
            )
            .unwrap()
        {
            tables.push(row.get(0));
        }
        c.batch_execute(&format!("VACUUM ANALYZE {}", tables.join(", ")))
            .unwrap();
        c.batch_execute("CHECKPOINT").unwrap();
    }
}

/// After a timed statement: the writer holds `rows` rows of `table` and, where a peer receives
/// them, the peer holds the very same rows; so no figure comes from a path that lost changes.
fn check(a: &mut postgres::Client, b: &mut postgres::Client, table: &str, peer: bool, rows: i64) {
    let on_a = if peer {
        same(a, b, table)
    } else {
        count(a, &format!("SELECT count(*) FROM {table}"))
    };
    assert_eq!(on_a, rows, "{table} holds {on_a} rows, expected {rows}");
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let rounds = env_or("BENCH_ROUNDS", 3) as usize;
    let seconds = env_or("BENCH_SECONDS", 5);
    let rows = env_or("BENCH_ROWS", 100_000) as i64;
    let backlog = env_or("BENCH_BACKLOG", 100_000) as i64;
    // BENCH_ONLY=single,lag runs those parts only (bulk, single, lag, drain, sequences, diff,
    // million, peers, hub, clone)
    let only = std::env::var("BENCH_ONLY").ok();
    let wants = |part: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|p| p == part))
    };
    // BENCH_CONF="synclink.worker_max_linger = 0; …" adds settings to both servers, to try one.
    let extra = std::env::var("BENCH_CONF").unwrap_or_default();
    let mut conf = vec![
        "fsync = on",
        "shared_buffers = 256MB",
        "max_wal_size = 2GB",
        "shared_preload_libraries = 'synclink'",
        // a delivery worker per database: the hub part makes ten on B's server
        "max_worker_processes = 24",
    ];
    conf.extend(extra.split(';').map(str::trim).filter(|l| !l.is_empty()));
    let pair = Nodes::two_clusters(&conf);
    let mut a = pair.a.connect();
    let mut b = pair.b.connect();
    let variants = [
        "bench_unlinked",
        "bench_linked",
        "bench_async",
        "bench_rowtrig",
    ];
    let names = [
        "unlinked",
        "synclink, sync mode",
        "synclink, async mode",
        "row-level triggers",
    ];
    let linked = [false, true, true, false];
    let n = variants.len();
    for t in variants {
        let ddl = format!("CREATE TABLE {t} {TABLE}");
        a.batch_execute(&ddl).unwrap();
        b.batch_execute(&ddl).unwrap();
    }
    a.execute("SELECT sync_add_peer('b', $1)", &[&pair.b.conninfo()])
        .unwrap();
    b.execute("SELECT sync_add_peer('a', $1)", &[&pair.a.conninfo()])
        .unwrap();
    a.execute("SELECT sync_link_table('bench_linked')", &[])
        .unwrap();
    a.execute(
        "SELECT sync_link_table('bench_async', mode => 'async')",
        &[],
    )
    .unwrap();
    a.batch_execute(ROW_TRIGGER).unwrap();

    println!(
        "synclink benchmark: PostgreSQL 15, two clusters on loopback, fsync on, library preloaded"
    );
    println!();
    if wants("bulk") {
        let (sync, asynchronous, rowtrig) = (1, 2, 3);
        let ops = Bulk::ALL;
        // [statement][variant], one figure per round; on_peer: async mode's time from the start
        // of the statement until the peer has applied all of it
        let mut times = vec![vec![Vec::new(); n]; ops.len()];
        let mut ratios = vec![vec![Vec::new(); n]; ops.len()];
        let mut on_peer = vec![Vec::new(); ops.len()];
        let mut on_peer_ratios = vec![Vec::new(); ops.len()];
        for round in 0..rounds {
            let mut this = vec![vec![0.0f64; n]; ops.len()];
            let mut peer_has = vec![0.0f64; ops.len()];
            for k in 0..n {
                let v = (round + k) % n;
                let t = variants[v];
                reset(&mut a, &mut b, t, linked[v]);
                a.batch_execute("CHECKPOINT").unwrap();
                for (o, op) in ops.iter().enumerate() {
                    if o > 0 {
                        settle(&mut a, &mut b, t);
                    }
                    let started = Instant::now();
                    a.execute(&op.sql(t, rows), &[]).unwrap();
                    this[o][v] = ms_since(started);
                    // Sync mode must have sent everything within the statement: a change
                    // queued instead would make its figure an async one.
                    if v == sync {
                        assert_eq!(queued(&mut a), 0, "sync mode queued changes");
                    }
                    if v == asynchronous {
                        wait_until(Duration::from_secs(900), || queued(&mut a) == 0);
                        peer_has[o] = ms_since(started);
                    }
                    check(&mut a, &mut b, t, v > 0, op.leaves(rows));
                }
            }
            for o in 0..ops.len() {
                for v in 0..n {
                    times[o][v].push(this[o][v]);
                    ratios[o][v].push(this[o][v] / this[o][0]);
                }
                on_peer[o].push(peer_has[o]);
                on_peer_ratios[o].push(peer_has[o] / this[o][0]);
                let line: Vec<String> = (0..n)
                    .map(|v| {
                        let peer = if v == asynchronous {
                            format!(" (on the peer {:.0} ms)", peer_has[o])
                        } else {
                            String::new()
                        };
                        format!("{} {:.0} ms{peer}", names[v], this[o][v])
                    })
                    .collect();
                println!(
                    "  round {}, {}: {}",
                    round + 1,
                    ops[o].label(),
                    line.join(", ")
                );
            }
        }
        println!();
        println!(
            "bulk {rows}-row statements on one table, the writer's time to commit (median of {rounds}; \
             after every statement the peer's rows checked against the writer's)"
        );
        // columns: unlinked, then per variant its time and ratio; async mode's time until the
        // peer has the statement's changes goes next to its writer's time
        let groups: Vec<&str> = (1..n)
            .flat_map(|v| {
                if v == asynchronous {
                    vec![names[v], "async, on the peer"]
                } else {
                    vec![names[v]]
                }
            })
            .collect();
        let header: String = groups.iter().map(|g| format!(" {g:>21}")).collect();
        println!("  {:<19} {:>9}{header}", "statement", names[0]);
        let sub: String = groups
            .iter()
            .map(|_| format!(" {:>9} {:>11}", "ms", "x unlinked"))
            .collect();
        println!("  {:<19} {:>9}{sub}", "", "ms");
        for (o, op) in ops.iter().enumerate() {
            let cell = |ms: &[f64], x: &[f64]| {
                format!(
                    " {:>9.0} {:>10.2}x",
                    median(ms.to_vec()),
                    median(x.to_vec())
                )
            };
            let cells: String = (1..n)
                .map(|v| {
                    let mut c = cell(&times[o][v], &ratios[o][v]);
                    if v == asynchronous {
                        c += &cell(&on_peer[o], &on_peer_ratios[o]);
                    }
                    c
                })
                .collect();
            println!(
                "  {:<19} {:>9.0}{cells}",
                op.label(),
                median(times[o][0].clone())
            );
        }
        let faster: Vec<String> = ops
            .iter()
            .enumerate()
            .map(|(o, op)| {
                format!(
                    "{:.1}x for {}",
                    median(ratios[o][rowtrig].clone()) / median(ratios[o][sync].clone()),
                    op.label()
                )
            })
            .collect();
        println!(
            "  synclink sync mode is faster than the row-level triggers: {}",
            faster.join(", ")
        );
    }

    if wants("single") {
        let pairs = env_or("BENCH_SINGLE_PAIRS", 8) as usize;
        println!();
        println!(
            "single-row INSERT, 4 clients: each variant {seconds} s right next to {seconds} s unlinked, \
             {pairs} such pairs in alternating order"
        );
        // The machine's own throughput drifts by ±10% from one minute to the next, as much as
        // the differences measured; so each variant's ratio is taken against an unlinked run
        // made right before or after it (the order alternates), never against one from
        // minutes away.
        //
        // Async mode also runs with the peer stopped: the writers' own cost, without the
        // delivery worker and the peer's apply on the same two cores and disk. With the peer
        // running, the changes still queued when the run ends show that delivery kept up.
        let async_stopped = n;
        let mut tps: Vec<Vec<f64>> = vec![Vec::new(); n + 1];
        let mut tps_ratios: Vec<Vec<f64>> = vec![Vec::new(); n + 1];
        let mut left: Vec<Vec<f64>> = vec![Vec::new(); n + 1];
        let mut run = |v: usize, a: &mut postgres::Client, b: &mut postgres::Client| {
            let table = if v >= n { "bench_async" } else { variants[v] };
            reset(a, b, table, v >= n || linked[v]);
            if v == async_stopped {
                pair.b.stop_immediate();
                let t = pgbench_tps(&pair, table, seconds);
                pair.b.start_again();
                *b = pair.b.connect();
                return t;
            }
            let t = pgbench_tps(&pair, table, seconds);
            if table == "bench_async" {
                left[v].push(count(a, "SELECT count(*) FROM synclink.outbox") as f64);
            }
            t
        };
        for round in 0..pairs {
            for v in 1..=n {
                let (unlinked, this) = if round % 2 == 0 {
                    let u = run(0, &mut a, &mut b);
                    (u, run(v, &mut a, &mut b))
                } else {
                    let t = run(v, &mut a, &mut b);
                    (run(0, &mut a, &mut b), t)
                };
                tps[0].push(unlinked);
                tps[v].push(this);
                tps_ratios[v].push(this / unlinked);
            }
        }
        println!(
            "  {:<36} {:>8} {:>11} {:>14} {:>12}",
            "variant", "tps", "x unlinked", "pairs' range", "queued at end"
        );
        println!(
            "  {:<36} {:>8.0} {:>10.2}x",
            names[0],
            median(tps[0].clone()),
            1.0
        );
        for v in 1..=n {
            let name = if v == async_stopped {
                "async mode, peer stopped"
            } else {
                names[v]
            };
            let r = &tps_ratios[v];
            let (lo, hi) = r
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            let queued = if left[v].is_empty() {
                String::new()
            } else {
                format!("{:.0}", median(left[v].clone()))
            };
            println!(
                "  {:<36} {:>8.0} {:>10.2}x {:>7.2}-{:.2}x {:>12}",
                name,
                median(tps[v].clone()),
                median(r.clone()),
                lo,
                hi,
                queued
            );
        }
        for t in ["bench_linked", "bench_async"] {
            let sql = format!("SELECT count(*) FROM {t}");
            let on_a = count(&mut a, &sql);
            wait_until(Duration::from_secs(120), || count(&mut b, &sql) == on_a);
        }
    }

    if wants("lag") {
        // async delivery lag: one writer commits single rows at a steady rate; a reader on the
        // peer notes when each id appears. A few milliseconds' stall of this 2-core machine
        // moves a run's p99 by as much as delivery itself takes, so each rate is run `rounds`
        // times and the medians shown, with the range of the p99s.
        let rates = std::env::var("BENCH_LAG_RATES").unwrap_or_else(|_| "200,1000".into());
        let samples = env_or("BENCH_LAG_SAMPLES", 2000) as i64;
        // Untimed: the first seconds of a part that comes first after the servers start
        // measured a p99 six times the later runs'.
        lag_run(&pair, &mut a, &mut b, 200, 1000);
        for rate in rates
            .split(',')
            .map(|r| r.trim().parse::<u64>().expect("BENCH_LAG_RATES: numbers"))
        {
            let (mut p50s, mut p99s, mut maxes) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                let lags = lag_run(&pair, &mut a, &mut b, rate, samples);
                let pct = |q: f64| lags[((lags.len() as f64 - 1.0) * q).round() as usize];
                p50s.push(pct(0.5));
                p99s.push(pct(0.99));
                maxes.push(pct(1.0));
            }
            let (lo, hi) = p99s
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            println!();
            println!(
                "async mode, commit on A to visible on B, {rate} single-row commits/s ({rounds} runs of {samples})"
            );
            println!(
                "  p50 {:.1} ms, p99 {:.1} ms (runs: {lo:.1}-{hi:.1} ms), max {:.1} ms",
                median(p50s),
                median(p99s.clone()),
                median(maxes)
            );
        }
    }

    if wants("drain") {
        // a backlog: the peer is stopped, single-row changes queue, the peer comes back
        reset(&mut a, &mut b, "bench_linked", true);
        pair.b.stop_immediate();
        a.batch_execute(&format!(
            "DO $$ BEGIN FOR i IN 1..{backlog} LOOP
                 INSERT INTO bench_linked (name, price, created_at, updated_at) VALUES ('queued', 1, now(), now());
             END LOOP; END $$"
        ))
        .unwrap();
        let queued = count(&mut a, "SELECT count(*) FROM synclink.outbox");
        pair.b.start_again();
        // The worker retries a peer whose server turns connections away every 250 ms (others
        // every 1 to 5 s): the time until it finds the peer back is reported apart from the
        // drain itself.
        let restarted = Instant::now();
        let remaining = |a: &mut postgres::Client| count(a, "SELECT count(*) FROM synclink.outbox");
        wait_until(Duration::from_secs(60), || remaining(&mut a) < queued);
        let found = restarted.elapsed().as_secs_f64();
        let started = Instant::now();
        let left = remaining(&mut a);
        wait_until(Duration::from_secs(900), || remaining(&mut a) == 0);
        let took = started.elapsed().as_secs_f64();
        let total = restarted.elapsed().as_secs_f64();
        b = pair.b.connect();
        assert_eq!(count(&mut b, "SELECT count(*) FROM bench_linked"), backlog);
        println!();
        println!(
            "backlog of {queued} queued changes (one row each), drained by the background worker"
        );
        println!(
            "  found the peer back {found:.1} s after its restart; then {left} changes in {took:.1} s: {:.0} changes/s",
            left as f64 / took
        );
        println!("  from the peer's restart to the last change applied: {total:.1} s");
    }

    if wants("sequences") {
        sequences(&mut a, &mut b, rounds);
    }
    if wants("diff") {
        diff(&mut a, &mut b);
    }
    if wants("million") {
        million(&pair, &mut a, &mut b);
    }
    if wants("peers") {
        peers::run(rounds, seconds, rows);
    }
    if wants("hub") {
        hub::run(&pair, rounds, seconds, rows);
    }
    if wants("clone") {
        clone(&pair, &mut a);
    }
}

/// A large table copied into an empty database of the other cluster, the way a DBA would
/// without synclink (pg_dump -t piped into psql: COPY, then the key) and with sync_clone (the
/// table, its rows in batches, then the key), one after the other on the same machine.
fn clone(pair: &Nodes, a: &mut postgres::Client) {
    let rows = env_or("BENCH_CLONE_ROWS", 1_000_000) as i64;
    a.batch_execute(&format!(
        "CREATE TABLE cloned {TABLE};
         INSERT INTO cloned (name, price, created_at, updated_at)
              SELECT 'product ' || g, g % 1000, now(), now() FROM generate_series(1, {rows}) g;"
    ))
    .unwrap();
    a.batch_execute("VACUUM ANALYZE cloned").unwrap();
    let (from, to) = (pair.a.cluster(), pair.b.cluster());
    to.create_db("clone_dump");
    let mut target = to.create_db("clone_sync");
    let started = Instant::now();
    let mut dump = Command::new(from.bindir().join("pg_dump"))
        .args(["-t", "cloned", "-h"])
        .arg(from.socket_dir())
        .args(["-p", &from.port.to_string(), "-U", "postgres", &pair.a.db])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("pg_dump runs");
    let restored = Command::new(to.bindir().join("psql"))
        .args(["-q", "-X", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(to.socket_dir())
        .args(["-p", &to.port.to_string(), "-U", "postgres", "clone_dump"])
        .stdin(dump.stdout.take().expect("pg_dump's output"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("psql runs");
    assert!(dump.wait().unwrap().success() && restored.success());
    let dumped = started.elapsed().as_secs_f64();

    a.execute(
        "SELECT sync_add_peer('clone_sync', $1)",
        &[&to.conninfo("clone_sync")],
    )
    .unwrap();
    target
        .execute("SELECT sync_add_peer('a', $1)", &[&pair.a.conninfo()])
        .unwrap();
    let started = Instant::now();
    let report = a
        .query(
            "SELECT action FROM sync_clone('clone_sync', tables => '{cloned}', \
                                           objects => '{sequences, tables, rows, keys, indexes}')",
            &[],
        )
        .unwrap();
    let cloned = started.elapsed().as_secs_f64();
    assert!(report.iter().all(|r| r.get::<_, String>(0) == "created"));
    assert_eq!(count(&mut target, "SELECT count(*) FROM cloned"), rows);
    assert_eq!(
        count(&mut to.connect("clone_dump"), "SELECT count(*) FROM cloned"),
        rows
    );
    println!();
    println!("a {rows}-row table copied into an empty database of the other cluster");
    println!(
        "  pg_dump -t | psql: {dumped:.1} s; sync_clone: {cloned:.1} s ({:.2}×)",
        cloned / dumped
    );
}

/// sync_diff over a large table with a few scattered differences, and sync_reconcile of them.
fn diff(a: &mut postgres::Client, b: &mut postgres::Client) {
    let rows = env_or("BENCH_DIFF_ROWS", 1_000_000);
    let ddl = "CREATE TABLE diffed (id int PRIMARY KEY, v text NOT NULL, n int, at timestamptz)";
    a.batch_execute(ddl).unwrap();
    b.batch_execute(ddl).unwrap();
    let fill = format!(
        "INSERT INTO diffed SELECT g, 'row ' || g, g % 100, \
                timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' \
           FROM generate_series(1, {rows}) g"
    );
    a.batch_execute(&fill).unwrap();
    b.batch_execute(&fill).unwrap();
    let step = (rows / 100).max(1);
    b.batch_execute(&format!(
        "UPDATE diffed SET v = 'changed' WHERE id % {step} = 7"
    ))
    .unwrap();
    let started = Instant::now();
    let found = count(a, "SELECT count(*) FROM sync_diff('diffed')");
    let took = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let repaired = count(a, "SELECT sync_reconcile('diffed')");
    let repair_took = started.elapsed().as_secs_f64();
    assert_eq!(found, repaired);
    assert_eq!(count(a, "SELECT count(*) FROM sync_diff('diffed')"), 0);
    println!();
    println!("sync_diff of a {rows}-row table with {found} scattered differences");
    println!(
        "  sync_diff {:.2} s ({:.0} rows/s compared), sync_reconcile {:.2} s",
        took,
        rows as f64 / took,
        repair_took
    );
}

/// Insert cost per row on the non-owning node, for a column whose default is the table's own
/// sequence, a sequence shared with the owner, and an interleaved one. All three tables are
/// linked in async mode, so the difference is the id alone.
fn sequences(a: &mut postgres::Client, b: &mut postgres::Client, rounds: usize) {
    let rows = env_or("BENCH_SEQ_ROWS", 5000);
    let tables = ["seq_plain", "seq_shared", "seq_interleave"];
    for t in tables {
        let ddl = format!("CREATE TABLE {t} (id bigserial PRIMARY KEY, name text NOT NULL)");
        a.batch_execute(&ddl).unwrap();
        b.batch_execute(&ddl).unwrap();
        a.execute(
            &format!("SELECT sync_link_table('{t}', mode => 'async')"),
            &[],
        )
        .unwrap();
    }
    a.execute("SELECT sync_share_sequence('seq_shared_id_seq')", &[])
        .unwrap();
    a.execute(
        "SELECT sync_share_sequence('seq_interleave_id_seq', strategy => 'interleave')",
        &[],
    )
    .unwrap();
    let mut per_row: Vec<Vec<f64>> = vec![Vec::new(); tables.len()];
    for _ in 0..rounds {
        for (i, t) in tables.iter().enumerate() {
            let started = Instant::now();
            b.batch_execute(&format!(
                "DO $$ BEGIN FOR i IN 1..{rows} LOOP INSERT INTO {t} (name) VALUES ('x'); END LOOP; END $$"
            ))
            .unwrap();
            per_row[i].push(started.elapsed().as_secs_f64() * 1e6 / rows as f64);
        }
    }
    println!();
    println!("id from a sequence, single-row INSERT on the peer that does not own it ({rows} rows, median of {rounds})");
    println!(
        "  {:<32} {:>10} {:>12}",
        "column default", "µs/row", "x own seq"
    );
    let base = median(per_row[0].clone());
    for (i, name) in [
        "own sequence",
        "shared (nextval on the owner)",
        "interleave",
    ]
    .iter()
    .enumerate()
    {
        let m = median(per_row[i].clone());
        println!("  {:<32} {:>10.1} {:>11.2}x", name, m, m / base);
    }
}

/// A field of /proc/<pid>/status, in kB: VmHWM is the process's peak resident set, RssAnon the
/// private memory resident now. None once the process is gone.
fn proc_kb(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Start the process's VmHWM afresh from its resident set now, so that a long-lived backend's
/// peak shows what the next statement takes rather than all it did before. A backend that has
/// just ended needs none.
fn reset_peak(pid: i32) {
    match std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            panic!("cannot reset the peak RSS of backend {pid}: {e}")
        }
        _ => {}
    }
}

/// The peer's backends serving connections from the writer's node (which reaches it as the
/// sync role, see Cluster::conninfo); with `busy`, only those running or in a transaction.
fn peer_backends(b: &mut postgres::Client, busy: bool) -> Vec<i32> {
    b.query(
        "SELECT pid FROM pg_stat_activity WHERE usename = 'sync' AND (NOT $1 OR state <> 'idle')",
        &[&busy],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// What [`Sampler`] saw: the highest private memory of the writer and of the peer's busy
/// backends (kB), and those backends.
struct Sampled {
    writer_private: u64,
    peer_private: u64,
    peer_pids: Vec<i32>,
}

/// Samples private memory while a statement runs and its changes are applied: VmHWM has the
/// true peak but counts every page of shared buffers the backend touched, so the private part
/// is read apart, as often as the sampling allows.
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Sampled>,
}

impl Sampler {
    const EVERY: Duration = Duration::from_millis(50);

    fn start(writer: i32, peer_conninfo: String) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut b = postgres::Client::connect(&peer_conninfo, postgres::NoTls).unwrap();
            let mut seen = Sampled {
                writer_private: 0,
                peer_private: 0,
                peer_pids: Vec::new(),
            };
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                let private = proc_kb(writer, "RssAnon").unwrap_or(0);
                seen.writer_private = seen.writer_private.max(private);
                for pid in peer_backends(&mut b, true) {
                    if !seen.peer_pids.contains(&pid) {
                        seen.peer_pids.push(pid);
                    }
                    let private = proc_kb(pid, "RssAnon").unwrap_or(0);
                    seen.peer_private = seen.peer_private.max(private);
                }
                std::thread::sleep(Sampler::EVERY);
            }
            seen
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Sampled {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// One UPDATE of every row of a large table, unlinked and linked in both modes: the writer's
/// time, the time until the peer has applied it, and the peak memory of the writer's backend
/// and of the peer's backend that applied it.
fn million(pair: &Nodes, a: &mut postgres::Client, b: &mut postgres::Client) {
    let rows = env_or("BENCH_MILLION_ROWS", 1_000_000) as i64;
    let tables = ["million_unlinked", "million_sync", "million_async"];
    let names = ["unlinked", "synclink, sync mode", "synclink, async mode"];
    let (sync, asynchronous) = (1, 2);
    // The same rows on both nodes before the link, as when tables that already agree are
    // linked: loaded at the speed of a plain INSERT, and the UPDATE is the rows' first change
    // since. Fixed timestamps, so that both nodes' rows are equal.
    for (v, t) in tables.iter().enumerate() {
        let ddl = format!("CREATE TABLE {t} {TABLE}");
        a.batch_execute(&ddl).unwrap();
        b.batch_execute(&ddl).unwrap();
        let fill = format!(
            "INSERT INTO {t} (id, name, price, created_at, updated_at) \
             SELECT g, 'item ' || g, g % 1000, at, at FROM generate_series(1, {rows}) g, \
                    LATERAL (SELECT timestamp '2026-01-01 00:00:00' + g * interval '1 second') s(at)"
        );
        a.batch_execute(&fill).unwrap();
        if v != 0 {
            b.batch_execute(&fill).unwrap();
        }
    }
    a.execute("SELECT sync_link_table('million_sync')", &[])
        .unwrap();
    a.execute(
        "SELECT sync_link_table('million_async', mode => 'async')",
        &[],
    )
    .unwrap();
    for t in &tables[1..] {
        assert_eq!(same(a, b, t), rows);
    }
    let mut line = Vec::new();
    let mut writer_s = [0.0f64; 3];
    for (v, t) in tables.iter().enumerate() {
        // Hint bits set and statistics taken, for every variant alike. The version tables are
        // left as linking made them: empty until this UPDATE, and analyzed empty they would
        // have the peer plan its apply of every record for empty tables.
        for c in [&mut *a, &mut *b] {
            c.batch_execute(&format!("VACUUM ANALYZE {t}")).unwrap();
            c.batch_execute("CHECKPOINT").unwrap();
        }
        // A session of its own: its backend's peak is this statement's alone.
        let mut writer = pair.a.connect();
        let pid: i32 = writer
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        for p in peer_backends(b, false) {
            reset_peak(p);
        }
        let sampler = Sampler::start(pid, pair.b.socket_conninfo());
        let started = Instant::now();
        writer.execute(&Bulk::Update.sql(t, rows), &[]).unwrap();
        writer_s[v] = started.elapsed().as_secs_f64();
        let peer_s = if v == asynchronous {
            wait_until(Duration::from_secs(3600), || queued(a) == 0);
            Some(started.elapsed().as_secs_f64())
        } else if v == sync {
            assert_eq!(queued(a), 0, "sync mode queued changes");
            Some(writer_s[v])
        } else {
            None
        };
        let sampled = sampler.finish();
        // Read while the backends live: the peer's, in sync mode, is the writer's connection.
        let writer_peak = proc_kb(pid, "VmHWM").unwrap();
        let peer_peak = sampled
            .peer_pids
            .iter()
            .filter_map(|&p| proc_kb(p, "VmHWM"))
            .max();
        drop(writer);
        check(a, b, t, v != 0, rows);
        let mb = |kb: u64| kb as f64 / 1024.0;
        let times = match peer_s {
            Some(s) => format!(
                "{:>9.1} {:>10.2}x {:>15.1} {:>10.2}x",
                writer_s[v],
                writer_s[v] / writer_s[0],
                s,
                s / writer_s[0]
            ),
            None => format!("{:>9.1} {:>10.2}x {:>15} {:>11}", writer_s[v], 1.0, "", ""),
        };
        let writer_mem = format!(
            "{:.0} MB ({:.0} MB)",
            mb(writer_peak),
            mb(sampled.writer_private)
        );
        let peer_mem = match (v, peer_peak) {
            (0, _) => String::new(),
            (_, Some(kb)) => format!("{:.0} MB ({:.0} MB)", mb(kb), mb(sampled.peer_private)),
            (_, None) => "not found".into(),
        };
        line.push(format!(
            "  {:<22} {times} {writer_mem:>20} {peer_mem:>20}",
            names[v]
        ));
    }
    println!();
    println!(
        "UPDATE of all {rows} rows of a table both nodes hold (loaded before linking), one run \
         each; the peer's rows checked against the writer's"
    );
    println!(
        "  {:<22} {:>9} {:>11} {:>15} {:>11} {:>20} {:>20}",
        "variant",
        "writer s",
        "x unlinked",
        "on the peer s",
        "x unlinked",
        "writer peak RSS",
        "peer's peak RSS"
    );
    for l in line {
        println!("{l}");
    }
    let shared: String = a.query_one("SHOW shared_buffers", &[]).unwrap().get(0);
    println!(
        "  peak RSS: the backend's VmHWM, which counts the shared buffers it touched \
         (shared_buffers = {shared}); in brackets its private memory (RssAnon) at the highest \
         of samples every {} ms",
        Sampler::EVERY.as_millis()
    );
}
