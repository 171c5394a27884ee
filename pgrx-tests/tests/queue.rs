//! No change is ever lost: while the peer is away changes queue, in order, and are delivered
//! once in effect when it is back.

use std::time::{Duration, Instant};
use synclink_e2e::{
    both, count, db_error, flush, flush_to, links, listening, queued, same, status, table_hash,
    wait_until, Nodes,
};

const T: &str = "CREATE TABLE t (id int PRIMARY KEY, v text)";

/// Make every commit on `c`'s server wait for a synchronous standby that does not exist, or
/// let them through again.
fn hold_commits(c: &mut postgres::Client, hold: bool) {
    c.batch_execute(if hold {
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'"
    } else {
        "ALTER SYSTEM RESET synchronous_standby_names"
    })
    .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
}

/// Wait until a session on `c`'s server waits for `event` (a pg_stat_activity wait_event).
fn one_session_waits(c: &mut postgres::Client, event: &str) {
    // (in this session's database only: in one cluster the other node's sessions show too)
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity \
          WHERE wait_event = '{event}' AND datname = current_database()"
    );
    wait_until(Duration::from_secs(30), || count(c, &sql) == 1);
}

#[test]
fn writes_while_the_peer_is_down_are_queued_and_delivered_in_order() {
    let (nodes, mut a, mut b) = Nodes::two_clusters(&[]).peered();
    both(&mut a, &mut b, T);
    a.execute("SELECT sync_link_table('t')", &[]).unwrap();
    a.execute("INSERT INTO t VALUES (1, 'before')", &[])
        .unwrap();
    nodes.b.stop_immediate();

    let started = Instant::now();
    for sql in [
        "INSERT INTO t VALUES (2, 'v0')",
        "UPDATE t SET v = 'v1' WHERE id = 2",
        "UPDATE t SET v = 'v2' WHERE id = 2",
        "INSERT INTO t SELECT g, 'bulk' FROM generate_series(3, 12002) g",
        "DELETE FROM t WHERE id BETWEEN 5 AND 104",
        "UPDATE t SET id = -id WHERE id BETWEEN 200 AND 299",
    ] {
        a.execute(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "writers did not wait on the dead peer: {:?}",
        started.elapsed()
    );
    let down = status(&mut a, "t");
    assert!(!down.peer_reachable);
    let backlog = down.queued;
    assert!(backlog >= 6, "queued {backlog}");
    assert!(
        down.last_error
            .unwrap_or_default()
            .contains("could not connect"),
        "last_error names the cause"
    );

    // queued changes are never dropped quietly
    let (code, message, _, hint) = db_error(
        a.batch_execute("SELECT sync_unlink_table('t')")
            .unwrap_err(),
    );
    assert_eq!(code, "55006", "{message}");
    assert!(
        hint.contains("sync_flush") && hint.contains("discard_queued"),
        "{hint}"
    );
    let (code, _, _, _) = db_error(
        a.batch_execute("SELECT sync_drop_peer('b', cascade => true)")
            .unwrap_err(),
    );
    assert_eq!(code, "2BP01");

    nodes.b.start_again();
    let mut b = nodes.b.connect();
    let delivered = flush_to(&mut a, "b");
    assert_eq!(delivered, backlog);
    assert_eq!(same(&mut a, &mut b, "t"), 11_902);
    let v: String = b
        .query_one("SELECT v FROM t WHERE id = 2", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "v2", "updates to one row arrive in order");
    let back = status(&mut a, "t");
    assert_eq!((back.peer_reachable, back.queued), (true, 0));
    assert!(back.delivered.expect("delivered") >= delivered);

    // and the link works directly again
    a.execute("INSERT INTO t VALUES (20000, 'after')", &[])
        .unwrap();
    assert_eq!(queued(&mut a), 0);
    same(&mut a, &mut b, "t");
}

#[test]
fn the_next_write_after_the_peer_returns_delivers_the_queue_first() {
    let (nodes, mut a, mut b) = Nodes::two_clusters(&[]).peered();
    both(&mut a, &mut b, T);
    a.execute("SELECT sync_link_table('t')", &[]).unwrap();
    a.batch_execute("SET synclink.retry_interval = 0").unwrap();
    nodes.b.stop_immediate();
    a.execute(
        "INSERT INTO t SELECT g, 'queued' FROM generate_series(1, 50) g",
        &[],
    )
    .unwrap();
    a.execute("UPDATE t SET v = 'changed' WHERE id <= 10", &[])
        .unwrap();
    assert_eq!(queued(&mut a), 2);
    nodes.b.start_again();
    let mut b = nodes.b.connect();
    // no worker, no sync_flush: the next write takes the queue along, in front of itself
    a.execute("UPDATE t SET v = 'last' WHERE id = 1", &[])
        .unwrap();
    assert_eq!(queued(&mut a), 0);
    assert_eq!(same(&mut a, &mut b, "t"), 50);
    let v: String = b
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "last");
}

