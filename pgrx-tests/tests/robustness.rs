//! What a careless DBA or a broken script does: NULLs, dropped tables, huge arguments,
//! damaged objects. Each gets a clear error (a real SQLSTATE, a message, a hint) or keeps
//! working, and nothing is left half-made.

use std::time::{Duration, Instant};
use synclink_e2e::{
    both, count, db_error, delivery_workers, flush, links, queued, status, table_hash, wait_until,
    Node, Nodes,
};

#[test]
fn nulls_and_dropped_tables_get_clear_errors() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(
        &mut a,
        &mut b,
        "CREATE TABLE t (id bigserial PRIMARY KEY, v text);
         CREATE TABLE gone (id int PRIMARY KEY);",
    );
    let gone: u32 = a
        .query_one("SELECT 'gone'::regclass::oid", &[])
        .unwrap()
        .get(0);
    a.batch_execute("DROP TABLE gone").unwrap();
    let null = "22004";
    let cases: Vec<(String, &str)> = vec![
        ("SELECT sync_add_peer(NULL, 'host=x')".into(), null),
        ("SELECT sync_add_peer('x', NULL)".into(), null),
        ("SELECT sync_drop_peer(NULL)".into(), null),
        ("SELECT sync_drop_peer('b', NULL)".into(), null),
        ("SELECT sync_link_table(NULL)".into(), null),
        ("SELECT sync_link_table('t', mode => NULL)".into(), null),
        ("SELECT sync_link_table('t', copy => NULL)".into(), null),
        ("SELECT sync_link_table('t', conflict => NULL)".into(), null),
        (
            "SELECT sync_link_table('t', key => ARRAY[NULL]::text[])".into(),
            null,
        ),
        (
            "SELECT sync_link_table('t', exclude => ARRAY['v', NULL])".into(),
            null,
        ),
        ("SELECT sync_unlink_table(NULL)".into(), null),
        (
            "SELECT sync_unlink_table('t', discard_queued => NULL)".into(),
            null,
        ),
        ("SELECT sync_share_sequence(NULL)".into(), null),
        (
            "SELECT sync_share_sequence('t_id_seq', strategy => NULL)".into(),
            null,
        ),
        ("SELECT sync_unshare_sequence(NULL)".into(), null),
        ("SELECT * FROM sync_diff(NULL)".into(), null),
        ("SELECT sync_reconcile(NULL)".into(), null),
        ("SELECT sync_reconcile('t', prefer => NULL)".into(), null),
        ("SELECT sync_resolve(NULL, 'local')".into(), null),
        ("SELECT sync_resolve(1, NULL)".into(), null),
        ("SELECT sync_set_node_name(NULL)".into(), null),
        (format!("SELECT sync_link_table({gone}::regclass)"), "42P01"),
        (
            format!("SELECT sync_unlink_table({gone}::regclass)"),
            "42P01",
        ),
        (
            format!("SELECT * FROM sync_diff({gone}::regclass)"),
            "42P01",
        ),
        (format!("SELECT sync_reconcile({gone}::regclass)"), "42P01"),
        (
            format!("SELECT sync_share_sequence({gone}::regclass)"),
            "42P01",
        ),
        (
            format!("SELECT sync_unshare_sequence({gone}::regclass)"),
            "42P01",
        ),
    ];
    for (sql, expected) in &cases {
        let (code, message, _, hint) = db_error(a.batch_execute(sql).unwrap_err());
        assert_eq!(&code, expected, "{sql}: {message}");
        assert!(!hint.is_empty(), "{sql}: no hint for {message}");
        assert!(
            !message.contains("unwrap") && !message.contains("panicked"),
            "{message}"
        );
    }
    assert_eq!(links(&mut a), 0);
    assert_eq!(links(&mut b), 0);
}

