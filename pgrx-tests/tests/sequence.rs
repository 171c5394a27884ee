//! Shared sequences: ids drawn on either node never collide, for both strategies, and undo
//! puts back what was there.

use synclink_e2e::{both, count, db_error, flush_to, same, Nodes};

const PRODUCTS: &str = "CREATE TABLE products (id bigserial PRIMARY KEY, name text NOT NULL)";
const WRITERS_PER_SIDE: usize = 2;
const ROWS_PER_WRITER: i64 = 500;

fn default_of(c: &mut postgres::Client) -> String {
    c.query_one(
        "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'products'::regclass",
        &[],
    )
    .unwrap()
    .get(0)
}

fn increment_of(c: &mut postgres::Client) -> i64 {
    count(
        c,
        "SELECT seqincrement FROM pg_sequence WHERE seqrelid = 'products_id_seq'::regclass",
    )
}

/// Several writers on each node insert rows taking the default id, all at once. Returns the
/// ids each node's writers got.
fn insert_concurrently(nodes: &Nodes) -> (Vec<i64>, Vec<i64>) {
    let mut handles = Vec::new();
    for (side, conninfo) in [
        ('a', nodes.a.socket_conninfo()),
        ('b', nodes.b.socket_conninfo()),
    ] {
        for w in 0..WRITERS_PER_SIDE {
            let conninfo = conninfo.clone();
            handles.push(std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
                let ids: Vec<i64> = (0..ROWS_PER_WRITER)
                    .map(|i| {
                        c.query_one(
                            "INSERT INTO products (name) VALUES ($1) RETURNING id",
                            &[&format!("{side}{w}-{i}")],
                        )
                        .unwrap_or_else(|e| panic!("insert on {side}: {e}"))
                        .get(0)
                    })
                    .collect();
                (side, ids)
            }));
        }
    }
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for h in handles {
        let (side, ids) = h.join().unwrap();
        if side == 'a' {
            on_a.extend(ids);
        } else {
            on_b.extend(ids);
        }
    }
    (on_a, on_b)
}

/// A linked products table with history: rows made on A before, and a row on B whose id is
/// ahead of A's sequence (the ids drifted apart).
fn linked_with_history() -> (Nodes, postgres::Client, postgres::Client) {
    let (nodes, mut a, mut b) = Nodes::two_clusters(&[]).peered();
    both(&mut a, &mut b, PRODUCTS);
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    a.execute(
        "INSERT INTO products (name) SELECT 'old ' || g FROM generate_series(1, 50) g",
        &[],
    )
    .unwrap();
    b.execute("INSERT INTO products VALUES (700, 'made on b')", &[])
        .unwrap();
    (nodes, a, b)
}

fn assert_no_collision(a: &mut postgres::Client, b: &mut postgres::Client, ids: usize) {
    let expected = 51 + ids as i64;
    assert_eq!(count(a, "SELECT count(*) FROM products"), expected);
    same(a, b, "products");
}

#[test]
fn a_shared_sequence_hands_out_ids_that_never_collide() {
    let (nodes, mut a, mut b) = linked_with_history();
    assert!(a
        .query_one("SELECT sync_share_sequence('products_id_seq')", &[])
        .unwrap()
        .get::<_, bool>(0));
    assert!(
        default_of(&mut b).starts_with("synclink."),
        "B's default draws from A"
    );

    let (on_a, on_b) = insert_concurrently(&nodes);
    let mut all: Vec<i64> = on_a.iter().chain(&on_b).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        4 * ROWS_PER_WRITER as usize,
        "no id handed out twice"
    );
    assert!(
        all[0] > 700,
        "the sequence moved past every id on either side"
    );
    assert_no_collision(&mut a, &mut b, all.len());

    // the owner is down: the peer refuses to invent an id, and says why
    nodes.a.stop_immediate();
    let (code, message, _, hint) = db_error(
        b.execute(
            "INSERT INTO products (name) VALUES ('while a is down')",
            &[],
        )
        .unwrap_err(),
    );
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("could not draw the next id of public.products.id from peer \"a\""),
        "{message}"
    );
    assert!(hint.contains("interleave"), "{hint}");
    assert_eq!(
        count(
            &mut b,
            "SELECT count(*) FROM products WHERE name = 'while a is down'"
        ),
        0
    );
    nodes.a.start_again();
    let mut a = nodes.a.connect();

    // undo from the other node: defaults back, sequences past every id, nothing left over
    b.execute("SELECT sync_unshare_sequence('products_id_seq')", &[])
        .unwrap();
    assert_eq!(default_of(&mut b), "nextval('products_id_seq'::regclass)");
    assert_eq!(
        count(&mut a, "SELECT count(*) FROM pg_class WHERE relnamespace = 'synclink'::regnamespace AND relname LIKE '%products_id_seq%'")
            + count(&mut b, "SELECT count(*) FROM pg_class WHERE relnamespace = 'synclink'::regnamespace AND relname LIKE '%products_id_seq%'")
            + count(&mut a, "SELECT count(*) FROM synclink.shared_sequence")
            + count(&mut b, "SELECT count(*) FROM synclink.shared_sequence"),
        0
    );
    let max = *all.last().unwrap();
    for c in [&mut a, &mut b] {
        let next: i64 = c
            .query_one(
                "INSERT INTO products (name) VALUES ('after') RETURNING id",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(next > max, "{next} > {max}");
        c.execute("DELETE FROM products WHERE name = 'after'", &[])
            .unwrap();
    }
}