#[test]
fn a_redelivered_record_is_applied_once() {
    let (nodes, mut a, mut b) = Nodes::two_clusters(&[]).peered();
    both(&mut a, &mut b, T);
    a.execute("SELECT sync_link_table('t')", &[]).unwrap();
    nodes.b.stop_immediate();
    a.execute("INSERT INTO t VALUES (1, 'first'), (2, 'first')", &[])
        .unwrap();
    a.execute("DELETE FROM t WHERE id = 2", &[]).unwrap();
    // keep a copy of the queue as it was before delivery
    a.batch_execute("CREATE TABLE saved AS SELECT * FROM synclink.outbox")
        .unwrap();
    nodes.b.start_again();
    let mut b = nodes.b.connect();
    flush_to(&mut a, "b");
    b.execute("UPDATE t SET v = 'newer' WHERE id = 1", &[])
        .unwrap();
    b.execute("INSERT INTO t VALUES (2, 'again')", &[]).unwrap();
    // the sender delivers the same records again, as after a crash between the peer's commit
    // and its own: the peer recognises them and leaves its newer rows alone
    a.batch_execute("INSERT INTO synclink.outbox SELECT * FROM saved")
        .unwrap();
    let again = flush_to(&mut a, "b");
    assert_eq!(again, 2);
    let rows: Vec<(i32, String)> = b
        .query("SELECT id, v FROM t ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![(1, "newer".to_string()), (2, "again".to_string())]
    );
    same(&mut a, &mut b, "t");
}

#[test]
fn async_mode_always_queues_and_delivers_on_flush() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, T);
    let (code, message, _, hint) = db_error(
        a.batch_execute("SELECT sync_link_table('t', mode => 'eventually')")
            .unwrap_err(),
    );
    assert_eq!(code, "22023");
    assert!(
        message.contains("unknown mode \"eventually\"") && hint.contains("'async'"),
        "{message} {hint}"
    );

    a.execute("SELECT sync_link_table('t', mode => 'async')", &[])
        .unwrap();
    let modes: Vec<String> = b
        .query("SELECT mode FROM sync_status", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        modes,
        vec!["async".to_string()],
        "both halves of the link use the mode"
    );
    a.execute(
        "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g",
        &[],
    )
    .unwrap();
    b.execute("INSERT INTO t VALUES (5000, 'from b')", &[])
        .unwrap();
    assert_eq!(
        count(&mut b, "SELECT count(*) FROM t"),
        1,
        "nothing crossed before delivery"
    );
    assert_eq!(flush(&mut a), 1);
    assert_eq!(flush_to(&mut b, "a"), 1);
    assert_eq!(same(&mut a, &mut b, "t"), 1001);

    // unlinking with changes still queued needs an explicit discard, and says what it threw away
    a.execute("UPDATE t SET v = 'pending' WHERE id = 1", &[])
        .unwrap();
    a.execute("SELECT sync_unlink_table('t', discard_queued => true)", &[])
        .unwrap();
    assert_eq!(queued(&mut a) + links(&mut a), 0);
}

