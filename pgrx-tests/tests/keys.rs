//! Rows matched by a sync key instead of the primary key, with columns each node keeps for
//! itself: the same person is id 1 on one node and id 101 on the other.

use synclink_e2e::{both, count, db_error, links, queued, status, Nodes};

const PEOPLE: &str = "CREATE TABLE people (
    id    bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name  text NOT NULL,
    note  text
)";

/// Every row as the nodes agree on it: without the excluded columns, by the key.
fn shared_rows(c: &mut postgres::Client) -> Vec<(String, String)> {
    c.query("SELECT email, name FROM people ORDER BY email", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn id_of(c: &mut postgres::Client, email: &str) -> i64 {
    c.query_one("SELECT id FROM people WHERE email = $1", &[&email])
        .unwrap()
        .get(0)
}

#[test]
fn rows_are_matched_by_the_sync_key_and_excluded_columns_stay_local() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PEOPLE);
    a.batch_execute(
        "INSERT INTO people (id, email, name) VALUES (1, 'ann@x', 'Ann'), (2, 'bob@x', 'Bob'); \
         SELECT setval('people_id_seq', 2)",
    )
    .unwrap();
    b.batch_execute(
        "INSERT INTO people (id, email, name) VALUES (101, 'ann@x', 'Ann'), (102, 'bob@x', 'Bob'); \
         SELECT setval('people_id_seq', 102)",
    )
    .unwrap();
    a.execute(
        "SELECT sync_link_table('people', key => ARRAY['email'], exclude => ARRAY['id', 'note'])",
        &[],
    )
    .unwrap();
    let shown = status(&mut b, "people");
    assert_eq!(shown.key, vec!["email".to_string()]);
    assert_eq!(shown.excluded, vec!["id".to_string(), "note".to_string()]);

    // inserts on either side get the receiving node's own id
    a.execute(
        "INSERT INTO people (email, name) VALUES ('cy@x', 'Cy')",
        &[],
    )
    .unwrap();
    b.execute(
        "INSERT INTO people (email, name) VALUES ('dee@x', 'Dee')",
        &[],
    )
    .unwrap();
    // updates by key, in both directions; excluded columns are each node's own
    b.execute(
        "UPDATE people SET name = 'Ann B', note = 'only on b' WHERE email = 'ann@x'",
        &[],
    )
    .unwrap();
    a.execute("UPDATE people SET note = 'only on a'", &[])
        .unwrap();
    // a key change: B's row keeps its own id, its excluded note and what refers to it
    b.batch_execute(
        "UPDATE people SET note = 'kept on b' WHERE email = 'bob@x'; \
         CREATE TABLE orders (id int PRIMARY KEY, person_id bigint NOT NULL REFERENCES people (id)); \
         INSERT INTO orders VALUES (1, 102)",
    )
    .unwrap();
    a.execute(
        "UPDATE people SET email = 'robert@x' WHERE email = 'bob@x'",
        &[],
    )
    .unwrap();
    assert_eq!(id_of(&mut b, "robert@x"), 102, "re-keyed in place");
    let kept: Option<String> = b
        .query_one("SELECT note FROM people WHERE id = 102", &[])
        .unwrap()
        .get(0);
    assert_eq!(kept.as_deref(), Some("kept on b"));
    // deletes
    b.execute("DELETE FROM people WHERE email = 'cy@x'", &[])
        .unwrap();

    let rows = shared_rows(&mut a);
    assert_eq!(rows, shared_rows(&mut b));
    assert_eq!(
        rows,
        vec![
            ("ann@x".to_string(), "Ann B".to_string()),
            ("dee@x".to_string(), "Dee".to_string()),
            ("robert@x".to_string(), "Bob".to_string()),
        ]
    );
    assert_eq!(id_of(&mut a, "ann@x"), 1, "primary keys are not copied");
    assert_eq!(id_of(&mut b, "ann@x"), 101);
    assert_eq!(
        (id_of(&mut a, "dee@x"), id_of(&mut b, "dee@x")),
        (4, 104),
        "a row from the other node takes this node's next id"
    );
    assert_eq!(
        count(
            &mut a,
            "SELECT count(*) FROM people WHERE note = 'only on a'"
        ),
        3
    );
    assert_eq!(
        count(
            &mut b,
            "SELECT count(*) FROM people WHERE note = 'only on a'"
        ),
        0,
        "excluded columns are not sent"
    );
    let note: Option<String> = b
        .query_one("SELECT note FROM people WHERE email = 'ann@x'", &[])
        .unwrap()
        .get(0);
    assert_eq!(note.as_deref(), Some("only on b"), "nor overwritten");
}