#[test]
fn interleaved_sequences_never_collide_and_need_no_network() {
    let (nodes, mut a, mut b) = linked_with_history();
    a.execute(
        "SELECT sync_share_sequence('products_id_seq', strategy => 'interleave')",
        &[],
    )
    .unwrap();
    assert_eq!(increment_of(&mut a), 2);
    assert_eq!(increment_of(&mut b), 2);
    assert_eq!(
        default_of(&mut b),
        "nextval('products_id_seq'::regclass)",
        "defaults stay local"
    );

    let (on_a, on_b) = insert_concurrently(&nodes);
    assert!(on_a.iter().all(|id| id % 2 == 1 && *id > 700), "A: odd ids");
    assert!(
        on_b.iter().all(|id| id % 2 == 0 && *id > 700),
        "B: even ids"
    );
    assert_no_collision(&mut a, &mut b, on_a.len() + on_b.len());

    // inserts on B do not need A (the link queues them meanwhile)
    nodes.a.stop_immediate();
    let id: i64 = b
        .query_one(
            "INSERT INTO products (name) VALUES ('alone') RETURNING id",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(id % 2, 0);
    nodes.a.start_again();
    let mut a = nodes.a.connect();
    flush_to(&mut b, "a");

    a.execute("SELECT sync_unshare_sequence('products_id_seq')", &[])
        .unwrap();
    assert_eq!(increment_of(&mut a), 1);
    assert_eq!(increment_of(&mut b), 1);
    assert_eq!(
        count(&mut b, "SELECT count(*) FROM synclink.shared_sequence"),
        0
    );
}

#[test]
fn sequence_errors_are_clear_and_leave_nothing_behind() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PRODUCTS);
    both(&mut a, &mut b, "CREATE SEQUENCE lonely");
    // B's copy draws no default from a sequence
    both(
        &mut a,
        &mut b,
        "CREATE TABLE items (id bigint PRIMARY KEY, name text)",
    );
    a.batch_execute("ALTER TABLE items ALTER COLUMN id SET DEFAULT nextval('lonely')")
        .unwrap();
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    a.execute("SELECT sync_link_table('items')", &[]).unwrap();

    let cases: [(&str, &str, &str); 6] = [
        (
            "SELECT sync_share_sequence('products_id_seq', strategy => 'random')",
            "22023",
            "unknown strategy \"random\"",
        ),
        (
            "SELECT sync_share_sequence('products')",
            "42809",
            "products is not a sequence",
        ),
        (
            "SELECT sync_share_sequence('nope_seq')",
            "42P01",
            "does not exist",
        ),
        (
            "SELECT sync_share_sequence('products_id_seq', peer => 'nobody')",
            "42704",
            "nobody",
        ),
        (
            "SELECT sync_unshare_sequence('products_id_seq')",
            "55000",
            "is not shared with peer \"b\"",
        ),
        (
            "SELECT sync_share_sequence('lonely')",
            "55000",
            "takes no default from a sequence",
        ),
    ];
    for (sql, code, text) in cases {
        let (got, message, _, hint) = db_error(a.batch_execute(sql).unwrap_err());
        assert_eq!(got, code, "{sql}: {message}");
        assert!(message.contains(text), "{sql}: {message}");
        assert!(code == "42P01" || !hint.is_empty(), "{sql}: no hint");
    }
    b.batch_execute("CREATE SEQUENCE unused").unwrap();
    let (code, message, _, _) = db_error(
        b.batch_execute("SELECT sync_share_sequence('unused')")
            .unwrap_err(),
    );
    assert_eq!(code, "55000", "{message}");
    assert!(
        message.contains("not used by a column of a table linked"),
        "{message}"
    );

    a.execute("SELECT sync_share_sequence('products_id_seq')", &[])
        .unwrap();
    let (code, message, _, _) = db_error(
        a.batch_execute("SELECT sync_share_sequence('products_id_seq', strategy => 'interleave')")
            .unwrap_err(),
    );
    assert_eq!(code, "55006", "{message}");
    // nothing half-made by the failed calls: one share, its view, its member objects
    assert_eq!(
        count(&mut a, "SELECT count(*) FROM synclink.shared_sequence"),
        1
    );
    assert_eq!(
        count(&mut a, "SELECT count(*) FROM pg_views WHERE schemaname = 'synclink' AND viewname LIKE '%nextval'"),
        1
    );
    assert_eq!(increment_of(&mut a), 1);

    // unlinking the table undoes the share on both nodes
    a.execute("SELECT sync_unlink_table('products')", &[])
        .unwrap();
    assert_eq!(default_of(&mut b), "nextval('products_id_seq'::regclass)");
    assert_eq!(
        count(&mut a, "SELECT count(*) FROM synclink.shared_sequence")
            + count(&mut b, "SELECT count(*) FROM synclink.shared_sequence"),
        0
    );
}