#[test]
fn the_background_worker_delivers_without_being_asked() {
    let preload = [
        "shared_preload_libraries = 'synclink'",
        "synclink.worker_naptime = 50",
    ];
    let (nodes, mut a, mut b) = Nodes::two_clusters(&preload).peered();
    both(&mut a, &mut b, T);
    a.execute("SELECT sync_link_table('t', mode => 'async')", &[])
        .unwrap();
    a.execute(
        "INSERT INTO t SELECT g, 'async' FROM generate_series(1, 1000) g",
        &[],
    )
    .unwrap();
    b.execute("UPDATE t SET v = 'from b' WHERE id = 1", &[])
        .ok();
    let took = wait_until(Duration::from_secs(10), || {
        count(&mut b, "SELECT count(*) FROM t") == 1000
    });
    assert!(took < Duration::from_secs(3), "delivered after {took:?}");
    b.execute("UPDATE t SET v = 'from b' WHERE id <= 10", &[])
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        count(&mut a, "SELECT count(*) FROM t WHERE v = 'from b'") == 10
    });
    same(&mut a, &mut b, "t");

    // sync mode: the backlog built while the peer was down drains by itself when it is back
    a.execute("SELECT sync_unlink_table('t')", &[]).unwrap();
    a.execute("SELECT sync_link_table('t')", &[]).unwrap();
    nodes.b.stop_immediate();
    for i in 0..20 {
        a.execute(
            "UPDATE t SET v = $1 WHERE id = $2",
            &[&format!("down {i}"), &(i + 1)],
        )
        .unwrap();
    }
    assert!(queued(&mut a) >= 20);
    nodes.b.start_again();
    let mut b = nodes.b.connect();
    wait_until(Duration::from_secs(60), || queued(&mut a) == 0);
    same(&mut a, &mut b, "t");
}

#[test]
fn the_outbox_survives_a_crash_of_its_own_server() {
    let (nodes, mut a, mut b) = Nodes::two_clusters(&[]).peered();
    both(&mut a, &mut b, T);
    a.execute("SELECT sync_link_table('t')", &[]).unwrap();
    nodes.b.stop_immediate();
    a.execute(
        "INSERT INTO t SELECT g, 'queued' FROM generate_series(1, 3000) g",
        &[],
    )
    .unwrap();
    a.execute("UPDATE t SET v = 'changed' WHERE id % 3 = 0", &[])
        .unwrap();
    a.execute("DELETE FROM t WHERE id > 2900", &[]).unwrap();
    let backlog = queued(&mut a);
    drop(a);
    // the sender itself crashes with its queue full, then both come back
    nodes.a.stop_immediate();
    nodes.a.start_again();
    nodes.b.start_again();
    let mut a = nodes.a.connect();
    let mut b = nodes.b.connect();
    assert_eq!(queued(&mut a), backlog);
    assert_eq!(flush_to(&mut a, "b"), backlog);
    assert_eq!(same(&mut a, &mut b, "t"), 2900);
}

#[test]
fn a_commit_wakes_the_worker_at_once() {
    // the worker only looks by itself every 5 s: quick delivery must come from the wake-up
    let conf = [
        "shared_preload_libraries = 'synclink'",
        "synclink.worker_naptime = 5000",
    ];
    let (_nodes, mut a, mut b) = Nodes::two_clusters(&conf).peered();
    both(&mut a, &mut b, T);
    a.execute("SELECT sync_link_table('t', mode => 'async')", &[])
        .unwrap();
    // the first change also waits for the launcher to start this database's worker
    a.execute("INSERT INTO t VALUES (0, 'warm-up')", &[])
        .unwrap();
    wait_until(Duration::from_secs(20), || {
        count(&mut b, "SELECT count(*) FROM t") == 1
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut slowest = Duration::ZERO;
    for i in 1..=5 {
        a.execute("INSERT INTO t VALUES ($1, 'woken')", &[&i])
            .unwrap();
        let took = wait_until(Duration::from_secs(10), || {
            count(&mut b, "SELECT count(*) FROM t") == i as i64 + 1
        });
        slowest = slowest.max(took);
    }
    assert!(
        slowest < Duration::from_millis(1500),
        "slowest delivery took {slowest:?}"
    );
}

/// A run of queued records for one table is applied as one statement on the peer; the result
/// must be that of applying them one by one: the last version of a key wins, a delete between
/// two writes of a key is honoured, a key that moved is gone from its old place.
#[test]
fn a_run_of_queued_records_applies_as_if_one_by_one() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, T);
    a.execute("SELECT sync_link_table('t', mode => 'async')", &[])
        .unwrap();
    let mut w = a.transaction().unwrap();
    for i in 0..50 {
        w.execute(
            "INSERT INTO t VALUES ($1, 'v0') ON CONFLICT (id) DO UPDATE SET v = 'v0'",
            &[&(i % 7)],
        )
        .unwrap();
        w.execute(
            "UPDATE t SET v = 'v' || $1::text WHERE id = $2",
            &[&i.to_string(), &(i % 5)],
        )
        .unwrap();
        if i % 9 == 0 {
            w.execute("DELETE FROM t WHERE id = $1", &[&(i % 7)])
                .unwrap();
        }
        if i == 30 {
            w.execute("UPDATE t SET id = id + 100 WHERE id < 3", &[])
                .unwrap();
        }
    }
    w.commit().unwrap();
    let backlog = queued(&mut a);
    assert!(backlog >= 100, "queued {backlog}");
    assert_eq!(flush_to(&mut a, "b"), backlog);
    same(&mut a, &mut b, "t");
}

