//! Real PostgreSQL clusters for synclink's end-to-end tests, and the helpers the tests share.
//!
//! [`Cluster`] runs initdb into a fresh directory, starts the server on a free loopback port
//! and stops it when dropped; a test that panics prints the tail of the server log. When the
//! tests run as root (CI does), the server runs as the `postgres` OS user, because initdb and
//! postgres refuse to run as root. The extension must already be installed into the
//! PostgreSQL the harness finds with `PG_CONFIG` (`make e2e` does that).
//!
//! A test asks for its two synclink nodes with [`Nodes`], naming the tier it needs:
//! [`Nodes::one_cluster`] (two databases of one server, enough for anything that happens
//! inside SQL sessions) or [`Nodes::two_clusters`] (a server each, for tests that stop, crash
//! or restart a node, run the background worker, or change server-wide settings). See
//! pgrx-tests/README.md.

use postgres::{Client, NoTls};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SYNC_PASSWORD: &str = "e2e-sync-pw-31337";

fn pg_bindir() -> PathBuf {
    let pg_config = std::env::var("PG_CONFIG")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    let out = Command::new(&pg_config)
        .arg("--bindir")
        .output()
        .expect("pg_config runs");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Run a server binary, as `postgres` when we are root.
fn run_pg(bin: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).output().expect("server binary runs")
}

/// A port for a new server, free when chosen. It lies below the kernel's range of ephemeral
/// ports: a port the kernel handed out for `127.0.0.1:0` could, by the time the server binds
/// it (or binds it again after a restart), be the local port of one of the many client
/// connections the tests, postgres_fdw and pgbench make. Servers started at once in one
/// process get different ports.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            r.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u32>().ok())
        })
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOWEST).max(1_000);
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = LOWEST + (start + NEXT.fetch_add(1, Ordering::SeqCst)) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port between {LOWEST} and {ephemeral}")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Cluster {
    pub name: String,
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    // Atomic so that a cluster shared by two nodes can still be stopped through either.
    running: AtomicBool,
}

