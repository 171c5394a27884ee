//! sync_diff: the differences between two databases' copies of a table, found set-based.

use std::collections::BTreeSet;
use std::time::Instant;
use synclink_e2e::{both, db_error, links, queued, table_hash, Nodes};

const BIG: &str = "CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL, n int, at timestamptz)";
const ROWS: i32 = 1_000_000;

fn fill(c: &mut postgres::Client) {
    c.batch_execute(&format!(
        "INSERT INTO big SELECT g, 'row ' || g, g % 100, \
                timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' \
           FROM generate_series(1, {ROWS}) g"
    ))
    .unwrap();
}

#[test]
fn sync_diff_finds_exactly_the_scattered_differences_in_a_million_rows() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, BIG);
    fill(&mut a);
    fill(&mut b);
    // 40 rows changed on B (10 of them in two columns), 30 deleted there, 30 only there
    let changed: Vec<i32> = (1..=40).map(|k| k * 24_989).collect();
    let deleted: Vec<i32> = (1..=30).map(|k| k * 31_337 + 3).collect();
    let added: Vec<i32> = (1..=30).map(|k| ROWS + k * 7).collect();
    b.execute(
        "UPDATE big SET v = 'changed' WHERE id = ANY($1)",
        &[&changed],
    )
    .unwrap();
    b.execute(
        "UPDATE big SET n = -1 WHERE id = ANY($1)",
        &[&changed[..10].to_vec()],
    )
    .unwrap();
    b.execute("DELETE FROM big WHERE id = ANY($1)", &[&deleted])
        .unwrap();
    b.execute(
        "INSERT INTO big SELECT g, 'new', 0, now() FROM unnest($1::int[]) g",
        &[&added],
    )
    .unwrap();
    // the caller's own settings must not matter: values are compared in a fixed text form
    a.batch_execute("SET TimeZone = 'America/New_York'; SET DateStyle = 'SQL, DMY'")
        .unwrap();

    let started = Instant::now();
    let rows = a
        .query("SELECT key, kind, columns FROM sync_diff('big')", &[])
        .unwrap();
    eprintln!(
        "sync_diff over {ROWS} rows with 100 differences: {:?}",
        started.elapsed()
    );
    let ids = |kind: &str| -> BTreeSet<i32> {
        rows.iter()
            .filter(|r| r.get::<_, String>(1) == kind)
            .map(|r| {
                let key: serde_json::Value = r.get(0);
                key["id"].as_i64().unwrap() as i32
            })
            .collect()
    };
    assert_eq!(rows.len(), 100);
    assert_eq!(ids("differs"), changed.iter().copied().collect());
    assert_eq!(ids("only_local"), deleted.iter().copied().collect());
    assert_eq!(ids("only_peer"), added.iter().copied().collect());
    for r in rows.iter().filter(|r| r.get::<_, String>(1) == "differs") {
        let key: serde_json::Value = r.get(0);
        let columns: Vec<String> = r.get(2);
        let id = key["id"].as_i64().unwrap() as i32;
        let expected = if changed[..10].contains(&id) {
            vec!["v".to_string(), "n".to_string()]
        } else {
            vec!["v".to_string()]
        };
        assert_eq!(columns, expected, "id {id}");
    }
    assert!(rows
        .iter()
        .filter(|r| r.get::<_, String>(1) != "differs")
        .all(|r| r.get::<_, Option<Vec<String>>>(2).is_none()));

    // the same table asked from the other side: the mirror image
    let from_b = b
        .query(
            "SELECT kind, count(*) FROM sync_diff('big') GROUP BY 1 ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    assert_eq!(
        from_b,
        vec![
            ("differs".to_string(), 40),
            ("only_local".to_string(), 30),
            ("only_peer".to_string(), 30)
        ]
    );
    // nothing kept of the requests on either node
    for c in [&mut a, &mut b] {
        let kept: i64 = c
            .query_one(
                "SELECT count(*) FROM synclink.request WHERE action = 'diff'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(kept, 0);
    }
}

#[test]
fn sync_diff_of_equal_tables_is_empty_and_errors_are_clear() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(
        &mut a,
        &mut b,
        "CREATE TABLE t (id int PRIMARY KEY, v text, f float8, j jsonb, d date)",
    );
    for c in [&mut a, &mut b] {
        c.batch_execute(
            "INSERT INTO t SELECT g, 'x' || g, g / 3.0, jsonb_build_object('g', g), date '2026-01-01' + g \
               FROM generate_series(1, 5000) g",
        )
        .unwrap();
    }
    let n: i64 = a
        .query_one("SELECT count(*) FROM sync_diff('t')", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    a.batch_execute("CREATE TABLE only_here (id int PRIMARY KEY); CREATE TABLE keyless (v int)")
        .unwrap();
    let (code, message, _, hint) = db_error(
        a.batch_execute("SELECT * FROM sync_diff('only_here')")
            .unwrap_err(),
    );
    assert_eq!(code, "42P01", "{message}");
    assert!(message.contains("does not exist on node"), "{message}");
    assert!(!hint.is_empty());
    let (code, message, _, _) = db_error(
        a.batch_execute("SELECT * FROM sync_diff('keyless')")
            .unwrap_err(),
    );
    assert_eq!(code, "42P16", "{message}");
    b.batch_execute("ALTER TABLE t DROP COLUMN d").unwrap();
    let (code, message, _, _) =
        db_error(a.batch_execute("SELECT * FROM sync_diff('t')").unwrap_err());
    assert_eq!(code, "42703", "{message}");
    assert!(message.contains("\"d\""), "{message}");
}