/// A run of queued records of several megabytes (here 24 records of 5,000 wide rows, each key
/// inserted then updated) is planned for its size rather than with the plan kept for small
/// runs; the result is still that of applying the records one by one.
#[test]
fn a_run_of_many_megabytes_applies_as_if_one_by_one() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, T);
    a.execute("SELECT sync_link_table('t', mode => 'async')", &[])
        .unwrap();
    a.batch_execute(
        "INSERT INTO t SELECT g, repeat('w', 200) FROM generate_series(1, 60000) g;
         UPDATE t SET v = 'updated ' || id WHERE id % 3 = 0;
         DELETE FROM t WHERE id % 3 = 1;",
    )
    .unwrap();
    let bytes = count(
        &mut a,
        "SELECT sum(length(new_rows))::bigint FROM synclink.outbox WHERE op IN ('I', 'U')",
    );
    assert!(bytes > 8 << 20, "queued {bytes} bytes of rows");
    flush_to(&mut a, "b");
    assert_eq!(same(&mut a, &mut b, "t"), 40_000);
    let updated = count(&mut b, "SELECT count(*) FROM t WHERE v LIKE 'updated %'");
    assert_eq!(updated, 20_000);
}

/// The sender crashes after the peer committed a delivery and before its own commit removed
/// the records from its outbox. The peer's commit is held (it waits for a synchronous standby
/// that does not exist) until the sender is down, so the window is hit every time.
#[test]
fn a_sender_crashing_mid_delivery_delivers_once_in_effect() {
    let (nodes, mut a, mut b) = Nodes::two_clusters(&[]).peered();
    both(&mut a, &mut b, T);
    a.execute("SELECT sync_link_table('t', mode => 'async')", &[])
        .unwrap();
    a.execute(
        "INSERT INTO t SELECT g, 'first' FROM generate_series(1, 1000) g",
        &[],
    )
    .unwrap();
    a.execute("UPDATE t SET v = 'second' WHERE id <= 10", &[])
        .unwrap();
    assert_eq!(queued(&mut a), 2);

    hold_commits(&mut b, true);
    let conninfo = nodes.a.socket_conninfo();
    let flusher = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
        c.query_one("SELECT sync_flush('b')", &[]).map(|_| ())
    });
    one_session_waits(&mut b, "SyncRep");
    nodes.a.stop_immediate();
    assert!(
        flusher.join().unwrap().is_err(),
        "the sender died before its commit"
    );
    hold_commits(&mut b, false);
    wait_until(Duration::from_secs(30), || {
        count(&mut b, "SELECT count(*) FROM t WHERE v = 'second'") == 10
    });
    // a newer change on the peer: applying the batch a second time would overwrite it
    b.execute("UPDATE t SET v = 'changed on b' WHERE id = 1", &[])
        .unwrap();

    nodes.a.start_again();
    let mut a = nodes.a.connect();
    assert_eq!(
        queued(&mut a),
        2,
        "the sender still holds the batch the peer committed"
    );
    let redelivered = flush_to(&mut a, "b");
    assert_eq!(redelivered, 2);
    flush_to(&mut b, "a");
    let v: String = b
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "changed on b", "the redelivered batch was skipped");
    assert_eq!(
        count(&mut b, "SELECT count(*) FROM t WHERE v = 'second'"),
        9
    );
    assert_eq!(same(&mut a, &mut b, "t"), 1000);
}