impl Cluster {
    /// initdb and start a cluster. `extra_conf` lines are appended to postgresql.conf.
    pub fn start(name: &str, extra_conf: &[&str]) -> Cluster {
        let bin = pg_bindir();
        let dir = std::env::temp_dir().join(format!(
            "synclink-e2e-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst),
            name
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown postgres {}", dir.display());
        }
        let data = dir.join("data");
        let out = run_pg(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n\
             log_line_prefix = '%m [%p] %u@%d '\nlog_min_messages = warning\nmax_connections = 50\n",
            dir.display()
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf);
        // TCP, which postgres_fdw uses, asks for a password; the harness itself uses the socket.
        let hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
        let hba: String = hba
            .lines()
            .map(|l| {
                if l.starts_with("host") {
                    l.replace("trust", "scram-sha-256")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        write_as_pg(&data.join("pg_hba.conf"), &(hba + "\n"));
        let c = Cluster {
            name: name.into(),
            port,
            dir,
            bin,
            running: AtomicBool::new(false),
        };
        c.start_again();
        c
    }

    /// Superuser connection string over the Unix socket, for client threads.
    pub fn socket_conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir.display(),
            self.port
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    pub fn start_again(&self) {
        let out = run_pg(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                self.log_path().to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(40)
        );
        self.running.store(true, Ordering::SeqCst);
    }

    /// Stop the way a crash would: no shutdown checkpoint, connections cut.
    pub fn stop_immediate(&self) {
        run_pg(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        self.running.store(false, Ordering::SeqCst);
    }

    /// Directory holding the server's Unix socket, for clients such as pgbench.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    pub fn bindir(&self) -> &Path {
        &self.bin
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Write a file into the cluster's directory, readable by the server's OS user only
    /// (as libpq wants a password file); returns its path.
    pub fn write_private_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        write_as_pg(&path, text);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A superuser session over the Unix socket.
    pub fn connect(&self, db: &str) -> Client {
        let conn = self.socket_conninfo(db);
        let mut last = None;
        for _ in 0..50 {
            match Client::connect(&conn, NoTls) {
                Ok(c) => return c,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cannot connect to {}: {:?}", self.name, last);
    }

    pub fn connect_as(&self, db: &str, user: &str, password: &str) -> Client {
        let conn = format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db}",
            self.port
        );
        Client::connect(&conn, NoTls).unwrap_or_else(|e| panic!("connect as {user}: {e}"))
    }

    /// The libpq connection string another node uses to reach `db` here as the sync role.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={db} user=sync password={SYNC_PASSWORD}",
            self.port
        )
    }

    /// A database with synclink installed and the `sync` login role the peers connect as.
    pub fn create_db(&self, db: &str) -> Client {
        let mut admin = self.connect("postgres");
        admin
            .batch_execute(&format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sync') THEN \
                 CREATE ROLE sync LOGIN SUPERUSER PASSWORD '{SYNC_PASSWORD}'; END IF; END $$"
            ))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .unwrap();
        let mut c = self.connect(db);
        c.batch_execute("CREATE EXTENSION synclink").unwrap();
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- server log of {} (last 60 lines) ----\n{}\n----",
                self.name,
                self.log_tail(60)
            );
            // SYNCLINK_E2E_LOGS=<dir> keeps a failed test's whole server logs there.
            if let Some(dir) = std::env::var_os("SYNCLINK_E2E_LOGS") {
                let kept = Path::new(&dir).join(format!(
                    "{}-{}.log",
                    self.dir.file_name().unwrap_or_default().to_string_lossy(),
                    self.name
                ));
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::copy(self.log_path(), &kept);
            }
        }
        if self.running.load(Ordering::SeqCst) {
            self.stop_immediate();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn append(path: &Path, text: &str) {
    let mut current = std::fs::read_to_string(path).unwrap();
    current.push_str(text);
    write_as_pg(path, &current);
}

/// Files in the data directory stay owned by the server's user.
fn write_as_pg(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    if is_root() {
        Command::new("chown")
            .arg("postgres")
            .arg(path)
            .status()
            .unwrap();
    }
}

/// One synclink node: a database with synclink installed, in a cluster it may share with the
/// other node.
pub struct Node {
    cluster: Arc<Cluster>,
    /// The database's name; in one cluster the two nodes' databases differ, and synclink
    /// derives each node's name from it.
    pub db: String,
}

impl Node {
    /// A superuser session over the Unix socket.
    pub fn connect(&self) -> Client {
        self.cluster.connect(&self.db)
    }

    /// A session as `user`, over TCP with a password, as an application would connect.
    pub fn connect_as(&self, user: &str, password: &str) -> Client {
        self.cluster.connect_as(&self.db, user, password)
    }

    /// Superuser connection string over the Unix socket, for client threads.
    pub fn socket_conninfo(&self) -> String {
        self.cluster.socket_conninfo(&self.db)
    }

    /// The libpq connection string the other node uses to reach this one as the sync role.
    pub fn conninfo(&self) -> String {
        self.cluster.conninfo(&self.db)
    }

    pub fn port(&self) -> u16 {
        self.cluster.port
    }

    /// The cluster this node's database lives in (shared with the other node in the
    /// one-cluster tier).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Another node in this node's cluster: a new database with synclink, not yet peered.
    pub fn sibling(&self, db: &str) -> Node {
        self.cluster.create_db(db);
        Node {
            cluster: self.cluster.clone(),
            db: db.into(),
        }
    }

    /// Crash this node's server: no shutdown checkpoint, connections cut.
    pub fn stop_immediate(&self) {
        self.assert_alone();
        self.cluster.stop_immediate();
    }

    pub fn start_again(&self) {
        self.assert_alone();
        self.cluster.start_again();
    }

    // Stopping a node stops its whole cluster, and with it any node sharing it.
    fn assert_alone(&self) {
        assert_eq!(
            Arc::strong_count(&self.cluster),
            1,
            "node {} shares its cluster with another node: a test that stops a node needs \
             Nodes::two_clusters",
            self.db
        );
    }
}

/// The two nodes of a test, `a` and `b`. Each knows the other as peer "b" or "a" once
/// [`Nodes::peered`].
pub struct Nodes {
    pub a: Node,
    pub b: Node,
}

impl Nodes {
    /// Two databases, `shop_a` and `shop_b`, of one cluster, each its own node. Starting one
    /// server instead of two is what makes most tests quicker; roles, server settings, the
    /// server log and pg_stat_activity are shared, and neither node can be stopped.
    pub fn one_cluster() -> Nodes {
        let cluster = Arc::new(Cluster::start("ab", &[]));
        let node = |db: &str| {
            cluster.create_db(db);
            Node {
                cluster: cluster.clone(),
                db: db.into(),
            }
        };
        let (a, b) = (node("shop_a"), node("shop_b"));
        Nodes { a, b }
    }

    /// Two clusters with database `shop` each, started side by side; `extra_conf` lines go
    /// into both servers' postgresql.conf.
    pub fn two_clusters(extra_conf: &[&str]) -> Nodes {
        let node = |name: &'static str| {
            let conf: Vec<String> = extra_conf.iter().map(|s| s.to_string()).collect();
            move || {
                let refs: Vec<&str> = conf.iter().map(String::as_str).collect();
                let cluster = Cluster::start(name, &refs);
                cluster.create_db("shop");
                Node {
                    cluster: Arc::new(cluster),
                    db: "shop".into(),
                }
            }
        };
        let b = std::thread::spawn(node("b"));
        let a = node("a")();
        let b = b.join().expect("cluster b starts");
        Nodes { a, b }
    }

    /// Register the nodes with each other (peers "b" and "a"); returns a superuser session on
    /// each.
    pub fn peered(self) -> (Nodes, Client, Client) {
        let mut a = self.a.connect();
        let mut b = self.b.connect();
        a.execute("SELECT sync_add_peer('b', $1)", &[&self.b.conninfo()])
            .unwrap();
        b.execute("SELECT sync_add_peer('a', $1)", &[&self.a.conninfo()])
            .unwrap();
        (self, a, b)
    }
}

/// Run the same SQL on both nodes.
pub fn both(a: &mut Client, b: &mut Client, sql: &str) {
    a.batch_execute(sql).unwrap();
    b.batch_execute(sql).unwrap();
}

/// A digest of every row of `table` in the order of its `id` column: (rows, md5 of the rows'
/// text), for comparing two nodes' copies.
pub fn table_hash(c: &mut Client, table: &str) -> (i64, String) {
    table_hash_by(c, table, "t.id")
}

/// [`table_hash`] for a table keyed otherwise: `order` is an ORDER BY list over `t`.
pub fn table_hash_by(c: &mut Client, table: &str, order: &str) -> (i64, String) {
    let row = c
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY {order})), '') FROM {table} t"
            ),
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// Assert that both nodes hold the same rows of `table` (keyed by `id`); returns how many.
pub fn same(a: &mut Client, b: &mut Client, table: &str) -> i64 {
    let ha = table_hash(a, table);
    assert_eq!(
        ha,
        table_hash(b, table),
        "{table} differs between the nodes"
    );
    ha.0
}

