//! Both nodes change the same rows before either change arrives. Whatever the policy, once
//! delivery settles both databases hold the same rows (for `manual`: once resolved), and every
//! conflict is in synclink.conflict.

use postgres::Client;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use synclink_e2e::{both, count, flush, node_name, same, table_hash, wait_drained, Nodes};

const T: &str =
    "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL, updated_at timestamp NOT NULL)";

fn rows(c: &mut Client) -> String {
    c.query_one(
        "SELECT coalesce(string_agg(id || ':' || v, ' ' ORDER BY id), '') FROM t",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Row 1 updated on both nodes, row 2 deleted on A and updated on B, row 3 inserted on
/// both; A writes first each time, with the later updated_at. Delivered only afterwards
/// (async, no worker), so every one is a conflict on both nodes.
fn three_conflicts(link_args: &str) -> (Nodes, Client, Client) {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, T);
    both(
        &mut a,
        &mut b,
        "INSERT INTO t VALUES (1, 'start', '2000-01-01'), (2, 'start', '2000-01-01')",
    );
    a.execute(
        &format!("SELECT sync_link_table('t', mode => 'async'{link_args})"),
        &[],
    )
    .unwrap();
    a.batch_execute(
        "UPDATE t SET v = 'a', updated_at = '2030-01-01' WHERE id = 1;
         DELETE FROM t WHERE id = 2;
         INSERT INTO t VALUES (3, 'a', '2030-01-01');",
    )
    .unwrap();
    b.batch_execute(
        "UPDATE t SET v = 'b', updated_at = '2020-01-01' WHERE id = 1;
         UPDATE t SET v = 'b', updated_at = '2020-01-01' WHERE id = 2;
         INSERT INTO t VALUES (3, 'b', '2020-01-01');",
    )
    .unwrap();
    flush(&mut a);
    flush(&mut b);
    (nodes, a, b)
}

fn kinds(c: &mut Client) -> Vec<String> {
    c.query(
        "SELECT key->>'id' || ':' || kind || ':' || array_to_string(columns, ',') \
           FROM synclink.conflict ORDER BY key->>'id'",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn with_outcome(c: &mut Client, outcome: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM synclink.conflict WHERE outcome = $1",
        &[&outcome],
    )
    .unwrap()
    .get(0)
}

macro_rules! policies {
    ($($name:ident: $args:expr => $expected:expr, $outcomes_a:expr;)*) => {$(
        #[test]
        fn $name() {
            let (_nodes, mut a, mut b) = three_conflicts($args);
            assert_eq!(rows(&mut a), $expected, "A");
            assert_eq!(rows(&mut b), $expected, "B");
            assert_eq!(
                kinds(&mut a),
                ["1:update_changed:v,updated_at", "2:update_missing:id,v,updated_at", "3:insert_exists:v,updated_at"]
            );
            assert_eq!(
                kinds(&mut b),
                ["1:update_changed:v,updated_at", "2:delete_changed:id,v,updated_at", "3:insert_exists:v,updated_at"]
            );
            let outcomes: String = a
                .query_one("SELECT string_agg(outcome, ' ' ORDER BY key->>'id') FROM synclink.conflict", &[])
                .unwrap()
                .get(0);
            assert_eq!(outcomes, $outcomes_a);
        }
    )*};
}

policies! {
    // B wrote each row last
    last_write_wins_by_capture_time: "" => "1:b 2:b 3:b", "applied applied applied";
    // A's updated_at is later; a delete has none, so row 2 falls back to capture time
    last_write_wins_by_version_column: ", version_column => 'updated_at'" => "1:a 2:b 3:a", "kept applied kept";
    prefer_local_keeps_the_calling_node: ", conflict => 'prefer_local'" => "1:a 3:a", "kept kept kept";
    prefer_peer_keeps_the_other_node: ", conflict => 'prefer_peer'" => "1:b 2:b 3:b", "applied applied applied";
}

#[test]
fn manual_conflicts_wait_for_a_person_and_are_remembered() {
    let (_nodes, mut a, mut b) = three_conflicts(", conflict => 'manual'");
    // each node keeps its own row and asks
    assert_eq!(rows(&mut a), "1:a 3:a");
    assert_eq!(rows(&mut b), "1:b 2:b 3:b");
    for c in [&mut a, &mut b] {
        assert_eq!(
            count(c, "SELECT count(DISTINCT conflict_id) FROM sync_conflicts"),
            3
        );
    }
    let review: Vec<(String, String, Option<String>, Option<String>)> = a
        .query(
            "SELECT key->>'id', \"column\", local_value #>> '{}', peer_value #>> '{}' FROM sync_conflicts
              WHERE key->>'id' = '1' ORDER BY \"column\"",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get::<_, Option<String>>(2),
                r.get::<_, Option<String>>(3),
            )
        })
        .collect();
    assert_eq!(review.len(), 2, "{review:?}");
    assert_eq!(review[0].1, "updated_at");
    assert_eq!(
        (
            review[1].1.as_str(),
            review[1].2.as_deref(),
            review[1].3.as_deref()
        ),
        ("v", Some("a"), Some("b"))
    );

    let id_of = |c: &mut Client, key: &str| -> i64 {
        c.query_one(
            "SELECT conflict_id FROM synclink.conflict WHERE key->>'id' = $1 AND outcome = 'open'",
            &[&key],
        )
        .unwrap()
        .get(0)
    };
    let node_b = node_name(&mut b);
    let first = id_of(&mut a, "1");
    a.execute("SELECT sync_resolve($1, keep => 'local')", &[&first])
        .unwrap();
    let second = id_of(&mut a, "2");
    a.execute("SELECT sync_resolve($1, keep => 'peer')", &[&second])
        .unwrap();
    // from the other node, naming the node to keep
    let third = id_of(&mut b, "3");
    b.execute("SELECT sync_resolve($1, keep => $2)", &[&third, &node_b])
        .unwrap();
    assert_eq!(rows(&mut a), "1:a 2:b 3:b");
    assert_eq!(rows(&mut b), "1:a 2:b 3:b");
    for c in [&mut a, &mut b] {
        assert_eq!(count(c, "SELECT count(*) FROM sync_conflicts"), 0);
        assert_eq!(with_outcome(c, "resolved"), 3);
    }
    let err = a
        .execute("SELECT sync_resolve($1, keep => 'local')", &[&first])
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "55000", "{err}");
    let err = a.execute("SELECT sync_resolve(424242, keep => 'local')", &[]);
    assert_eq!(err.unwrap_err().code().unwrap().code(), "42704");

    // The same two rows meet again (each node saves its version of row 1 once more): the
    // earlier choice is applied on both nodes without asking.
    a.execute(
        "UPDATE t SET v = 'a', updated_at = '2030-01-01' WHERE id = 1",
        &[],
    )
    .unwrap();
    b.execute(
        "UPDATE t SET v = 'b', updated_at = '2020-01-01' WHERE id = 1",
        &[],
    )
    .unwrap();
    flush(&mut a);
    flush(&mut b);
    assert_eq!(rows(&mut a), "1:a 2:b 3:b");
    assert_eq!(rows(&mut b), "1:a 2:b 3:b");
    for c in [&mut a, &mut b] {
        assert_eq!(count(c, "SELECT count(*) FROM sync_conflicts"), 0);
        assert_eq!(with_outcome(c, "remembered"), 1);
    }
    // a different change is a new question
    b.execute("UPDATE t SET v = 'c' WHERE id = 1", &[]).unwrap();
    a.execute("UPDATE t SET v = 'd' WHERE id = 1", &[]).unwrap();
    flush(&mut a);
    flush(&mut b);
    assert_eq!(count(&mut a, "SELECT count(*) FROM sync_conflicts"), 1);
}