/// The sender crashes while the peer's commit of a delivery is still in progress, and comes
/// back before it ends: the redelivery waits for that commit, then sees the records applied
/// and skips them.
#[test]
fn a_redelivery_that_overtakes_the_first_commit_waits_and_skips() {
    let (nodes, mut a, mut b) =
        Nodes::two_clusters(&["shared_preload_libraries = 'synclink'"]).peered();
    both(&mut a, &mut b, T);
    a.execute("SELECT sync_link_table('t', mode => 'async')", &[])
        .unwrap();
    hold_commits(&mut b, true);
    a.execute(
        "INSERT INTO t SELECT g, 'first' FROM generate_series(1, 10) g",
        &[],
    )
    .unwrap();
    one_session_waits(&mut b, "SyncRep");
    nodes.a.stop_immediate();
    nodes.a.start_again();
    // a's worker delivers the record again; the peer's second session waits for the first
    one_session_waits(&mut b, "advisory");
    assert_eq!(count(&mut b, "SELECT count(*) FROM t"), 0);
    hold_commits(&mut b, false);
    let mut a = nodes.a.connect();
    wait_until(Duration::from_secs(30), || queued(&mut a) == 0);
    assert_eq!(same(&mut a, &mut b, "t"), 10);
    assert_eq!(
        count(
            &mut b,
            "SELECT count(*) FROM synclink.applied a, unnest(a.seqs) s"
        ),
        1,
        "the record was applied once, by the first delivery"
    );
    let (failed, error): (i64, Option<String>) = a
        .query_one("SELECT failed, last_error FROM synclink.peer_state", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        (failed, error),
        (0, None),
        "the redelivery went through at once"
    );
}

/// The queue does not grow silently: past synclink.backlog_warning, queueing says so, about
/// once per thousand changes queued.
#[test]
fn a_growing_backlog_raises_a_warning() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, T);
    a.execute("SELECT sync_link_table('t', mode => 'async')", &[])
        .unwrap();
    let (mut c, warnings) = listening(&nodes.a);
    c.batch_execute(
        "SET synclink.backlog_warning = 100;
         DO $$ BEGIN FOR i IN 1..999 LOOP INSERT INTO t VALUES (i, 'queued'); END LOOP; END $$",
    )
    .unwrap();
    assert_eq!(warnings.lock().unwrap().clone(), Vec::<String>::new());
    a.batch_execute("INSERT INTO t VALUES (1000, 'the thousandth')")
        .unwrap();
    c.batch_execute("INSERT INTO t VALUES (1001, 'one more')")
        .unwrap();
    assert_eq!(warnings.lock().unwrap().clone(), Vec::<String>::new());
    a.batch_execute(
        "DO $$ BEGIN FOR i IN 1002..1999 LOOP INSERT INTO t VALUES (i, 'queued'); END LOOP; END $$",
    )
    .unwrap();
    c.batch_execute("INSERT INTO t VALUES (2000, 'the two thousandth')")
        .unwrap();
    let warning = "more than 100 changes are queued for peer \"b\"".to_string();
    assert_eq!(warnings.lock().unwrap().clone(), vec![warning.clone()]);
    // still over a thousand changes later (this session need not count again to know)
    c.batch_execute(
        "DO $$ BEGIN FOR i IN 2001..2999 LOOP INSERT INTO t VALUES (i, 'queued'); END LOOP; END $$;
         INSERT INTO t VALUES (3000, 'the three thousandth')",
    )
    .unwrap();
    assert_eq!(warnings.lock().unwrap().len(), 2);
    // Records at `from`, `to` - 1 and `to`, the seqs between them drawn and rolled back.
    let spread = |c: &mut postgres::Client, from: i32, to: i32| {
        let steps = [
            format!("INSERT INTO t VALUES ({from}, 'queued')"),
            "BEGIN".to_string(),
            format!("DO $$ BEGIN FOR i IN {}..{} LOOP INSERT INTO t VALUES (i, 'rolled back'); END LOOP; END $$", from + 1, to - 2),
            "ROLLBACK".to_string(),
            format!("INSERT INTO t VALUES ({}, 'queued')", to - 1),
            format!("INSERT INTO t VALUES ({to}, 'the thousandth seq')"),
        ];
        for step in steps {
            c.batch_execute(&step).unwrap();
        }
    };
    // Delivered, then three records over a thousand seqs: the range alone would say over
    // 100, and so would what this session found before the delivery.
    flush_to(&mut a, "b");
    spread(&mut c, 3001, 4000);
    assert_eq!(queued(&mut a), 3);
    assert_eq!(warnings.lock().unwrap().len(), 2);
    // Over 100 again, found by counting; then over 100 is not over 1,500: 1,006 queued over
    // a range of 3,000 seqs is counted again for the higher limit.
    c.batch_execute(
        "DO $$ BEGIN FOR i IN 4001..4999 LOOP INSERT INTO t VALUES (i, 'queued'); END LOOP; END $$;
         INSERT INTO t VALUES (5000, 'the five thousandth')",
    )
    .unwrap();
    assert_eq!(warnings.lock().unwrap().len(), 3);
    c.batch_execute("SET synclink.backlog_warning = 1500")
        .unwrap();
    spread(&mut c, 5001, 6000);
    assert_eq!(queued(&mut a), 1006);
    assert_eq!(warnings.lock().unwrap().clone(), vec![warning; 3]);
}

