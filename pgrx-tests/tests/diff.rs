//! sync_diff: the differences between two databases' copies of a table, found set-based.

use std::collections::BTreeSet;
use std::time::Instant;
use synclink_e2e::{both, db_error, Pair};

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
    let (_p, mut a, mut b) = Pair::peered();
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
    let (_p, mut a, mut b) = Pair::peered();
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
