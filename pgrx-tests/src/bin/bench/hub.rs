//! A hub and its children: the hub is A's database, BENCH_HUB_CHILDREN children (default 8)
//! are databases of B's server, each linked async with the hub only, so that a change made on
//! one child reaches the others through the hub.
//!
//! Measured: what a write on the hub costs when its table is linked with every child against
//! the same write on a table linked with one (single-row INSERT tps from 4 pgbench clients, in
//! pairs of runs side by side, and one INSERT … SELECT of BENCH_ROWS rows); the time from a
//! commit on one child until the row is visible on the hub and on every other child, at
//! BENCH_HUB_RATE single-row commits a second; and how fast the hub passes on a backlog of
//! BENCH_HUB_BACKLOG changes made on one child.

use super::{env_or, median, pgbench_tps_on};
use postgres::Client;
use std::time::{Duration, Instant};
use synclink_e2e::{count, wait_until, Node, Nodes};

const ONE: &str = "bench_hub_one";
const ALL: &str = "bench_hub_all";
const TABLE: &str = "(id bigserial PRIMARY KEY, name varchar(255), price integer,
    created_at timestamp NOT NULL, updated_at timestamp NOT NULL)";
const PATIENCE: Duration = Duration::from_secs(600);

pub fn run(pair: &Nodes, rounds: usize, seconds: u64, rows: i64) {
    let n = env_or("BENCH_HUB_CHILDREN", 8) as usize;
    let children: Vec<Node> = (1..=n)
        .map(|i| pair.b.sibling(&format!("child{i}")))
        .collect();
    let mut hub = pair.a.connect();
    let mut kids: Vec<Client> = children.iter().map(|c| c.connect()).collect();
    for t in [ONE, ALL] {
        hub.batch_execute(&format!("CREATE TABLE {t} {TABLE}"))
            .unwrap();
        for k in kids.iter_mut() {
            k.batch_execute(&format!("CREATE TABLE {t} {TABLE}"))
                .unwrap();
        }
    }
    for (i, (child, k)) in children.iter().zip(kids.iter_mut()).enumerate() {
        let name = format!("c{}", i + 1);
        hub.execute("SELECT sync_add_peer($1, $2)", &[&name, &child.conninfo()])
            .unwrap();
        k.execute("SELECT sync_add_peer('hub', $1)", &[&pair.a.conninfo()])
            .unwrap();
        hub.execute(
            &format!("SELECT sync_link_table('{ALL}', $1, mode => 'async')"),
            &[&name],
        )
        .unwrap();
        if i == 0 {
            hub.execute(
                &format!("SELECT sync_link_table('{ONE}', $1, mode => 'async')"),
                &[&name],
            )
            .unwrap();
        }
    }
    // Nothing queued anywhere: no record in any outbox, nor one for several children waiting
    // to be handed on to theirs.
    let drained = |hub: &mut Client, kids: &mut [Client]| {
        wait_until(PATIENCE, || {
            synclink_e2e::queued(hub) == 0 && kids.iter_mut().all(|k| synclink_e2e::queued(k) == 0)
        });
    };

    println!();
    println!(
        "a hub linked async with {n} children (the children are databases of one server): a write on the hub"
    );
    let (mut tps_ratio, mut bulk_ratio) = (Vec::new(), Vec::new());
    let (mut tps_one, mut tps_all) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let run = |t: &str, hub: &mut Client, kids: &mut [Client]| {
            let tps = pgbench_tps_on(pair.a.cluster(), &pair.a.db, t, seconds);
            drained(hub, kids);
            let started = Instant::now();
            hub.batch_execute(&format!(
                "INSERT INTO {t} (name, price, created_at, updated_at) \
                 SELECT 'bulk', g, now(), now() FROM generate_series(1, {rows}) g"
            ))
            .unwrap();
            let bulk = started.elapsed().as_secs_f64();
            drained(hub, kids);
            hub.batch_execute(&format!("TRUNCATE {t}")).unwrap();
            drained(hub, kids);
            hub.batch_execute("CHECKPOINT").unwrap();
            (tps, bulk)
        };
        let ((t1, b1), (tn, bn)) = if round % 2 == 0 {
            let one = run(ONE, &mut hub, &mut kids);
            (one, run(ALL, &mut hub, &mut kids))
        } else {
            let all = run(ALL, &mut hub, &mut kids);
            (run(ONE, &mut hub, &mut kids), all)
        };
        tps_one.push(t1);
        tps_all.push(tn);
        tps_ratio.push(t1 / tn);
        bulk_ratio.push(bn / b1);
    }
    println!(
        "  single-row INSERT, 4 clients: {:.0} tps with 1 child, {:.0} with {n}: a write costs {:.2}x",
        median(tps_one),
        median(tps_all),
        median(tps_ratio)
    );
    println!(
        "  INSERT … SELECT of {rows} rows: with {n} children {:.2}x the time with 1",
        median(bulk_ratio)
    );

    // The writer's own cost: single-row INSERTs, each a statement captured by itself, in one
    // transaction, so that nothing is delivered (and no child applies anything on the
    // machine's CPUs) while they run. The backlog warning's count is off: it reads the queue
    // every thousand changes, which a transaction that queues 160,000 of its own makes long.
    let statements = env_or("BENCH_HUB_STATEMENTS", 20_000);
    let mut own_ratio = Vec::new();
    for round in 0..rounds {
        let timed = |t: &str, hub: &mut Client, kids: &mut [Client]| {
            drained(hub, kids);
            let started = Instant::now();
            hub.batch_execute(&format!(
                "SET synclink.backlog_warning = 0;
                 DO $$ BEGIN FOR i IN 1..{statements} LOOP
                     INSERT INTO {t} (name, price, created_at, updated_at) VALUES ('one', i, now(), now());
                 END LOOP; END $$"
            ))
            .unwrap();
            let took = started.elapsed().as_secs_f64();
            hub.batch_execute("RESET synclink.backlog_warning").unwrap();
            drained(hub, kids);
            hub.batch_execute(&format!("TRUNCATE {t}")).unwrap();
            drained(hub, kids);
            took
        };
        let (one, all) = if round % 2 == 0 {
            let one = timed(ONE, &mut hub, &mut kids);
            (one, timed(ALL, &mut hub, &mut kids))
        } else {
            let all = timed(ALL, &mut hub, &mut kids);
            (timed(ONE, &mut hub, &mut kids), all)
        };
        own_ratio.push(all / one);
    }
    println!(
        "  {statements} single-row INSERTs in one transaction (the writer's own cost, nothing delivered meanwhile): with {n} children {:.2}x the time with 1",
        median(own_ratio)
    );

    // Lag through the hub: commits on child 1, each row awaited on the hub and every other child.
    let rate = env_or("BENCH_HUB_RATE", 100);
    let samples = env_or("BENCH_HUB_SAMPLES", 1000) as i64;
    let base: i64 = 1_000_000_000;
    let writer = {
        let conninfo = children[0].socket_conninfo();
        std::thread::spawn(move || {
            let mut w = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
            let start = Instant::now();
            let mut committed = Vec::with_capacity(samples as usize);
            for i in 1..=samples {
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                w.execute(
                    &format!("INSERT INTO {ALL} VALUES ($1, 'lag', 1, now(), now())"),
                    &[&(base + i)],
                )
                .unwrap();
                committed.push(Instant::now());
            }
            committed
        })
    };
    let mut seen_at: Vec<Option<Instant>> = vec![None; samples as usize + 1];
    let mut seen = 0i64;
    let sql = format!("SELECT coalesce(max(id), 0) - {base} FROM {ALL} WHERE id > {base}");
    while seen < samples {
        let mut least = count(&mut hub, &sql);
        for k in kids.iter_mut().skip(1) {
            least = least.min(count(k, &sql));
        }
        let now = Instant::now();
        for id in (seen + 1)..=least {
            seen_at[id as usize] = Some(now);
        }
        seen = seen.max(least);
        std::thread::sleep(Duration::from_millis(2));
    }
    let committed = writer.join().unwrap();
    let mut lags: Vec<f64> = committed
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            seen_at[i + 1].map(|s| s.saturating_duration_since(*c).as_secs_f64() * 1000.0)
        })
        .collect();
    lags.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let pct = |q: f64| lags[((lags.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "  a commit on one child until visible on the hub and the {} other children, {rate}/s: p50 {:.1} ms, p99 {:.1} ms",
        n - 1,
        pct(0.5),
        pct(0.99)
    );

    // A backlog made on one child, passed on by the hub.
    drained(&mut hub, &mut kids);
    let backlog = env_or("BENCH_HUB_BACKLOG", 20_000) as i64;
    let before = count(&mut kids[n - 1], &format!("SELECT count(*) FROM {ALL}"));
    let started = Instant::now();
    kids[0]
        .batch_execute(&format!(
            "DO $$ BEGIN FOR i IN 1..{backlog} LOOP
                 INSERT INTO {ALL} (name, price, created_at, updated_at) VALUES ('relayed', 1, now(), now());
             END LOOP; END $$"
        ))
        .unwrap();
    let committed = started.elapsed();
    wait_until(PATIENCE, || {
        kids.iter_mut()
            .skip(1)
            .all(|k| count(k, &format!("SELECT count(*) FROM {ALL}")) == before + backlog)
    });
    let took = started.elapsed() - committed;
    println!(
        "  {backlog} changes committed on one child in one transaction: on every other child {:.1} s later, the hub passing on {:.0} changes/s to each ({:.0} in all)",
        took.as_secs_f64(),
        backlog as f64 / took.as_secs_f64(),
        (backlog * (n as i64 - 1)) as f64 / took.as_secs_f64()
    );
}