/// Async statements that change one row are queued by the native capture; everything else by
/// the generated function. Both must write the same records, whoever writes and whatever
/// the session's output settings.
#[test]
fn one_row_statements_are_queued_natively_with_the_same_records() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(
        &mut a,
        &mut b,
        "CREATE TABLE t (id int PRIMARY KEY, v text, f float8, bin bytea, span interval, at timestamptz, n numeric)",
    );
    a.execute("SELECT sync_link_table('t', mode => 'async')", &[])
        .unwrap();
    a.batch_execute(
        "CREATE ROLE app LOGIN PASSWORD 'app-pw'; GRANT ALL ON t TO app; \
         ALTER ROLE app SET track_functions = 'pl'; \
         CREATE TABLE other (id int); \
         CREATE TRIGGER stray AFTER INSERT ON other FOR EACH STATEMENT EXECUTE FUNCTION synclink.capture_one('1')",
    )
    .unwrap();
    let values = "'it''s \"q\"', 0.1::float8 * 3, '\\x00ff'::bytea, '1 day 02:03:04.5', '2026-01-02 03:04:05.678+01', 1.50";
    // an application role with no rights on synclink's objects
    let mut app = nodes.a.connect_as("app", "app-pw");
    app.batch_execute(&format!("INSERT INTO t VALUES (1, {values})"))
        .unwrap();
    // output settings that change the text form: this session takes the general path
    let mut odd = nodes.a.connect_as("app", "app-pw");
    odd.batch_execute(
        "SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'sql_standard'; \
         SET bytea_output = 'escape'; SET extra_float_digits = 0",
    )
    .unwrap();
    odd.batch_execute(&format!("INSERT INTO t VALUES (2, {values})"))
        .unwrap();
    // a repeatable read transaction: the native capture runs its SQL statement
    let mut repeatable = nodes.a.connect_as("app", "app-pw");
    repeatable
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; INSERT INTO t VALUES (3, {values}); COMMIT"
        ))
        .unwrap();
    let rows: Vec<String> = a
        .query(
            "SELECT new_rows || stamps FROM synclink.outbox ORDER BY seq",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows.len(), 3);
    let strip = |s: &str| {
        // the id and the version differ; everything else is the same text
        let (row, stamp) = s.split_at(s.find("}{").unwrap());
        (
            row.replacen("(1,", "(2,", 1).replacen("(3,", "(2,", 1),
            stamp.split(',').nth(1).unwrap().to_string(),
        )
    };
    assert_eq!(strip(&rows[0]), strip(&rows[1]), "{rows:?}");
    assert_eq!(strip(&rows[2]), strip(&rows[1]), "{rows:?}");

    for sql in [
        "UPDATE t SET v = 'one row' WHERE id = 1",
        "UPDATE t SET id = 10 WHERE id = 2", // a changed key: 'K' and 'U' from the general path
        "INSERT INTO t SELECT g, 'many' FROM generate_series(100, 150) g",
        "UPDATE t SET n = n + 1 WHERE id BETWEEN 100 AND 120",
        "DELETE FROM t WHERE id = 100",
        "DELETE FROM t WHERE id > 140",
    ] {
        app.batch_execute(sql).unwrap();
    }
    let ops: String = a
        .query("SELECT op::text FROM synclink.outbox ORDER BY seq", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert_eq!(ops, "IIIUKUIUDD");
    // the generated function ran for the five statements the native capture does not take:
    // the odd session's insert, the key change and the three statements of many rows
    for c in [&mut app, &mut odd] {
        c.batch_execute("SELECT pg_stat_force_next_flush()")
            .unwrap();
    }
    wait_until(Duration::from_secs(10), || {
        count(
            &mut a,
            "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_user_functions \
              WHERE schemaname = 'synclink' AND funcname LIKE 't\\_capture%'",
        ) == 5
    });
    flush(&mut a);
    assert_eq!(table_hash(&mut a, "t"), table_hash(&mut b, "t"));
    assert_eq!(count(&mut b, "SELECT count(*) FROM t"), 43);

    // a trigger of someone else's making cannot use it
    let (code, message, _, _) =
        db_error(a.batch_execute("INSERT INTO other VALUES (1)").unwrap_err());
    assert_eq!(code, "39P01");
    assert!(
        message.contains("may only be called by the triggers of that link"),
        "{message}"
    );
}

