//! The alternatives a user would pick instead of synclink, each set up two-way as its own
//! documentation says, on two clusters of its own:
//!
//!   pglogical 2: a node in each database, the table in the `default` replication set, and a
//!                subscription in each direction (`forward_origins := '{}'`, so that a change
//!                applied from the other node is not sent back to it)
//!   Bucardo 5:   its control database `bucardo` on A's server, both databases added, one sync
//!                over the table with `dbs=a:source,b:source`, the daemon started
//!
//! Each pair also has an unlinked table, and every ratio is taken against it on the same
//! servers in the same round (the variants' order rotating), so the ratios compare with those
//! of synclink against its own unlinked table. Per round: a bulk INSERT … SELECT, UPDATE and
//! DELETE of BENCH_ROWS rows on A (the writer's time, and from the statement's start until B
//! holds the same rows), single-row INSERT tps from 4 pgbench clients, and B stopped while
//! BENCH_PEERS_BACKLOG single-row transactions commit on A (from B's restart until the last
//! is applied there).

use super::{env_or, median, pgbench_tps_on, TABLE};
use postgres::Client;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use synclink_e2e::{count, same, wait_until, Cluster};

const DB: &str = "shop";
const UNLINKED: &str = "bench_unlinked";
const REPLICATED: &str = "bench_replicated";

/// The synclink pair's settings that bear on write speed.
const CONF: [&str; 3] = ["fsync = on", "shared_buffers = 256MB", "max_wal_size = 2GB"];

/// Longest a change may take to reach B before the run fails.
const PATIENCE: Duration = Duration::from_secs(600);

const STATEMENTS: [&str; 3] = [
    "INSERT … SELECT",
    "UPDATE of every row",
    "DELETE of every row",
];

pub fn run(rounds: usize, seconds: u64, rows: i64) {
    let backlog = env_or("BENCH_PEERS_BACKLOG", 20_000) as i64;
    let mut summaries = Vec::new();

    // One alternative at a time: the other's servers and daemon are gone by then and cost the
    // two cores nothing.
    {
        let servers = Servers::start(
            "pglogical",
            &[
                "wal_level = logical",
                "shared_preload_libraries = 'pglogical'",
                "max_worker_processes = 10",
                "max_replication_slots = 10",
                "max_wal_senders = 10",
                // A row both nodes changed goes the way synclink (last_write_wins) and Bucardo
                // (bucardo_latest) decide by default; pglogical's documentation asks for commit
                // timestamps for that.
                "track_commit_timestamp = on",
                "pglogical.conflict_resolution = 'last_update_wins'",
            ],
        );
        let version = pglogical(&servers);
        println!();
        println!(
            "pglogical {version}, two-way: a node, the default replication set and a subscription \
             each way (synchronize_data false, forward_origins '{{}}', last_update_wins); \
             its own two clusters, wal_level logical"
        );
        summaries.push(measure(
            &format!("pglogical {version}"),
            "pglogical",
            &servers,
            rounds,
            seconds,
            rows,
            backlog,
        ));
    }
    {
        let servers = Servers::start("bucardo", &[]);
        let bucardo = Bucardo::setup(&servers);
        println!();
        println!(
            "Bucardo {}, two-way: one sync with dbs=a:source,b:source (conflict strategy \
             bucardo_latest, the default), its control database on A's server; its own two clusters",
            bucardo.version
        );
        summaries.push(measure(
            &format!("Bucardo {}", bucardo.version),
            "Bucardo",
            &servers,
            rounds,
            seconds,
            rows,
            backlog,
        ));
        // The daemon goes before the servers it is connected to.
        drop(bucardo);
    }

    println!();
    println!("alternatives, each against an unlinked table on its own servers (medians of {rounds} rounds)");
    println!(
        "  {:<18} {:>8} {:>8} {:>8} {:>16} {:>12} {:>22}",
        "", "INSERT", "UPDATE", "DELETE", "INSERT on B", "single tps", "restart to applied"
    );
    for s in &summaries {
        println!(
            "  {:<18} {:>7.2}x {:>7.2}x {:>7.2}x {:>14.2} s {:>11.2}x {:>20.2} s",
            s.name, s.ratios[0], s.ratios[1], s.ratios[2], s.insert_on_b, s.tps_ratio, s.restart
        );
    }
}

/// Two clusters with database `shop`, each holding the unlinked and the replicated table.
struct Servers {
    a: Cluster,
    b: Cluster,
}