#[test]
fn reconcile_settles_conflicts_and_later_changes_flow_without_one() {
    let (_nodes, mut a, mut b) = three_conflicts(", conflict => 'manual'");
    let repaired: i64 = a
        .query_one("SELECT sync_reconcile('t', prefer => 'peer')", &[])
        .unwrap()
        .get(0);
    assert_eq!(repaired, 3);
    for c in [&mut a, &mut b] {
        assert_eq!(rows(c), "1:b 2:b 3:b");
        assert_eq!(count(c, "SELECT count(*) FROM sync_conflicts"), 0);
    }
    let before = count(&mut b, "SELECT count(*) FROM synclink.conflict");
    a.execute("UPDATE t SET v = 'after' WHERE id <= 3", &[])
        .unwrap();
    b.execute("DELETE FROM t WHERE id = 2", &[]).unwrap();
    flush(&mut a);
    flush(&mut b);
    // row 2 was changed on both nodes again: that one is a conflict; rows 1 and 3 are not
    assert_eq!(rows(&mut b), "1:after 3:after");
    assert_eq!(
        count(&mut b, "SELECT count(*) FROM synclink.conflict") - before,
        1
    );
}

#[test]
fn bad_policies_are_refused_before_anything_is_made() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(
        &mut a,
        &mut b,
        "CREATE TABLE t (id int PRIMARY KEY, v text, doc json, updated_at timestamp)",
    );
    for (args, code, message) in [
        (
            "conflict => 'newest'",
            "22023",
            "unknown conflict policy \"newest\"",
        ),
        (
            "version_column => 'nope'",
            "42703",
            "version column \"nope\" is not a column the link sends",
        ),
        (
            "version_column => 'doc'",
            "42883",
            "version column \"doc\" has type json, which cannot be ordered",
        ),
        (
            "conflict => 'manual', version_column => 'updated_at'",
            "22023",
            "only applies to the last_write_wins policy",
        ),
        (
            "exclude => ARRAY['updated_at'], version_column => 'updated_at'",
            "42703",
            "is not a column the link sends",
        ),
    ] {
        let e = a
            .execute(&format!("SELECT sync_link_table('t', {args})"), &[])
            .unwrap_err();
        let d = e.as_db_error().unwrap();
        assert_eq!(d.code().code(), code, "{args}: {}", d.message());
        assert!(d.message().contains(message), "{args}: {}", d.message());
        assert!(d.hint().is_some(), "{args}");
        for c in [&mut a, &mut b] {
            assert_eq!(count(c, "SELECT count(*) FROM synclink.link"), 0);
        }
    }
}