#[test]
fn sync_reconcile_makes_the_copies_equal_either_way() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(
        &mut a,
        &mut b,
        "CREATE TABLE r (id int PRIMARY KEY, v text, n int)",
    );
    for c in [&mut a, &mut b] {
        c.batch_execute("INSERT INTO r SELECT g, 'v' || g, g FROM generate_series(1, 1000) g")
            .unwrap();
    }
    b.batch_execute(
        "UPDATE r SET v = 'b' WHERE id IN (10, 20, 30, 40, 50); \
         DELETE FROM r WHERE id IN (11, 21, 31, 41, 51); \
         INSERT INTO r SELECT g, 'only b', 0 FROM generate_series(2001, 2005) g",
    )
    .unwrap();
    let repaired: i64 = a
        .query_one("SELECT sync_reconcile('r')", &[])
        .unwrap()
        .get(0);
    assert_eq!(repaired, 15);
    assert_eq!(
        table_hash(&mut a, "r"),
        table_hash(&mut b, "r"),
        "B is like A now"
    );
    assert_eq!(table_hash(&mut a, "r").0, 1000);

    a.batch_execute(
        "UPDATE r SET v = 'a' WHERE id IN (1, 2, 3); DELETE FROM r WHERE id IN (4, 5, 6)",
    )
    .unwrap();
    b.batch_execute(
        "INSERT INTO r VALUES (3001, 'new on b', 1), (3002, 'new on b', 2), (3003, NULL, NULL)",
    )
    .unwrap();
    let repaired: i64 = a
        .query_one("SELECT sync_reconcile('r', prefer => 'peer')", &[])
        .unwrap()
        .get(0);
    assert_eq!(repaired, 9);
    assert_eq!(
        table_hash(&mut a, "r"),
        table_hash(&mut b, "r"),
        "A is like B now"
    );
    assert_eq!(table_hash(&mut a, "r").0, 1003);

    let (code, message, _, _) = db_error(
        a.batch_execute("SELECT sync_reconcile('r', prefer => 'nobody')")
            .unwrap_err(),
    );
    assert_eq!(code, "22023", "{message}");

    // on a linked table the repair is not sent back as a change
    b.batch_execute("DELETE FROM r WHERE id > 3000").unwrap();
    a.execute("SELECT sync_link_table('r', mode => 'async')", &[])
        .unwrap();
    let repaired: i64 = b
        .query_one("SELECT sync_reconcile('r', prefer => 'peer')", &[])
        .unwrap()
        .get(0);
    assert_eq!(repaired, 3);
    assert_eq!(table_hash(&mut a, "r"), table_hash(&mut b, "r"));
    for c in [&mut a, &mut b] {
        assert_eq!(queued(c), 0, "nothing echoed");
    }
}

#[test]
fn linking_with_copy_brings_existing_rows_together() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    for t in ["c", "d", "e"] {
        both(
            &mut a,
            &mut b,
            &format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)"),
        );
        a.batch_execute(&format!(
            "INSERT INTO {t} SELECT g, 'same' FROM generate_series(1, 100) g"
        ))
        .unwrap();
        b.batch_execute(&format!(
            "INSERT INTO {t} SELECT g, CASE WHEN g BETWEEN 60 AND 64 THEN 'b' ELSE 'same' END \
               FROM generate_series(51, 150) g"
        ))
        .unwrap();
    }
    let (code, message, _, hint) = db_error(
        a.batch_execute("SELECT sync_link_table('c', copy => 'everything')")
            .unwrap_err(),
    );
    assert_eq!(code, "22023", "{message}");
    assert!(hint.contains("'missing'"), "{hint}");
    assert_eq!(links(&mut a), 0);

    // missing: rows on one side only are copied, differing rows are left and reported
    a.execute("SELECT sync_link_table('c', copy => 'missing')", &[])
        .unwrap();
    assert_eq!(table_hash(&mut a, "c").0, 150);
    assert_eq!(table_hash(&mut b, "c").0, 150);
    let differing: Vec<i64> = a
        .query(
            "SELECT (key->>'id')::int8, kind FROM sync_diff('c') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r.get::<_, String>(1), "differs");
            r.get(0)
        })
        .collect();
    assert_eq!(differing, vec![60, 61, 62, 63, 64]);

    // to_peer / from_peer: one copy becomes the other, then changes flow as usual
    a.execute("SELECT sync_link_table('d', copy => 'to_peer')", &[])
        .unwrap();
    assert_eq!(table_hash(&mut b, "d"), table_hash(&mut a, "d"));
    assert_eq!(table_hash(&mut a, "d").0, 100);
    a.execute("SELECT sync_link_table('e', copy => 'from_peer')", &[])
        .unwrap();
    assert_eq!(table_hash(&mut a, "e"), table_hash(&mut b, "e"));
    assert_eq!(table_hash(&mut a, "e").0, 100);
    a.execute("UPDATE e SET v = 'after' WHERE id = 150", &[])
        .unwrap();
    assert_eq!(table_hash(&mut a, "e"), table_hash(&mut b, "e"));
    for c in [&mut a, &mut b] {
        assert_eq!(queued(c), 0);
    }
}
