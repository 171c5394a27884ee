//! Real PostgreSQL clusters for synclink's end-to-end tests.
//!
//! [`Cluster`] runs initdb into a fresh directory, starts the server on a free loopback port
//! and stops it when dropped; a test that panics prints the tail of the server log. When the
//! tests run as root (CI does), the server runs as the `postgres` OS user, because initdb and
//! postgres refuse to run as root. The extension must already be installed into the
//! PostgreSQL the harness finds with pg_config (`make test` does that).

use postgres::{Client, NoTls};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Cluster {
    pub name: String,
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    running: bool,
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
        let mut c = Cluster {
            name: name.into(),
            port,
            dir,
            bin,
            running: false,
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

    pub fn start_again(&mut self) {
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
        self.running = true;
    }

    /// Stop the way a crash would: no shutdown checkpoint, connections cut.
    pub fn stop_immediate(&mut self) {
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
        self.running = false;
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
        let conn = format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir.display(),
            self.port
        );
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
        }
        if self.running {
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

/// Two clusters, `a` and `b`, each with database `db` holding synclink, registered with each
/// other as peers "b" and "a".
pub struct Pair {
    pub a: Cluster,
    pub b: Cluster,
    pub db: String,
}

impl Pair {
    pub fn new(extra_conf: &[&str]) -> Pair {
        let conf: Vec<String> = extra_conf.iter().map(|s| s.to_string()).collect();
        let conf2 = conf.clone();
        let tb = std::thread::spawn(move || {
            let refs: Vec<&str> = conf2.iter().map(String::as_str).collect();
            Cluster::start("b", &refs)
        });
        let refs: Vec<&str> = conf.iter().map(String::as_str).collect();
        let a = Cluster::start("a", &refs);
        let b = tb.join().expect("cluster b starts");
        Pair {
            a,
            b,
            db: "shop".into(),
        }
    }

    /// Both databases created and registered with each other, but nothing linked yet.
    pub fn peered() -> (Pair, Client, Client) {
        Pair::peered_with(&[])
    }

    pub fn peered_with(extra_conf: &[&str]) -> (Pair, Client, Client) {
        let p = Pair::new(extra_conf);
        let mut ca = p.a.create_db(&p.db);
        let mut cb = p.b.create_db(&p.db);
        ca.execute("SELECT sync_add_peer('b', $1)", &[&p.b.conninfo(&p.db)])
            .unwrap();
        cb.execute("SELECT sync_add_peer('a', $1)", &[&p.a.conninfo(&p.db)])
            .unwrap();
        (p, ca, cb)
    }
}

/// Run the same DDL on both sides.
pub fn both(a: &mut Client, b: &mut Client, sql: &str) {
    a.batch_execute(sql).unwrap();
    b.batch_execute(sql).unwrap();
}

/// A digest of every row of `table`, in key order, that two databases can compare.
pub fn table_hash(c: &mut Client, table: &str, order: &str) -> (i64, String) {
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

/// Poll `check` until it holds or `limit` passes; returns how long it took.
pub fn wait_until(
    limit: std::time::Duration,
    mut check: impl FnMut() -> bool,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "still not true after {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    started.elapsed()
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
        self.running = false;
    }

    /// The server binaries the next start uses: another installation's bin directory.
    pub fn use_bindir(&mut self, bindir: &Path) {
        assert!(!self.running, "{} is running: stop it first", self.name);
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