#[test]
fn an_open_conflict_of_an_unlinked_table_is_closed_not_left_open() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(
        &mut a,
        &mut b,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'start')",
    );
    a.execute(
        "SELECT sync_link_table('t', mode => 'async', conflict => 'manual')",
        &[],
    )
    .unwrap();
    a.batch_execute("UPDATE t SET v = 'a'").unwrap();
    b.batch_execute("UPDATE t SET v = 'b'").unwrap();
    flush(&mut a);
    let id: i64 = b
        .query_one(
            "SELECT conflict_id FROM synclink.conflict WHERE outcome = 'open'",
            &[],
        )
        .unwrap()
        .get(0);
    b.execute("SELECT sync_unlink_table('t', discard_queued => true)", &[])
        .unwrap();
    assert_eq!(count(&mut b, "SELECT count(*) FROM sync_conflicts"), 0);
    let (code, message, _, hint) = db_error(
        b.execute("SELECT sync_resolve($1, 'local')", &[&id])
            .unwrap_err(),
    );
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("is unlinked, not open"), "{message}");
    assert!(!hint.is_empty());
}

#[test]
fn oversized_and_secret_input_is_not_echoed() {
    let (_nodes, mut a, _b) = Nodes::one_cluster().peered();
    let huge = "x".repeat(1 << 20);
    for sql in [
        "SELECT sync_add_peer($1, 'host=x')",
        "SELECT sync_drop_peer($1)",
        "SELECT sync_set_node_name($1)",
        "SELECT sync_link_table('pg_class', peer => $1)",
    ] {
        let (code, message, detail, _) = db_error(a.execute(sql, &[&huge]).unwrap_err());
        assert_ne!(code, "XX000", "{sql}");
        assert!(
            message.len() + detail.len() < 400,
            "{sql}: {} bytes echoed",
            message.len()
        );
    }
    // A password with a space, left unquoted, or a stray word: none of it reaches the
    // message (the last one is a valid string whose server cannot be reached).
    for (conninfo, expected) in [
        (
            "host=127.0.0.1 user=sync password=open sesame dbname=shop",
            "22023",
        ),
        ("sesame", "22023"),
        ("host=127.0.0.1 port=1 password=sesame=open", "08001"),
    ] {
        let (code, message, detail, hint) = db_error(
            a.execute("SELECT sync_add_peer('c', $1)", &[&conninfo])
                .unwrap_err(),
        );
        assert_eq!(code, expected, "{conninfo}: {message}");
        for shown in [&message, &detail, &hint] {
            assert!(!shown.contains("sesame"), "{conninfo}: {shown}");
        }
    }
}

/// Both nodes have the table, each with its own kind of types.
fn typed(a: &mut postgres::Client, b: &mut postgres::Client, columns_a: &str, columns_b: &str) {
    a.batch_execute(&format!("CREATE TABLE t (id int PRIMARY KEY, {columns_a})"))
        .unwrap();
    b.batch_execute(&format!("CREATE TABLE t (id int PRIMARY KEY, {columns_b})"))
        .unwrap();
}