/// The native capture writes a key's version as INSERT … ON CONFLICT DO UPDATE would: a
/// version another transaction is writing is waited for, then built on (its version becomes
/// the change's base) if that transaction commits, or ignored if it rolls back.
#[test]
fn a_version_being_written_elsewhere_is_waited_for() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, T);
    a.execute("SELECT sync_link_table('t', mode => 'async')", &[])
        .unwrap();
    a.batch_execute("INSERT INTO t VALUES (1, 'one')").unwrap();
    let version: String = a
        .query_one("SELECT version_table FROM synclink.link", &[])
        .unwrap()
        .get(0);
    let base = |a: &mut postgres::Client| -> String {
        a.query_one(
            "SELECT s.base_at || '/' || s.base_node FROM synclink.outbox o, \
                    unnest(o.stamps::synclink.stamp[]) s ORDER BY o.seq DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get::<_, Option<String>>(0)
        .unwrap_or_default()
    };
    // (key, statement, how the other transaction ends, base expected)
    let cases = [
        (
            1,
            "UPDATE t SET v = 'two' WHERE id = 1",
            "COMMIT",
            "42/elsewhere",
        ),
        (
            2,
            "INSERT INTO t VALUES (2, 'two')",
            "COMMIT",
            "42/elsewhere",
        ),
        (3, "INSERT INTO t VALUES (3, 'three')", "ROLLBACK", ""),
    ];
    for (key, statement, end, expected) in cases {
        let mut other = nodes.a.connect();
        other
            .batch_execute(&format!(
                "BEGIN; INSERT INTO {version} (id, \"synclink$at\", \"synclink$node\") \
                 VALUES ({key}, 42, 'elsewhere') ON CONFLICT (id) DO UPDATE \
                 SET \"synclink$at\" = 42, \"synclink$node\" = 'elsewhere'"
            ))
            .unwrap();
        let conninfo = nodes.a.socket_conninfo();
        let writer = std::thread::spawn(move || {
            let mut w = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
            w.batch_execute(statement).unwrap();
        });
        one_session_waits(&mut a, "transactionid");
        other.batch_execute(end).unwrap();
        writer.join().unwrap();
        assert_eq!(base(&mut a), expected, "{statement} after {end}");
    }
    flush(&mut a);
    assert_eq!(same(&mut a, &mut b, "t"), 3);
}

/// A session keeps what it read of a link. When the link's relations change under it (here
/// the extension is dropped and made again, and the new link gets the old one's id) the
/// session reads the link again instead of writing to what is gone.
#[test]
fn a_session_rereads_a_link_remade_under_it() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, T);
    a.execute("SELECT sync_link_table('t', mode => 'async')", &[])
        .unwrap();
    let mut w = nodes.a.connect();
    w.batch_execute("INSERT INTO t VALUES (1, 'before')")
        .unwrap();
    flush(&mut a);
    a.batch_execute("DROP EXTENSION synclink; CREATE EXTENSION synclink")
        .unwrap();
    a.execute("SELECT sync_add_peer('b', $1)", &[&nodes.b.conninfo()])
        .unwrap();
    a.execute("SELECT sync_link_table('t', mode => 'async')", &[])
        .unwrap();
    assert_eq!(
        count(&mut a, "SELECT link_id::int8 FROM synclink.link"),
        1,
        "the new link has the old one's id"
    );
    w.batch_execute("INSERT INTO t VALUES (2, 'after')")
        .unwrap();
    w.batch_execute("UPDATE t SET v = 'changed' WHERE id = 1")
        .unwrap();
    flush(&mut a);
    assert_eq!(same(&mut a, &mut b, "t"), 2);
}