impl Servers {
    fn start(name: &str, conf: &[&str]) -> Servers {
        let conf: Vec<String> = CONF.iter().chain(conf).map(|s| s.to_string()).collect();
        let server = |node: &str| {
            let name = format!("{name}-{node}");
            let conf = conf.clone();
            move || {
                let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
                let cluster = Cluster::start(&name, &conf);
                cluster
                    .connect("postgres")
                    .batch_execute(&format!("CREATE DATABASE {DB}"))
                    .unwrap();
                let mut c = cluster.connect(DB);
                for t in [UNLINKED, REPLICATED] {
                    c.batch_execute(&format!("CREATE TABLE {t} {TABLE}"))
                        .unwrap();
                }
                cluster
            }
        };
        let b = std::thread::spawn(server("b"));
        let a = server("a")();
        let b = b.join().expect("cluster b starts");
        Servers { a, b }
    }

    /// A connection string for the other server, and for the alternatives' own processes:
    /// over the Unix socket, where the harness lets the superuser in without a password.
    fn dsn(cluster: &Cluster) -> String {
        cluster.socket_conninfo(DB)
    }
}

/// pglogical two-way as its README sets it up; returns its version.
fn pglogical(s: &Servers) -> String {
    let nodes = [("a", &s.a), ("b", &s.b)];
    for (name, cluster) in nodes {
        allow_output_plugin(cluster);
        let mut c = cluster.connect(DB);
        c.batch_execute("CREATE EXTENSION pglogical").unwrap();
        c.execute(
            "SELECT pglogical.create_node(node_name := $1, dsn := $2)",
            &[&name, &Servers::dsn(cluster)],
        )
        .unwrap();
        c.execute(
            "SELECT pglogical.replication_set_add_table('default', $1::text::regclass)",
            &[&REPLICATED],
        )
        .unwrap();
    }
    // Both tables start empty: nothing to copy.
    for ((_, here), (there, provider)) in nodes.iter().zip(nodes.iter().rev()) {
        let mut c = here.connect(DB);
        // The wait below never ends when a subscription cannot start; its reason is in the
        // server log.
        c.batch_execute("SET statement_timeout = '2min'").unwrap();
        let sub = format!("from_{there}");
        c.execute(
            "SELECT pglogical.create_subscription(subscription_name := $1, provider_dsn := $2, \
                 synchronize_data := false, forward_origins := '{}')",
            &[&sub, &Servers::dsn(provider)],
        )
        .unwrap();
        c.execute(
            "SELECT pglogical.wait_for_subscription_sync_complete($1)",
            &[&sub],
        )
        .unwrap();
    }
    probe(s);
    s.a.connect(DB)
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pglogical'",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Since 15.19 a server lets replication connections use only the logical decoding output
/// plugins it names, and pglogical's is not among the defaults; older servers have no such
/// setting.
fn allow_output_plugin(cluster: &Cluster) {
    let mut c = cluster.connect(DB);
    let Some(row) = c
        .query_opt(
            "SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'",
            &[],
        )
        .unwrap()
    else {
        return;
    };
    let plugins: String = row.get(0);
    // A list setting: each name quoted on its own, or the whole would be one name.
    let list: Vec<String> = plugins
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .chain(["pglogical_output"])
        .map(|p| format!("'{p}'"))
        .collect();
    c.batch_execute(&format!(
        "ALTER SYSTEM SET output_plugin_libraries = {}",
        list.join(", ")
    ))
    .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    // The postmaster rereads its configuration on its own time; the walsenders it starts from
    // then on have the new setting.
    wait_until(Duration::from_secs(30), || {
        let now: String = cluster
            .connect(DB)
            .query_one("SHOW output_plugin_libraries", &[])
            .unwrap()
            .get(0);
        now.contains("pglogical_output")
    });
}

/// A row written on either node reaches the other: the setup replicates both ways before any
/// figure is taken.
fn probe(s: &Servers) {
    let mut a = s.a.connect(DB);
    let mut b = s.b.connect(DB);
    one_way(&mut a, &mut b, -1);
    one_way(&mut b, &mut a, -2);
}

/// A row inserted and deleted on `from` shows up and goes on `to`.
fn one_way(from: &mut Client, to: &mut Client, id: i64) {
    let there = format!("SELECT count(*) FROM {REPLICATED} WHERE id = {id}");
    from.batch_execute(&format!(
        "INSERT INTO {REPLICATED} VALUES ({id}, 'probe', 0, now(), now())"
    ))
    .unwrap();
    wait_until(Duration::from_secs(60), || count(to, &there) == 1);
    from.batch_execute(&format!("DELETE FROM {REPLICATED} WHERE id = {id}"))
        .unwrap();
    wait_until(Duration::from_secs(60), || count(to, &there) == 0);
}

/// A Bucardo daemon whose control database lives on A's server, as `bucardo install` puts it
/// on a server it is pointed at. Its PID files, logs and the `bucardo` command's own state
/// (the password file install writes into $HOME) stay in a directory of its own. Dropping it
/// stops the daemon.
struct Bucardo {
    dir: PathBuf,
    host: String,
    port: u16,
    bindir: PathBuf,
    version: String,
}

impl Bucardo {
    fn setup(s: &Servers) -> Bucardo {
        let dir =
            std::env::temp_dir().join(format!("synclink-bench-bucardo-{}", std::process::id()));
        // Bucardo stores its piddir setting in lower case.
        assert_eq!(
            dir.to_string_lossy(),
            dir.to_string_lossy().to_lowercase(),
            "Bucardo needs a lower-case temporary directory (TMPDIR)"
        );
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["home", "run", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let version = Command::new("bucardo")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .last()
                    .map(String::from)
            })
            .expect("the bucardo command (Debian package bucardo; `make bench` installs it)");
        let bucardo = Bucardo {
            host: s.a.socket_dir().display().to_string(),
            port: s.a.port,
            bindir: s.a.bindir().to_path_buf(),
            version,
            dir,
        };
        let run = bucardo.dir.join("run");
        let log = bucardo.dir.join("log");
        let path = |p: &Path, file: &str| p.join(file).display().to_string();
        bucardo.command(&[
            "install",
            "--batch",
            "--dbuser",
            "postgres",
            "--dbname",
            "postgres",
            "--piddir",
            &run.display().to_string(),
        ]);
        // Its default paths are under /var/log/bucardo.
        bucardo.command(&[
            "set",
            &format!("log_conflict_file={}", path(&log, "conflict.log")),
            &format!("warning_file={}", path(&log, "warning.log")),
            &format!("reason_file={}", path(&log, "restart.reason")),
        ]);
        for (name, cluster) in [("a", &s.a), ("b", &s.b)] {
            bucardo.command(&[
                "add",
                "db",
                name,
                &format!("dbname={DB}"),
                &format!("host={}", cluster.socket_dir().display()),
                &format!("port={}", cluster.port),
                "user=postgres",
            ]);
        }
        bucardo.command(&["add", "table", &format!("public.{REPLICATED}"), "db=a"]);
        bucardo.command(&[
            "add",
            "sync",
            "bench",
            &format!("tables=public.{REPLICATED}"),
            "dbs=a:source,b:source",
        ]);
        bucardo.command(&[
            "start",
            "--log-destination",
            &log.display().to_string(),
            "synclink benchmark",
        ]);
        probe(s);
        bucardo
    }

    /// Run `bucardo` against the control database; its output goes to cli.log.
    fn command(&self, args: &[&str]) {
        assert!(
            self.try_command(args),
            "bucardo {}:\n{}",
            args.join(" "),
            std::fs::read_to_string(self.dir.join("cli.log")).unwrap_or_default()
        );
    }

    fn try_command(&self, args: &[&str]) -> bool {
        let out = self.dir.join("cli.log");
        let file = File::options()
            .create(true)
            .append(true)
            .open(&out)
            .unwrap();
        Command::new("bucardo")
            .arg("--no-bucardorc")
            .args(["--dbhost", &self.host, "--dbport", &self.port.to_string()])
            .args(args)
            .current_dir(&self.dir)
            .env("HOME", self.dir.join("home"))
            // install runs psql; the one of the servers' own installation
            .env("PGBINDIR", &self.bindir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The daemon's processes, from their PID files.
    fn pids(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("run"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| t.split_whitespace().next().map(String::from))
            .collect()
    }
}

impl Drop for Bucardo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("log/log.bucardo")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- Bucardo log (last 40 lines) ----\n{}\n----",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        // `bucardo stop` leaves a stop file that each process looks for between its runs; they
        // remove their PID files as they exit.
        self.try_command(&["stop", "end of the benchmark"]);
        let stopped = Instant::now();
        while !self.pids().is_empty() && stopped.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(200));
        }
        for pid in self.pids() {
            let _ = Command::new("kill").arg(&pid).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One variant's figures of one round.
#[derive(Default, Clone, Copy)]
struct Round {
    /// The writer's time of each bulk statement, ms.
    writer: [f64; 3],
    /// From each bulk statement's start until B holds the same rows, s.
    on_b: [f64; 3],
    tps: f64,
    /// From the end of the pgbench run until B holds every row, s.
    caught_up: f64,
}

struct Summary {
    name: String,
    ratios: [f64; 3],
    insert_on_b: f64,
    tps_ratio: f64,
    restart: f64,
}

fn measure(
    name: &str,
    short: &str,
    s: &Servers,
    rounds: usize,
    seconds: u64,
    rows: i64,
    backlog: i64,
) -> Summary {
    let mut a = s.a.connect(DB);
    let mut b = s.b.connect(DB);
    let tables = [UNLINKED, REPLICATED];
    let mut figures: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    let mut restarts = Vec::new();
    for round in 0..rounds {
        let mut this = [Round::default(); 2];
        for k in 0..2 {
            let v = (round + k) % 2;
            (this[v].writer, this[v].on_b) = bulk(&mut a, &mut b, tables[v], rows);
        }
        for k in 0..2 {
            let v = (round + k) % 2;
            let t = tables[v];
            reset(&mut a, &mut b, t);
            checkpoint(&mut a, &mut b);
            this[v].tps = pgbench_tps_on(&s.a, DB, t, seconds);
            if t == REPLICATED {
                let ended = Instant::now();
                let sql = format!("SELECT count(*) FROM {t}");
                let on_a = count(&mut a, &sql);
                wait_until(PATIENCE, || count(&mut b, &sql) == on_a);
                this[v].caught_up = ended.elapsed().as_secs_f64();
                same(&mut a, &mut b, t);
            }
        }
        let restart = backlog_after_restart(s, &mut a, &mut b, backlog);
        restarts.push(restart);
        let [u, r] = this;
        let label = format!("round {}, {short}:", round + 1);
        println!(
            "  {:<22} INSERT {:.0} ms, UPDATE {:.0} ms, DELETE {:.0} ms; {:.0} tps",
            format!("round {}, unlinked:", round + 1),
            u.writer[0],
            u.writer[1],
            u.writer[2],
            u.tps
        );
        println!(
            "  {label:<22} INSERT {:.0} ms (all on B after {:.2} s), UPDATE {:.0} ms ({:.2} s), \
             DELETE {:.0} ms ({:.2} s); {:.0} tps (B caught up {:.2} s after)",
            r.writer[0],
            r.on_b[0],
            r.writer[1],
            r.on_b[1],
            r.writer[2],
            r.on_b[2],
            r.tps,
            r.caught_up,
        );
        println!(
            "  {:<22} B restarted: the last of {backlog} queued transactions applied {restart:.2} s later",
            ""
        );
        figures[0].push(u);
        figures[1].push(r);
    }

    let [u, r] = &figures;
    let med = |f: &dyn Fn(&Round) -> f64, of: &[Round]| median(of.iter().map(f).collect());
    let ratio =
        |f: &dyn Fn(&Round) -> f64| median(u.iter().zip(r).map(|(u, r)| f(r) / f(u)).collect());
    println!();
    println!(
        "  {:<34} {:>12} {:>14} {:>11} {:>16}",
        format!("{rows} rows (median of {rounds})"),
        "unlinked ms",
        format!("{short} ms"),
        "x unlinked",
        "all on B after"
    );
    let mut ratios = [0.0; 3];
    for (i, statement) in STATEMENTS.iter().enumerate() {
        ratios[i] = ratio(&|x| x.writer[i]);
        println!(
            "  {:<34} {:>12.0} {:>14.0} {:>10.2}x {:>14.2} s",
            statement,
            med(&|x| x.writer[i], u),
            med(&|x| x.writer[i], r),
            ratios[i],
            med(&|x| x.on_b[i], r)
        );
    }
    let tps_ratio = ratio(&|x| x.tps);
    println!(
        "  {:<34} {:>12} {:>14} {:>11} {:>16}",
        format!("single-row INSERT, 4 clients, {seconds} s"),
        "unlinked tps",
        format!("{short} tps"),
        "x unlinked",
        "B caught up"
    );
    println!(
        "  {:<34} {:>12.0} {:>14.0} {:>10.2}x {:>12.2} s after",
        "",
        med(&|x| x.tps, u),
        med(&|x| x.tps, r),
        tps_ratio,
        med(&|x| x.caught_up, r)
    );
    let restart = median(restarts);
    println!(
        "  B stopped while {backlog} single-row transactions committed on A: from B's restart \
         to the last applied there {restart:.2} s"
    );
    println!("  (\"all on B after\" counts from the statement's start on A)");
    Summary {
        name: name.to_string(),
        ratios,
        insert_on_b: med(&|x| x.on_b[0], r),
        tps_ratio,
        restart,
    }
}

/// The bulk INSERT, UPDATE and DELETE of `rows` rows on A, each after a checkpoint on both
/// servers so that none pays for the dirty pages of the one before. Returns the writer's time
/// of each (ms) and, for the replicated table, the time from its start until B holds the same
/// rows (s), every row compared once B has them.
fn bulk(a: &mut Client, b: &mut Client, table: &str, rows: i64) -> ([f64; 3], [f64; 3]) {
    reset(a, b, table);
    let mut writer = [0.0; 3];
    let mut on_b = [0.0; 3];
    let total = format!("SELECT count(*) FROM {table}");
    let steps = [
        format!(
            "INSERT INTO {table} (id, name, price, created_at, updated_at) \
             SELECT g, 'item ' || g, g % 1000, now(), now() FROM generate_series(1, {rows}) g"
        ),
        format!("UPDATE {table} SET price = price + 1, updated_at = now()"),
        format!("DELETE FROM {table}"),
    ];
    for (i, sql) in steps.iter().enumerate() {
        // What B shows once it has the statement's effect: the count, and for the UPDATE, which
        // leaves it alone, the sum of the prices it raises by one each.
        let (probe, want) = match i {
            0 => (total.clone(), rows),
            1 => {
                let sum = format!("SELECT coalesce(sum(price), 0)::bigint FROM {table}");
                let before = count(a, &sum);
                (sum, before + rows)
            }
            _ => (total.clone(), 0),
        };
        checkpoint(a, b);
        let started = Instant::now();
        a.batch_execute(sql).unwrap();
        writer[i] = started.elapsed().as_secs_f64() * 1000.0;
        if table == REPLICATED {
            wait_until(PATIENCE, || count(b, &probe) == want);
            on_b[i] = started.elapsed().as_secs_f64();
            same(a, b, table);
        }
    }
    (writer, on_b)
}

/// Empty `table` on both servers. The replicated table is truncated on A only and the TRUNCATE
/// travels (both alternatives replicate it); an empty one is left alone, since a TRUNCATE of
/// an empty table could not be seen to arrive and might still be on its way when the next
/// rows are.
fn reset(a: &mut Client, b: &mut Client, table: &str) {
    let sql = format!("SELECT count(*) FROM {table}");
    if count(a, &sql) > 0 {
        a.batch_execute(&format!("TRUNCATE {table}")).unwrap();
    }
    if table == UNLINKED {
        b.batch_execute(&format!("TRUNCATE {table}")).unwrap();
    }
    wait_until(PATIENCE, || count(b, &sql) == 0);
}

/// Every run starts with no dirty pages left from the one before, and none meets the timed
/// checkpoint that would otherwise land in whichever run it happens to fall.
fn checkpoint(a: &mut Client, b: &mut Client) {
    for c in [a, b] {
        c.batch_execute("CHECKPOINT").unwrap();
    }
}

/// B stopped the way a crash would, `backlog` single-row transactions committed on A, B started
/// again: the time from its restart until the last of them is applied there (s).
fn backlog_after_restart(s: &Servers, a: &mut Client, b: &mut Client, backlog: i64) -> f64 {
    reset(a, b, REPLICATED);
    s.b.stop_immediate();
    a.batch_execute(&format!(
        "DO $$ BEGIN FOR i IN 1..{backlog} LOOP
             INSERT INTO {REPLICATED} (name, price, created_at, updated_at) VALUES ('queued', 1, now(), now());
             COMMIT;
         END LOOP; END $$"
    ))
    .unwrap();
    s.b.start_again();
    let restarted = Instant::now();
    *b = s.b.connect(DB);
    let sql = format!("SELECT count(*) FROM {REPLICATED}");
    wait_until(PATIENCE, || count(b, &sql) == backlog);
    let took = restarted.elapsed().as_secs_f64();
    same(a, b, REPLICATED);
    took
}