#[test]
fn types_that_would_round_or_cut_values_are_refused_at_link_time() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    a.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN price AS numeric(10,2);",
    )
    .unwrap();
    b.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE DOMAIN price AS numeric(6,0);",
    )
    .unwrap();
    typed(
        &mut a,
        &mut b,
        "amount numeric(10,2), at timestamp(6), code varchar(255), tags varchar(10)[], m mood,
         p price, plain text, stamp timestamp, other numeric",
        "amount numeric(6,0), at timestamp(0), code varchar(3), tags varchar(5)[], m mood,
         p price, plain varchar, stamp timestamp(6), other numeric",
    );
    let (code, message, detail, hint) =
        db_error(a.batch_execute("SELECT sync_link_table('t')").unwrap_err());
    assert_eq!(code, "42804", "{message}");
    assert!(message.contains("has different columns"), "{message}");
    for expected in [
        "\"amount\" is numeric(6,0) here but numeric(10,2) on the other side",
        "\"at\" is timestamp(0) without time zone here but timestamp without time zone",
        "\"code\" is character varying(3) here but character varying(255)",
        "\"tags\" is character varying(5)[] here but character varying(10)[]",
        "\"m\" is public.mood with labels ('ok', 'sad') here but public.mood with labels ('happy', 'ok', 'sad')",
        "\"p\" is numeric(6,0) here but numeric(10,2)",
    ] {
        assert!(detail.contains(expected), "{expected} not in {detail}");
    }
    for fine in ["\"plain\"", "\"stamp\"", "\"other\""] {
        assert!(!detail.contains(fine), "{fine} in {detail}");
    }
    assert!(detail.contains("round, cut or refuse"), "{detail}");
    assert!(!hint.is_empty());
    for c in [&mut a, &mut b] {
        assert_eq!(links(c), 0);
        assert_eq!(
            count(
                c,
                "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'synclink%'"
            ),
            0
        );
    }
    // the same types under other spellings link, and values arrive whole
    both(
        &mut a,
        &mut b,
        "DROP TABLE t; CREATE TABLE t (id int PRIMARY KEY, amount numeric(10,2), at timestamp(6))",
    );
    b.batch_execute("ALTER TABLE t ALTER COLUMN at TYPE timestamp")
        .unwrap();
    a.execute("SELECT sync_link_table('t')", &[]).unwrap();
    a.batch_execute("INSERT INTO t VALUES (1, 1234.56, '2026-01-02 03:04:05.123456')")
        .unwrap();
    let row: String = b
        .query_one("SELECT amount::text || ' ' || at::text FROM t", &[])
        .unwrap()
        .get(0);
    assert_eq!(row, "1234.56 2026-01-02 03:04:05.123456");
}

#[test]
fn tables_a_link_cannot_serve_are_refused() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(
        &mut a,
        &mut b,
        "CREATE TABLE base (id int PRIMARY KEY, v text);
         CREATE VIEW v AS SELECT * FROM base;
         CREATE TABLE odd (id int PRIMARY KEY, \"synclink$at\" bigint, \"synclink$origin\" text);
         CREATE TABLE gen (a int NOT NULL, id int GENERATED ALWAYS AS (a * 2) STORED PRIMARY KEY);
         CREATE TABLE orders (id int, region text, amount int, PRIMARY KEY (region, id))
             PARTITION BY LIST (region);
         CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
         CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN ('us');
         CREATE TABLE guarded (id int PRIMARY KEY, v text);
         ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;",
    );
    a.batch_execute("CREATE TEMP TABLE scratch (id int PRIMARY KEY)")
        .unwrap();
    for (sql, expected, words) in [
        ("SELECT sync_link_table('v')", "42809", "is a view"),
        (
            "SELECT sync_link_table('scratch')",
            "42809",
            "is a temporary table",
        ),
        (
            "SELECT sync_link_table('synclink.outbox')",
            "0A000",
            "belongs to synclink",
        ),
        (
            "SELECT sync_link_table('pg_class')",
            "0A000",
            "belongs to synclink or to the system",
        ),
        (
            "SELECT sync_link_table('odd')",
            "42939",
            "names synclink reserves",
        ),
        (
            "SELECT sync_link_table('gen')",
            "42P16",
            "is a generated column",
        ),
        // A partition's rows change through the parent and through the partition, and a
        // statement trigger on either sees only its own statements.
        (
            "SELECT sync_link_table('orders')",
            "42809",
            "is a partitioned table",
        ),
        (
            "SELECT sync_link_table('orders_eu')",
            "42809",
            "is a partition",
        ),
        (
            "SELECT sync_link_table('guarded')",
            "0A000",
            "has row-level security",
        ),
    ] {
        let (code, message, _, hint) = db_error(a.batch_execute(sql).unwrap_err());
        assert_eq!(code, expected, "{sql}: {message}");
        assert!(message.contains(words), "{sql}: {message}");
        assert!(!hint.is_empty(), "{sql}");
    }
    assert_eq!(links(&mut a), 0);
    assert_eq!(links(&mut b), 0);
}