/// The SQLSTATE, message, detail and hint of a failed statement.
pub fn db_error(e: postgres::Error) -> (String, String, String, String) {
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e}"));
    (
        d.code().code().to_string(),
        d.message().to_string(),
        d.detail().unwrap_or("").to_string(),
        d.hint().unwrap_or("").to_string(),
    )
}

/// The single bigint a query returns, e.g. a count.
pub fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// What the server said to a session: its NOTICE and WARNING messages, in order.
pub type Said = Arc<std::sync::Mutex<Vec<String>>>;

/// A session on `node` that keeps every notice and warning the server sends it.
pub fn listening(node: &Node) -> (Client, Said) {
    let said: Said = Arc::default();
    let kept = said.clone();
    let c = node
        .socket_conninfo()
        .parse::<postgres::Config>()
        .unwrap()
        .notice_callback(move |n| kept.lock().unwrap().push(n.message().to_string()))
        .connect(NoTls)
        .unwrap();
    (c, said)
}

/// Changes waiting in this node's outbox, for every peer, and records for several peers not
/// handed on to their queues yet.
pub fn queued(c: &mut Client) -> i64 {
    count(
        c,
        "SELECT (SELECT count(*) FROM synclink.outbox) + (SELECT count(*) FROM synclink.fanout)",
    )
}

/// Tables this node has linked (each link with one peer counts once).
pub fn links(c: &mut Client) -> i64 {
    count(c, "SELECT count(*) FROM synclink.link")
}

/// Deliver what this node has queued for every peer now (`sync_flush()`); returns how many
/// change records went.
pub fn flush(c: &mut Client) -> i64 {
    c.query_one("SELECT sync_flush()", &[]).unwrap().get(0)
}

