//! synclink benchmarks, measured side by side in one run on two local clusters.
//!
//!   bulk:   100,000-row INSERT … SELECT into the same table unlinked, linked with synclink
//!           (sync and async mode), and with hand-written row-level triggers that send each
//!           row through postgres_fdw
//!   single: single-row INSERT transactions per second from 4 pgbench clients (async mode
//!           also with the peer stopped, to show the writers' own share)
//!   lag:    async mode, commit on one node to visible on the other, at steady rates
//!   drain:  how fast the background worker delivers a backlog of queued changes
//!   sequences: insert cost per row with an own, a shared and an interleaved sequence
//!   diff:   sync_diff and sync_reconcile of a 1,000,000-row table with 100 differences
//!   peers:  the alternatives, pglogical 2 and Bucardo 5, two-way on clusters of their own:
//!           bulk INSERT/UPDATE/DELETE, single-row tps, a stopped peer's backlog (bench/peers.rs)
//!
//! Variants run in rotating order within each round and every ratio is taken against the
//! unlinked figure of the same round (for single, of the run right next to it), so machine
//! noise hits all of them alike.
//! Run with `make bench` (installs the release build first). BENCH_ONLY, BENCH_ROUNDS,
//! BENCH_SECONDS, BENCH_SINGLE_PAIRS, BENCH_ROWS, BENCH_BACKLOG, BENCH_LAG_RATES,
//! BENCH_LAG_SAMPLES, BENCH_SEQ_ROWS, BENCH_DIFF_ROWS and BENCH_PEERS_BACKLOG tune it.

use std::process::Command;
use std::time::{Duration, Instant};
use synclink_e2e::{count, wait_until, Nodes};

#[path = "bench/peers.rs"]
mod peers;

const TABLE: &str = "(id bigserial PRIMARY KEY, name varchar(255), price integer,
    created_at timestamp NOT NULL, updated_at timestamp NOT NULL)";

/// Hand-written row-level triggers over postgres_fdw: one remote INSERT per row.
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
    FOR EACH ROW EXECUTE PROCEDURE insert_legacy_products();";

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

fn main() {
    let rounds = env_or("BENCH_ROUNDS", 3) as usize;
    let seconds = env_or("BENCH_SECONDS", 5);
    let rows = env_or("BENCH_ROWS", 100_000) as i64;
    let backlog = env_or("BENCH_BACKLOG", 100_000) as i64;
    // BENCH_ONLY=single,lag runs those parts only (bulk, single, lag, drain, sequences, diff,
    // peers)
    let only = std::env::var("BENCH_ONLY").ok();
    let wants = |part: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|p| p == part))
    };
    let pair = Nodes::two_clusters(&[
        "fsync = on",
        "shared_buffers = 256MB",
        "max_wal_size = 2GB",
        "shared_preload_libraries = 'synclink'",
    ]);
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
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); n];
        for round in 0..rounds {
            let mut this = vec![0.0f64; n];
            for k in 0..n {
                let v = (round + k) % n;
                let t = variants[v];
                reset(&mut a, &mut b, t, linked[v]);
                a.batch_execute("CHECKPOINT").unwrap();
                let started = Instant::now();
                a.execute(
                    &format!(
                        "INSERT INTO {t} (id, name, price, created_at, updated_at) \
                         SELECT g, 'item ' || g, g % 1000, now(), now() FROM generate_series(1, {rows}) g"
                    ),
                    &[],
                )
                .unwrap();
                this[v] = started.elapsed().as_secs_f64() * 1000.0;
                if v > 0 {
                    let sql = format!("SELECT count(*) FROM {t}");
                    wait_until(Duration::from_secs(120), || count(&mut b, &sql) == rows);
                }
            }
            for v in 0..n {
                times[v].push(this[v]);
                ratios[v].push(this[v] / this[0]);
            }
            let line: Vec<String> = (0..n)
                .map(|v| format!("{} {:.0} ms", names[v], this[v]))
                .collect();
            println!("  round {}: {}", round + 1, line.join(", "));
        }
        println!();
        println!("bulk {rows}-row INSERT … SELECT, the writer's time to commit (median of {rounds}; every row checked on the peer)");
        println!("  {:<32} {:>10} {:>12}", "variant", "ms", "x unlinked");
        for v in 0..n {
            println!(
                "  {:<32} {:>10.0} {:>11.2}x",
                names[v],
                median(times[v].clone()),
                median(ratios[v].clone())
            );
        }
        println!(
            "  synclink sync mode is {:.1}x faster than the row-level triggers",
            median(ratios[3].clone()) / median(ratios[1].clone())
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
        // peer notes when each id appears
        let rates = std::env::var("BENCH_LAG_RATES").unwrap_or_else(|_| "200,1000".into());
        let samples = env_or("BENCH_LAG_SAMPLES", 2000) as i64;
        for rate in rates
            .split(',')
            .map(|r| r.trim().parse::<u64>().expect("BENCH_LAG_RATES: numbers"))
        {
            reset(&mut a, &mut b, "bench_async", true);
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
            let pct = |q: f64| lags[((lags.len() as f64 - 1.0) * q).round() as usize];
            println!();
            println!(
                "async mode, commit on A to visible on B, {rate} single-row commits/s ({} samples)",
                lags.len()
            );
            println!(
                "  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                pct(0.5),
                pct(0.99),
                pct(1.0)
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
    if wants("peers") {
        peers::run(rounds, seconds, rows);
    }
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