#[test]
fn a_sync_write_never_waits_on_the_peer_beyond_its_bound() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(
        &mut a,
        &mut b,
        "CREATE TABLE products (id int PRIMARY KEY, name text)",
    );
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    // Changes from A wait up to a minute for locks on B, from new connections on. (Roles are
    // the cluster's: the setting is made for B's database only.)
    let on_b = format!("ALTER ROLE sync IN DATABASE {}", nodes.b.db);
    b.batch_execute(&format!("{on_b} SET synclink.apply_lock_timeout = '60s'"))
        .unwrap();
    let mut holder = nodes.b.connect();
    holder
        .batch_execute("BEGIN; LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let fresh = || {
        let mut c = nodes.a.connect();
        c.batch_execute("SET synclink.retry_interval = 0").unwrap();
        c
    };

    // The user's own statement_timeout cancels the wait as any statement's: 57014.
    let mut a1 = fresh();
    a1.batch_execute("SET synclink.sync_timeout = 0; SET statement_timeout = '1s'")
        .unwrap();
    let (code, message, _, _) = db_error(
        a1.batch_execute("INSERT INTO products VALUES (1, 'one')")
            .unwrap_err(),
    );
    assert_eq!(code, "57014", "{message}");
    assert_eq!(queued(&mut a), 0);

    // synclink.sync_timeout ends the wait: the change is queued, the write commits.
    let mut a2 = fresh();
    a2.batch_execute("SET synclink.sync_timeout = '1500ms'")
        .unwrap();
    let started = Instant::now();
    a2.batch_execute("INSERT INTO products VALUES (2, 'two')")
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    assert_eq!(queued(&mut a), 1);
    let reason: String = a
        .query_one("SELECT reason FROM synclink.outbox", &[])
        .unwrap()
        .get(0);
    assert!(
        reason.contains("synclink.sync_timeout (1500 ms)"),
        "{reason}"
    );
    let last_error = status(&mut a, "products").last_error.expect("last_error");
    assert!(last_error.contains("sync_timeout"), "{last_error}");

    // The receiving node's own bound (1 s by default) ends it sooner: the queued change
    // the writer delivers first meets the lock, and this one queues behind it.
    b.batch_execute(&format!("{on_b} RESET synclink.apply_lock_timeout"))
        .unwrap();
    let mut a3 = fresh();
    let started = Instant::now();
    a3.batch_execute("INSERT INTO products VALUES (3, 'three')")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(queued(&mut a), 2);

    holder.batch_execute("COMMIT").unwrap();
    flush(&mut a);
    assert_eq!(count(&mut b, "SELECT count(*) FROM products"), 2);
}