/// Deliver what this node has queued for `peer` now; returns how many change records went.
pub fn flush_to(c: &mut Client, peer: &str) -> i64 {
    c.query_one("SELECT sync_flush($1)", &[&peer])
        .unwrap()
        .get(0)
}

/// This node's name, the origin its changes carry.
pub fn node_name(c: &mut Client) -> String {
    c.query_one("SELECT sync_node_name()", &[]).unwrap().get(0)
}

/// What sync_status shows of one link.
#[derive(Debug)]
pub struct Status {
    pub mode: String,
    pub direction: String,
    pub peer_reachable: bool,
    pub queued: i64,
    pub delivered: Option<i64>,
    pub last_error: Option<String>,
    pub problem: Option<String>,
    pub key: Vec<String>,
    pub excluded: Vec<String>,
}

/// The sync_status row of `table` (its only link).
pub fn status(c: &mut Client, table: &str) -> Status {
    let r = c
        .query_one(
            "SELECT mode, peer_reachable, queued, delivered, last_error, problem, key, excluded, \
                    direction \
               FROM sync_status WHERE \"table\" = $1::text::regclass",
            &[&table],
        )
        .unwrap();
    Status {
        mode: r.get(0),
        peer_reachable: r.get(1),
        queued: r.get(2),
        delivered: r.get(3),
        last_error: r.get(4),
        problem: r.get(5),
        key: r.get(6),
        excluded: r.get(7),
        direction: r.get(8),
    }
}

/// Delivery workers serving this session's database (the worker runs only where synclink is
/// in shared_preload_libraries).
pub fn delivery_workers(c: &mut Client) -> i64 {
    count(
        c,
        "SELECT count(*) FROM pg_stat_activity \
          WHERE backend_type = 'synclink delivery' AND datname = current_database()",
    )
}

/// Poll `check` until it holds or `limit` passes; returns how long it took.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "still not true after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// Wait until neither node has anything queued (delivery left to the worker).
pub fn wait_drained(a: &mut Client, b: &mut Client, limit: Duration) {
    wait_until(limit, || queued(a) == 0 && queued(b) == 0);
}

// ---- Upgrades: clusters on another PostgreSQL installation (tests/upgrade.rs) -------------

impl Cluster {
    /// initdb and start a cluster whose server runs from `bindir` instead of the system's
    /// PostgreSQL: a private installation such as scripts/released.sh lays out, with a
    /// released synclink in it. (initdb is the system's: the same PostgreSQL makes the same
    /// data directory.)
    pub fn start_on(bindir: &Path, name: &str, extra_conf: &[&str]) -> Cluster {
        let mut c = Cluster::start(name, extra_conf);
        c.stop();
        c.use_bindir(bindir);
        c.start_again();
        c
    }

    /// A clean shutdown, as for a package upgrade: sessions ended, a shutdown checkpoint.
    pub fn stop(&mut self) {
        let out = run_pg(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running.store(false, Ordering::SeqCst);
    }

    /// The server binaries the next start uses: another installation's bin directory.
    pub fn use_bindir(&mut self, bindir: &Path) {
        assert!(
            !self.running.load(Ordering::SeqCst),
            "{} is running: stop it first",
            self.name
        );
        self.bin = bindir.to_path_buf();
    }

    /// The system's PostgreSQL again, the one pg_config names (with the current synclink).
    pub fn use_system_bindir(&mut self) {
        self.use_bindir(&pg_bindir());
    }

    /// Lines appended to postgresql.conf, for the next start.
    pub fn append_conf(&self, lines: &[&str]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        append(&self.data().join("postgresql.conf"), &text);
    }
}

/// The bin directory of the private PostgreSQL installation running the released synclink
/// `version`, which `scripts/released.sh <version>` lays out under the target directory
/// (`make e2e` runs it first).
pub fn released_bindir(version: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    let note = target.join("released").join(version).join("bindir");
    match std::fs::read_to_string(&note) {
        Ok(dir) => PathBuf::from(dir.trim()),
        Err(e) => panic!(
            "no PostgreSQL with synclink {version} ({}: {e}): run `bash scripts/released.sh {version}` \
             first (`make e2e` does)",
            note.display()
        ),
    }
}