/// Cut both directions: the peers' role may not log in, and its sessions are ended.
fn cut(c: &mut Client, on: bool) {
    c.batch_execute(&format!(
        "ALTER ROLE sync {}; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'sync'",
        if on { "NOLOGIN" } else { "LOGIN" }
    ))
    .unwrap();
}

const KEYS: i32 = 1000;

/// Two writers per node change the same 1,000 keys (mostly updates, some deletes and
/// re-inserts) while the link is up, cut, and up again. Returns the keys each node changed
/// while cut off.
fn write_through_a_cut(nodes: &Nodes, a: &mut Client, b: &mut Client) -> [HashSet<i32>; 2] {
    let stop = Arc::new(AtomicBool::new(false));
    let apart = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicI64::new(0));
    let touched = [
        Arc::new(Mutex::new(HashSet::new())),
        Arc::new(Mutex::new(HashSet::new())),
    ];
    let mut threads = vec![];
    for w in 0..4u32 {
        let side = (w % 2) as usize;
        let conninfo = if side == 0 {
            nodes.a.socket_conninfo()
        } else {
            nodes.b.socket_conninfo()
        };
        let (stop, apart, done, touched) = (
            stop.clone(),
            apart.clone(),
            done.clone(),
            touched[side].clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
            let name = format!("w{w}");
            let mut x: u32 = 12345 + w * 7;
            while !stop.load(Ordering::SeqCst) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let k = ((x >> 8) % KEYS as u32) as i32 + 1;
                let during_cut = apart.load(Ordering::SeqCst);
                let r = match (x >> 4) % 10 {
                    0 => c.execute("DELETE FROM t WHERE id = $1", &[&k]),
                    1 => c.execute(
                        "INSERT INTO t VALUES ($1, $2 || ':0', clock_timestamp()) ON CONFLICT (id) DO NOTHING",
                        &[&k, &name],
                    ),
                    _ => c.execute(
                        "UPDATE t SET v = $2 || ':' || split_part(v, ':', 2)::int + 1, updated_at = clock_timestamp() WHERE id = $1",
                        &[&k, &name],
                    ),
                };
                if let Ok(n) = r {
                    done.fetch_add(1, Ordering::SeqCst);
                    if n > 0 && during_cut && apart.load(Ordering::SeqCst) {
                        touched.lock().unwrap().insert(k);
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    cut(a, true);
    cut(b, true);
    apart.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(2500));
    apart.store(false, Ordering::SeqCst);
    cut(a, false);
    cut(b, false);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    assert!(done.load(Ordering::SeqCst) > 1000, "the writers wrote");
    let sets = touched.map(|t| t.lock().unwrap().clone());
    sets
}

fn logged_keys(c: &mut Client) -> HashSet<i32> {
    c.query(
        "SELECT DISTINCT (key->>'id')::int FROM synclink.conflict",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn converge_under_load(link_args: &str) -> (Nodes, Client, Client, HashSet<i32>) {
    let conf = [
        "shared_preload_libraries = 'synclink'",
        "synclink.worker_naptime = 50",
        "synclink.retry_interval = 300",
    ];
    let (nodes, mut a, mut b) = Nodes::two_clusters(&conf).peered();
    both(&mut a, &mut b, T);
    both(
        &mut a,
        &mut b,
        &format!(
            "INSERT INTO t SELECT g, 'start:0', '2000-01-01' FROM generate_series(1, {KEYS}) g"
        ),
    );
    a.execute(
        &format!("SELECT sync_link_table('t', mode => 'async'{link_args})"),
        &[],
    )
    .unwrap();
    let [on_a, on_b] = write_through_a_cut(&nodes, &mut a, &mut b);
    wait_drained(&mut a, &mut b, Duration::from_secs(120));
    let both_sides: HashSet<i32> = on_a.intersection(&on_b).copied().collect();
    assert!(
        both_sides.len() > 50,
        "only {} keys changed on both sides",
        both_sides.len()
    );
    // every row changed on both nodes while they were apart is a logged conflict on each
    for c in [&mut a, &mut b] {
        let logged = logged_keys(c);
        let missing: Vec<_> = both_sides.difference(&logged).collect();
        assert!(missing.is_empty(), "not logged: {missing:?}");
    }
    let logged = (
        count(&mut a, "SELECT count(*) FROM synclink.conflict"),
        count(&mut b, "SELECT count(*) FROM synclink.conflict"),
    );
    eprintln!(
        "{link_args:?}: {} keys changed on both nodes while apart; conflicts logged: A {}, B {}",
        both_sides.len(),
        logged.0,
        logged.1
    );
    (nodes, a, b, both_sides)
}

#[test]
fn last_write_wins_converges_under_load() {
    let (_nodes, mut a, mut b, _) = converge_under_load("");
    same(&mut a, &mut b, "t");
    for c in [&mut a, &mut b] {
        assert!(with_outcome(c, "applied") > 0);
        assert!(with_outcome(c, "kept") > 0);
    }
}

#[test]
fn last_write_wins_by_version_column_converges_under_load() {
    let (_nodes, mut a, mut b, _) = converge_under_load(", version_column => 'updated_at'");
    same(&mut a, &mut b, "t");
}

#[test]
fn prefer_local_converges_under_load() {
    let (_nodes, mut a, mut b, _) = converge_under_load(", conflict => 'prefer_local'");
    same(&mut a, &mut b, "t");
    // A is preferred: its rows stay, B takes them
    let a_outcomes = count(
        &mut a,
        "SELECT count(*) FROM synclink.conflict WHERE outcome <> 'kept'",
    );
    let b_outcomes = count(
        &mut b,
        "SELECT count(*) FROM synclink.conflict WHERE outcome <> 'applied'",
    );
    assert_eq!((a_outcomes, b_outcomes), (0, 0));
}

#[test]
fn manual_converges_once_every_conflict_is_resolved() {
    let (_nodes, mut a, mut b, _) = converge_under_load(", conflict => 'manual'");
    let differing = |a: &mut Client, b: &mut Client| table_hash(a, "t") != table_hash(b, "t");
    assert!(
        differing(&mut a, &mut b),
        "manual conflicts leave both rows"
    );
    // settle every open conflict, alternating which side is kept, from whichever node has it
    let mut turn = 0;
    loop {
        let next = [&mut a, &mut b].into_iter().enumerate().find_map(|(i, c)| {
            c.query(
                "SELECT conflict_id FROM synclink.conflict WHERE outcome = 'open' ORDER BY conflict_id LIMIT 1",
                &[],
            )
            .unwrap()
            .first()
            .map(|r| (i, r.get::<_, i64>(0)))
        });
        let Some((side, id)) = next else { break };
        let keep = if turn % 2 == 0 { "local" } else { "peer" };
        turn += 1;
        let c = if side == 0 { &mut a } else { &mut b };
        c.execute("SELECT sync_resolve($1, keep => $2)", &[&id, &keep])
            .unwrap();
    }
    assert!(turn > 50, "{turn} conflicts resolved");
    same(&mut a, &mut b, "t");
}