/// Run `script` with pgbench on `c` for `secs` seconds; returns (transactions, the longest
/// transaction's latency). Panics if pgbench runs on well past its time, as it would if a
/// transaction hung.
fn pgbench(node: &Node, script: &str, secs: u64, clients: u32) -> (u64, Duration) {
    let c = node.cluster();
    let dir = std::env::temp_dir().join(format!(
        "synclink-pgbench-{}-{}-{}",
        std::process::id(),
        c.port,
        node.db
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("script.sql");
    std::fs::write(&file, script).unwrap();
    let mut child = std::process::Command::new(c.bindir().join("pgbench"))
        .args(["-n", "-M", "simple", "-h"])
        .arg(c.socket_dir())
        .args([
            "-p",
            &c.port.to_string(),
            "-U",
            "postgres",
            "-c",
            &clients.to_string(),
        ])
        .args([
            "-T",
            &secs.to_string(),
            "-l",
            "--aggregate-interval",
            &secs.to_string(),
        ])
        .arg("--log-prefix")
        .arg(dir.join("log"))
        .arg("-f")
        .arg(&file)
        .arg(&node.db)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pgbench runs");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(secs + 60) {
            let _ = child.kill();
            panic!(
                "pgbench on {} still running {} s after its end: a transaction hangs",
                c.name, 60
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // aggregate log lines: start, transactions, sum, sum of squares, min, max (µs), …
    let (mut transactions, mut longest) = (0, 0u64);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("log")
        {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let f: Vec<u64> = line
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() >= 6 {
                transactions += f[1];
                longest = longest.max(f[5]);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    (transactions, Duration::from_micros(longest))
}

#[test]
fn same_row_sync_writes_on_both_nodes_finish_and_converge_under_every_policy() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    let policies = ["last_write_wins", "prefer_local", "prefer_peer", "manual"];
    for (i, _) in policies.iter().enumerate() {
        both(
            &mut a,
            &mut b,
            &format!(
                "CREATE TABLE t{i} (id int PRIMARY KEY, v int NOT NULL);
                 INSERT INTO t{i} SELECT g, 0 FROM generate_series(1, 8) g;"
            ),
        );
    }
    for (i, policy) in policies.iter().enumerate() {
        a.execute(
            &format!("SELECT sync_link_table('t{i}', conflict => '{policy}')"),
            &[],
        )
        .unwrap();
    }
    // Every transaction writes the same few rows on both nodes, in the four tables: each is
    // a distributed deadlock waiting to happen.
    let script = "\\set k random(1, 8)\n\
                  BEGIN;\n\
                  UPDATE t0 SET v = v + 1 WHERE id = :k;\n\
                  UPDATE t1 SET v = v + 1 WHERE id = :k;\n\
                  UPDATE t2 SET v = v + 1 WHERE id = :k;\n\
                  UPDATE t3 SET v = v + 1 WHERE id = :k;\n\
                  END;\n";
    let secs = 30;
    let node_b = &nodes.b;
    let (on_a, on_b) = std::thread::scope(|s| {
        let on_b = s.spawn(|| pgbench(node_b, script, secs, 2));
        let on_a = pgbench(&nodes.a, script, secs, 2);
        (on_a, on_b.join().unwrap())
    });
    eprintln!("A: {on_a:?}, B: {on_b:?}");
    assert!(
        on_a.0 > 0 && on_b.0 > 0,
        "both nodes got work done: {on_a:?} {on_b:?}"
    );
    // Each of a transaction's four writes waits on the peer for at most the bound (the
    // receiver's 1 s lock timeout; synclink.sync_timeout bounds the rest), plus what it waits for the other
    // local client's transaction, bounded likewise.
    for (node, (_, longest)) in [("A", on_a), ("B", on_b)] {
        assert!(
            longest < Duration::from_secs(45),
            "{node}: a transaction took {longest:?}"
        );
    }
    // Deliver what was queued, both ways, until nothing moves; settle manual conflicts.
    for _ in 0..20 {
        let moved: i64 = [&mut a, &mut b].into_iter().map(flush).sum();
        if moved == 0 {
            break;
        }
    }
    for c in [&mut a, &mut b] {
        assert_eq!(queued(c), 0);
        c.batch_execute(
            "SELECT sync_resolve(conflict_id, 'local') FROM synclink.conflict
              WHERE outcome = 'open' ORDER BY conflict_id",
        )
        .unwrap();
    }
    for (i, policy) in policies.iter().enumerate() {
        let table = format!("t{i}");
        assert_eq!(
            table_hash(&mut a, &table),
            table_hash(&mut b, &table),
            "{policy}"
        );
    }
}

#[test]
fn synclinks_objects_go_the_way_they_came_and_damage_is_reported_and_survived() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(
        &mut a,
        &mut b,
        "CREATE SCHEMA app; CREATE TABLE app.products (id int PRIMARY KEY, name text);",
    );
    a.execute("SELECT sync_link_table('app.products')", &[])
        .unwrap();
    let function: String = a
        .query_one("SELECT capture_function FROM synclink.link", &[])
        .unwrap()
        .get(0);
    // Dropping what synclink made, by hand, is refused.
    for sql in [
        "DROP SERVER synclink_b CASCADE".to_string(),
        "DROP USER MAPPING FOR PUBLIC SERVER synclink_b".to_string(),
        "DROP FOREIGN TABLE synclink.b_inbox".to_string(),
        "DROP TRIGGER synclink_insert ON app.products".to_string(),
        format!("DROP FUNCTION {function}() CASCADE"),
    ] {
        let (code, message, _, hint) = db_error(a.batch_execute(&sql).unwrap_err());
        assert_eq!(code, "2BP01", "{sql}: {message}");
        assert!(message.contains("synclink uses it"), "{sql}: {message}");
        assert!(hint.contains("sync_unlink_table"), "{hint}");
    }
    // Renaming the schema of a linked table is refused like renaming the table.
    let (code, message, _, _) = db_error(
        a.batch_execute("ALTER SCHEMA app RENAME TO shop")
            .unwrap_err(),
    );
    assert_eq!(code, "55006", "{message}");
    assert_eq!(status(&mut a, "app.products").problem, None);

    // Disabling a capture trigger is the DBA's right, said out loud and kept in sync_status.
    a.batch_execute("ALTER TABLE app.products DISABLE TRIGGER synclink_insert")
        .unwrap();
    let shown = status(&mut a, "app.products").problem.expect("a problem");
    assert!(
        shown.contains("synclink_insert is disabled") && shown.contains("ENABLE TRIGGER"),
        "{shown}"
    );
    a.batch_execute("ALTER TABLE app.products ENABLE TRIGGER synclink_insert")
        .unwrap();
    assert_eq!(status(&mut a, "app.products").problem, None);

    // Damage done past the guard (event triggers off): writes are kept, the damage is
    // reported, and every way out still works.
    a.batch_execute(
        "ALTER EVENT TRIGGER synclink_guard_drops DISABLE;
         DROP SERVER synclink_b CASCADE;
         ALTER EVENT TRIGGER synclink_guard_drops ENABLE ALWAYS;",
    )
    .unwrap();
    let mut writer = nodes.a.connect();
    writer
        .batch_execute("INSERT INTO app.products VALUES (1, 'kept')")
        .unwrap();
    assert_eq!(queued(&mut a), 1);
    let shown = status(&mut a, "app.products").problem.expect("a problem");
    assert!(
        shown.contains("foreign server synclink_b of peer 'b' is missing"),
        "{shown}"
    );
    let (code, message, _, _) = db_error(
        a.batch_execute("SELECT sync_drop_peer('b', cascade => true)")
            .unwrap_err(),
    );
    assert_eq!(
        code, "2BP01",
        "queued changes are not dropped quietly: {message}"
    );
    a.execute(
        "SELECT sync_unlink_table('app.products', discard_queued => true)",
        &[],
    )
    .unwrap();
    a.execute("SELECT sync_drop_peer('b')", &[]).unwrap();
    a.batch_execute("DROP EXTENSION synclink").unwrap();
    assert_eq!(
        count(
            &mut a,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'synclink%'"
        ),
        0
    );
}

#[test]
fn one_delivery_worker_per_database_after_a_crash() {
    let (nodes, mut a, mut b) =
        Nodes::two_clusters(&["shared_preload_libraries = 'synclink'"]).peered();
    both(&mut a, &mut b, "CREATE TABLE t (id int PRIMARY KEY)");
    a.execute("SELECT sync_link_table('t', mode => 'async')", &[])
        .unwrap();
    wait_until(Duration::from_secs(20), || delivery_workers(&mut a) == 1);
    // A backend killed hard: the postmaster resets every process and starts over.
    let pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    drop(a);
    std::thread::sleep(Duration::from_secs(2));
    let mut a = nodes.a.connect();
    wait_until(Duration::from_secs(30), || delivery_workers(&mut a) >= 1);
    // Longer than the launcher's restart and the workers' old restart interval together.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(delivery_workers(&mut a), 1);
    a.batch_execute("INSERT INTO t VALUES (1)").unwrap();
    wait_until(Duration::from_secs(20), || {
        count(&mut b, "SELECT count(*) FROM t") == 1
    });
    // Nothing a SQL session takes keeps the worker out: with the worker gone and every
    // advisory lock a role might guess held, its successor still serves the database.
    let mut squatter = nodes.a.connect();
    squatter
        .batch_execute(
            "SELECT pg_advisory_lock(hashtext('synclink delivery worker'));
             SELECT pg_advisory_lock(hashtext('synclink delivery'));",
        )
        .unwrap();
    a.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE backend_type = 'synclink delivery' AND datname = current_database()",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    wait_until(Duration::from_secs(20), || delivery_workers(&mut a) == 1);
    a.batch_execute("INSERT INTO t VALUES (2)").unwrap();
    wait_until(Duration::from_secs(20), || {
        count(&mut b, "SELECT count(*) FROM t") == 2
    });
    assert_eq!(delivery_workers(&mut a), 1);
}

#[test]
fn a_child_never_reaches_the_peer_before_its_parent() {
    let (nodes, mut a, mut b) =
        Nodes::two_clusters(&["shared_preload_libraries = 'synclink'"]).peered();
    both(
        &mut a,
        &mut b,
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent);
         CREATE TABLE noise (id serial PRIMARY KEY, v text);",
    );
    for t in ["parent", "child", "noise"] {
        a.execute(
            &format!("SELECT sync_link_table('{t}', mode => 'async')"),
            &[],
        )
        .unwrap();
    }
    let failed = |c: &mut postgres::Client| count(c, "SELECT failed FROM synclink.peer_state");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (node_a, node_b) = (&nodes.a, &nodes.b);
    let stop = &stop;
    std::thread::scope(|s| {
        // Load: a stream of unrelated commits, and writers each committing a parent and then,
        // in a transaction of its own, a child of it.
        let noise = s.spawn(move || {
            let mut c = node_a.connect();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.batch_execute("INSERT INTO noise (v) VALUES ('x')")
                    .unwrap();
            }
        });
        let writers: Vec<_> = (0..3)
            .map(|w| {
                s.spawn(move || {
                    let mut c = node_a.connect();
                    for i in 0..200 {
                        let id = 10_000 + w * 1000 + i;
                        c.execute("INSERT INTO parent VALUES ($1)", &[&id]).unwrap();
                        c.execute("INSERT INTO child VALUES ($1, $1)", &[&id])
                            .unwrap();
                    }
                })
            })
            .collect();
        // And the case itself, on purpose: a parent's transaction holds its seq while a later
        // change is delivered; it commits, and a child follows at once.
        let mut late = node_a.connect();
        let mut other = node_a.connect();
        let mut b2 = node_b.connect();
        for round in 0..5 {
            let (parent, child) = (round * 2 + 1, round * 2 + 2);
            late.batch_execute(&format!("BEGIN; INSERT INTO parent VALUES ({parent})"))
                .unwrap();
            other
                .batch_execute(&format!("INSERT INTO parent VALUES ({child})"))
                .unwrap();
            wait_until(Duration::from_secs(20), || {
                count(
                    &mut b2,
                    &format!("SELECT count(*) FROM parent WHERE id = {child}"),
                ) == 1
            });
            late.batch_execute("COMMIT").unwrap();
            other
                .batch_execute(&format!("INSERT INTO child VALUES ({child}, {parent})"))
                .unwrap();
        }
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        noise.join().unwrap();
    });
    wait_until(Duration::from_secs(60), || {
        count(&mut b, "SELECT count(*) FROM child") == 605
    });
    assert_eq!(
        failed(&mut a),
        0,
        "a delivery failed: {:?}",
        a.query_one("SELECT last_error FROM synclink.peer_state", &[])
            .unwrap()
            .get::<_, Option<String>>(0)
    );
}

#[test]
fn a_statement_of_a_dozen_50_mb_rows_is_replicated() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(
        &mut a,
        &mut b,
        "CREATE TABLE docs (id int PRIMARY KEY, body text);
         CREATE TABLE queued_docs (id int PRIMARY KEY, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         ALTER TABLE queued_docs ALTER COLUMN body SET STORAGE EXTERNAL;",
    );
    a.execute("SELECT sync_link_table('docs')", &[]).unwrap();
    a.execute(
        "SELECT sync_link_table('queued_docs', mode => 'async')",
        &[],
    )
    .unwrap();
    // Each row's text differs, so nothing is shared between them: 600 MB in one statement
    // (a single change record of them would pass PostgreSQL's 1 GB limits on the way), and
    // 200 MB queued (more than one delivery statement may carry).
    let big = |n: i32| {
        format!(
            "SELECT g, repeat(md5(g::text), 50 * 1024 * 1024 / 32) FROM generate_series(1, {n}) g"
        )
    };
    let started = Instant::now();
    a.batch_execute(&format!("INSERT INTO docs {}", big(12)))
        .unwrap();
    eprintln!("sync statement: {:?}", started.elapsed());
    a.batch_execute(&format!("INSERT INTO queued_docs {}", big(4)))
        .unwrap();
    assert_eq!(queued(&mut a), 4);
    flush(&mut a);
    eprintln!("with the queued ones: {:?}", started.elapsed());
    for (t, n) in [("docs", 12), ("queued_docs", 4)] {
        let sizes = format!("SELECT sum(length(body))::bigint FROM {t}");
        assert_eq!(count(&mut b, &sizes), n * 50 * 1024 * 1024, "{t}");
    }
    let digest = |c: &mut postgres::Client| {
        c.query_one(
            "SELECT md5(string_agg(md5(body), ',' ORDER BY id)) FROM (TABLE docs UNION ALL TABLE queued_docs) d",
            &[],
        )
        .unwrap()
        .get::<_, String>(0)
    };
    assert_eq!(digest(&mut a), digest(&mut b));
}

/// A peer's table analyzed while empty (a new table, or autovacuum after a mass delete) must
/// not make the apply scan the whole table once per key as it fills: the apply's plans are
/// kept for the session, so a plan chosen for an empty table would be quadratic. The index
/// entries the peer reads show which plan ran, with no timing involved.
#[test]
fn a_table_analyzed_empty_is_applied_key_by_key_as_it_fills() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(
        &mut a,
        &mut b,
        "CREATE TABLE t (id bigint PRIMARY KEY, v text)",
    );
    a.batch_execute("SELECT sync_link_table('t')").unwrap();
    let versions: String = b
        .query_one("SELECT version_table FROM synclink.link", &[])
        .unwrap()
        .get(0);
    b.batch_execute(&format!("ANALYZE t; ANALYZE {versions}"))
        .unwrap();
    let rows = 20_000i64;
    a.batch_execute(&format!(
        "INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, {rows}) i;
         UPDATE t SET v = v || '!';"
    ))
    .unwrap();
    assert_eq!(queued(&mut a), 0, "sync mode sent every change");
    assert_eq!(table_hash(&mut a, "t"), table_hash(&mut b, "t"));
    // Looked up key by key, an existing row's index entry is read twice (locked, then
    // compared) and a new key's not at all. A plan made for the empty table reads the whole
    // index once per record instead, and matches each entry against every row of the record
    // (the quadratic part, which no counter shows): 270,000 entries here. A backend reports
    // its statistics once it is idle, within seconds.
    let read = |b: &mut postgres::Client| {
        b.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
        count(
            b,
            "SELECT coalesce(sum(idx_tup_read), 0)::bigint FROM pg_stat_user_indexes WHERE relname = 't'",
        )
    };
    wait_until(Duration::from_secs(30), || read(&mut b) >= rows);
    let entries = read(&mut b);
    assert!(
        (rows..=3 * rows).contains(&entries),
        "the peer read {entries} index entries of t to apply {rows} inserts and {rows} updates"
    );
}
