//! synclink benchmarks, measured side by side in one run on two local clusters.
//!
//!   bulk:   100,000-row INSERT … SELECT into the same table unlinked, linked with synclink,
//!           and with the hand-written row-level triggers of the railwaymen article
//!   single: single-row INSERT transactions per second from 4 pgbench clients
//!
//! Variants run in rotating order within each round and every ratio is taken against the
//! unlinked figure of the same round, so machine noise hits all of them alike.
//! Run with `make bench` (installs the release build first). BENCH_ROUNDS, BENCH_SECONDS tune it.

use std::process::Command;
use std::time::Instant;
use synclink_e2e::{Pair, SYNC_PASSWORD};

const TABLE: &str = "(id bigserial PRIMARY KEY, name varchar(255), price integer,
    created_at timestamp NOT NULL, updated_at timestamp NOT NULL)";

/// The railwaymen article's trigger, as published (one remote INSERT per row).
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

fn pgbench_tps(pair: &Pair, table: &str, seconds: u64) -> f64 {
    let script = std::env::temp_dir().join(format!("synclink-bench-{table}.sql"));
    std::fs::write(&script, format!("INSERT INTO {table} (name, price, created_at, updated_at) VALUES ('item', 1, now(), now());\n")).unwrap();
    let out = Command::new(pair.a.bindir().join("pgbench"))
        .args(["-n", "-c", "4", "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .args(["-h"])
        .arg(pair.a.socket_dir())
        .args(["-p", &pair.a.port.to_string(), "-U", "postgres", &pair.db])
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

fn main() {
    let rounds = env_or("BENCH_ROUNDS", 3) as usize;
    let seconds = env_or("BENCH_SECONDS", 10);
    let rows = env_or("BENCH_ROWS", 100_000) as i64;
    let pair = Pair::new(&["fsync = on", "shared_buffers = 256MB", "max_wal_size = 2GB"]);
    let mut a = pair.a.create_db(&pair.db);
    let mut b = pair.b.create_db(&pair.db);
    for t in ["bench_unlinked", "bench_linked", "bench_rowtrig"] {
        let ddl = format!("CREATE TABLE {t} {TABLE}");
        a.batch_execute(&ddl).unwrap();
        b.batch_execute(&ddl).unwrap();
    }
    a.execute(
        "SELECT sync_add_peer('b', $1)",
        &[&pair.b.conninfo(&pair.db)],
    )
    .unwrap();
    b.execute(
        "SELECT sync_add_peer('a', $1)",
        &[&pair.a.conninfo(&pair.db)],
    )
    .unwrap();
    a.execute("SELECT sync_link_table('bench_linked')", &[])
        .unwrap();
    a.batch_execute(ROW_TRIGGER).unwrap();
    let _ = SYNC_PASSWORD;

    println!("synclink benchmark: {rows} rows per bulk statement, {rounds} rounds, PostgreSQL 15, two clusters on loopback, fsync on");
    let variants = ["bench_unlinked", "bench_linked", "bench_rowtrig"];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 0..rounds {
        let mut this = [0.0f64; 3];
        for k in 0..3 {
            let v = (round + k) % 3;
            let t = variants[v];
            a.batch_execute(&format!("TRUNCATE {t}")).unwrap();
            b.batch_execute(&format!("TRUNCATE {t}")).unwrap();
            a.batch_execute("CHECKPOINT").unwrap();
            let started = Instant::now();
            a.execute(
                &format!("INSERT INTO {t} (id, name, price, created_at, updated_at) \
                          SELECT g, 'item ' || g, g % 1000, now(), now() FROM generate_series(1, {rows}) g"),
                &[],
            )
            .unwrap();
            this[v] = started.elapsed().as_secs_f64() * 1000.0;
            if v > 0 {
                let on_b: i64 = b
                    .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                    .unwrap()
                    .get(0);
                assert_eq!(on_b, rows, "{t}: the peer must hold every row");
            }
        }
        for v in 0..3 {
            times[v].push(this[v]);
            ratios[v].push(this[v] / this[0]);
        }
        println!(
            "  round {}: unlinked {:.0} ms, synclink {:.0} ms, row triggers {:.0} ms",
            round + 1,
            this[0],
            this[1],
            this[2]
        );
    }
    let (ru, rl, rr) = (
        median(ratios[0].clone()),
        median(ratios[1].clone()),
        median(ratios[2].clone()),
    );
    println!();
    println!("bulk {rows}-row INSERT … SELECT (median of {rounds})");
    println!("  {:<34} {:>10} {:>14}", "variant", "ms", "x unlinked");
    println!(
        "  {:<34} {:>10.0} {:>13.2}x",
        "unlinked",
        median(times[0].clone()),
        ru
    );
    println!(
        "  {:<34} {:>10.0} {:>13.2}x",
        "synclink (sync mode)",
        median(times[1].clone()),
        rl
    );
    println!(
        "  {:<34} {:>10.0} {:>13.2}x",
        "row-level triggers (article)",
        median(times[2].clone()),
        rr
    );
    println!(
        "  synclink is {:.1}x faster than row-level triggers",
        rr / rl
    );

    println!();
    println!("single-row INSERT, 4 clients, {seconds} s each (same-run ratios)");
    let mut tps = Vec::new();
    for t in variants {
        a.batch_execute(&format!("TRUNCATE {t}")).unwrap();
        b.batch_execute(&format!("TRUNCATE {t}")).unwrap();
        tps.push(pgbench_tps(&pair, t, seconds));
    }
    println!("  {:<34} {:>10} {:>14}", "variant", "tps", "x unlinked");
    for (name, v) in [
        ("unlinked", tps[0]),
        ("synclink (sync mode)", tps[1]),
        ("row-level triggers (article)", tps[2]),
    ] {
        println!("  {:<34} {:>10.0} {:>13.2}x", name, v, v / tps[0]);
    }
    let (na, nb): (i64, i64) = (
        a.query_one("SELECT count(*) FROM bench_linked", &[])
            .unwrap()
            .get(0),
        b.query_one("SELECT count(*) FROM bench_linked", &[])
            .unwrap()
            .get(0),
    );
    assert_eq!(na, nb, "every single-row insert reached the peer");
}