#[test]
fn bad_keys_and_exclusions_are_refused_and_leave_nothing_behind() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PEOPLE);
    // on B the note column must have a value, and there is no default for it
    b.batch_execute(
        "UPDATE people SET note = ''; ALTER TABLE people ALTER COLUMN note SET NOT NULL",
    )
    .unwrap();
    let cases: [(&str, &str, &str, &str); 5] = [
        (
            "SELECT sync_link_table('people', key => ARRAY['mail'])",
            "42703",
            "column \"mail\" of \"public\".\"people\" does not exist",
            "key =>",
        ),
        (
            "SELECT sync_link_table('people', key => ARRAY['name'])",
            "42P10",
            "no unique index of \"public\".\"people\" covers exactly (\"name\")",
            "CREATE UNIQUE INDEX",
        ),
        (
            "SELECT sync_link_table('people', key => ARRAY['email'], exclude => ARRAY['email'])",
            "22023",
            "cannot be both part of the key and excluded",
            "exclude other columns",
        ),
        (
            "SELECT sync_link_table('people', key => ARRAY['email'], exclude => ARRAY['id', 'nope'])",
            "42703",
            "column \"nope\"",
            "column names",
        ),
        (
            "SELECT sync_link_table('people', key => ARRAY['email'], exclude => ARRAY['id', 'note'])",
            "55000",
            "excluded column \"note\" of \"public\".\"people\" on node",
            "SET DEFAULT",
        ),
    ];
    for (sql, code, text, hint_text) in cases {
        let (got, message, _, hint) = db_error(a.batch_execute(sql).unwrap_err());
        assert_eq!(got, code, "{sql}: {message}");
        assert!(message.contains(text), "{sql}: {message}");
        assert!(hint.contains(hint_text), "{sql}: {hint}");
    }
    for c in [&mut a, &mut b] {
        assert_eq!(
            links(c)
                + count(
                    c,
                    "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'people'::regclass"
                ),
            0,
            "nothing half-made"
        );
    }
    // excluding the primary key without naming another key leaves nothing to match rows by
    let (code, message, _, _) = db_error(
        a.batch_execute("SELECT sync_link_table('people', exclude => ARRAY['id'])")
            .unwrap_err(),
    );
    assert_eq!(code, "22023", "{message}");
}

/// A sync key that later loses its NOT NULL: a row with no key is refused by the version
/// table's constraint, whichever capture path the statement takes, and nothing is queued.
#[test]
fn a_row_without_its_sync_key_is_refused() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PEOPLE);
    a.execute(
        "SELECT sync_link_table('people', key => ARRAY['email'], exclude => ARRAY['id', 'note'], mode => 'async')",
        &[],
    )
    .unwrap();
    a.batch_execute("ALTER TABLE people DROP CONSTRAINT people_email_key; ALTER TABLE people ALTER COLUMN email DROP NOT NULL")
        .unwrap();
    let (code, message, _, _) = db_error(
        a.batch_execute("INSERT INTO people (email, name) VALUES (NULL, 'nobody')")
            .unwrap_err(),
    );
    assert_eq!(code, "23502", "{message}");
    assert!(message.contains("\"email\""), "{message}");
    assert_eq!(queued(&mut a), 0);
    assert_eq!(count(&mut a, "SELECT count(*) FROM people"), 0);
}
