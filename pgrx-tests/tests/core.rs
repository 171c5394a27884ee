//! Two nodes, one linked table: changes made on either side appear on the other.

use synclink_e2e::{both, count, db_error, links, node_name, same, table_hash_by, Nodes};

const PRODUCTS: &str = "CREATE TABLE products (
    id bigint PRIMARY KEY,
    name varchar(255) NOT NULL,
    price integer,
    created_at timestamp NOT NULL DEFAULT now(),
    updated_at timestamp NOT NULL DEFAULT now())";

#[test]
fn changes_flow_both_ways_for_single_rows_and_bulk_statements() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PRODUCTS);
    // one call on A links both directions; B never runs a migration of its own
    let linked: bool = a
        .query_one("SELECT sync_link_table('products')", &[])
        .unwrap()
        .get(0);
    assert!(linked);

    a.execute(
        "INSERT INTO products (id, name, price) VALUES (1, 'kettle', 25)",
        &[],
    )
    .unwrap();
    b.execute(
        "INSERT INTO products (id, name, price) VALUES (2, 'teapot', 30)",
        &[],
    )
    .unwrap();
    assert_eq!(same(&mut a, &mut b, "products"), 2);

    b.execute("UPDATE products SET price = 26 WHERE id = 1", &[])
        .unwrap();
    a.execute("DELETE FROM products WHERE id = 2", &[]).unwrap();
    assert_eq!(same(&mut a, &mut b, "products"), 1);
    let price: i32 = a
        .query_one("SELECT price FROM products WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(price, 26);

    // bulk statements cross in change records of several thousand rows
    a.execute("INSERT INTO products (id, name, price) SELECT g, 'item ' || g, g % 1000 FROM generate_series(10, 100009) g", &[]).unwrap();
    assert_eq!(same(&mut a, &mut b, "products"), 100_001);
    b.execute(
        "UPDATE products SET price = coalesce(price, 0) + 1, updated_at = now()",
        &[],
    )
    .unwrap();
    assert_eq!(same(&mut a, &mut b, "products"), 100_001);
    a.execute("DELETE FROM products WHERE id BETWEEN 5000 AND 60000", &[])
        .unwrap();
    assert_eq!(same(&mut a, &mut b, "products"), 45_000);
    b.execute("TRUNCATE products", &[]).unwrap();
    assert_eq!(same(&mut a, &mut b, "products"), 0);
}

#[test]
fn key_changes_and_nulls_round_trip() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PRODUCTS);
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    a.execute("INSERT INTO products (id, name, price) SELECT g, 'p' || g, NULL FROM generate_series(1, 12000) g", &[]).unwrap();
    // Keys move into other rows' old keys, across the boundaries of change records: rows
    // 1..6000 leave for 100001.., then rows 6001..12000 take their keys (a sequential scan
    // visits them in that order, so the sender's unique index accepts it).
    a.execute(
        "UPDATE products SET id = CASE WHEN id <= 6000 THEN id + 100000 ELSE id - 6000 END",
        &[],
    )
    .unwrap();
    same(&mut a, &mut b, "products");
    let n: String = b
        .query_one("SELECT name FROM products WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, "p6001");
    b.execute("UPDATE products SET id = -id WHERE id > 100000", &[])
        .unwrap();
    same(&mut a, &mut b, "products");
    b.execute("UPDATE products SET price = 5 WHERE id = 100", &[])
        .unwrap();
    b.execute("UPDATE products SET price = NULL WHERE id = 100", &[])
        .unwrap();
    assert_eq!(same(&mut a, &mut b, "products"), 12_000);
    let nulls = count(&mut a, "SELECT count(*) FROM products WHERE price IS NULL");
    assert_eq!(nulls, 12_000);
}

#[test]
fn every_supported_column_type_round_trips_exactly() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    let ddl = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE TABLE everything (
            id integer PRIMARY KEY,
            c_smallint smallint, c_bigint bigint, c_numeric numeric, c_real real, c_double double precision,
            c_text text, c_varchar varchar(20), c_char char(5), c_bool boolean, c_date date,
            c_ts timestamp, c_tstz timestamptz, c_interval interval, c_uuid uuid, c_jsonb jsonb,
            c_json json, c_bytea bytea, c_text_arr text[], c_int_arr integer[], c_mood mood,
            c_total numeric GENERATED ALWAYS AS (c_numeric * 2) STORED)";
    both(&mut a, &mut b, ddl);
    // the receiving side's sessions use other output settings: the wire format must not care
    let db_b = &nodes.b.db;
    b.batch_execute(&format!("ALTER DATABASE {db_b} SET \"DateStyle\" = 'SQL, DMY'; ALTER DATABASE {db_b} SET \"IntervalStyle\" = 'sql_standard'; ALTER DATABASE {db_b} SET timezone = 'Asia/Kolkata'")).unwrap();
    a.execute("SELECT sync_link_table('everything')", &[])
        .unwrap();
    a.batch_execute(r#"SET "IntervalStyle" = 'iso_8601'; SET bytea_output = 'escape'; SET extra_float_digits = 0;
        INSERT INTO everything (id, c_smallint, c_bigint, c_numeric, c_real, c_double, c_text, c_varchar, c_char,
            c_bool, c_date, c_ts, c_tstz, c_interval, c_uuid, c_jsonb, c_json, c_bytea, c_text_arr, c_int_arr, c_mood)
        VALUES
        (1, -32768, 9223372036854775807, 12345678901234567890.000000000123, 3.14159274, 2.718281828459045,
         E'tab\there, quote '' and "dq", backslash \\ and newline\n', 'varchar', 'ab', true, '2024-02-29',
         '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.123456+05:30', '1 year 2 mons -3 days 04:05:06.789',
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.50, null], "b": {"c": "d"}}',
         '{"keep":  "whitespace",   "dup": 1, "dup": 2}', '\x00ff10'::bytea, ARRAY['x', NULL, 'y z', '"q"', '{}'],
         ARRAY[1, NULL, -3], 'happy'),
        (2, NULL, NULL, 'NaN', 'Infinity', '-Infinity', '', NULL, NULL, NULL, 'infinity', '-infinity', NULL, NULL,
         NULL, 'null', 'null', '\x'::bytea, '{}', ARRAY[]::integer[], NULL),
        (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL)"#).unwrap();
    b.batch_execute(
        "UPDATE everything SET c_numeric = 1.5, c_mood = 'sad', c_json = '[1,  2]' WHERE id = 3",
    )
    .unwrap();

    // compare in one fixed text form, column by column, generated column included
    let cols = "id, c_smallint, c_bigint, c_numeric, c_real::float8, c_double, c_text, c_varchar, c_char::text, c_bool,
        c_date, c_ts, c_tstz AT TIME ZONE 'UTC', to_char(c_interval, 'YYYY-MM-DD HH24:MI:SS.US'), c_uuid, c_jsonb,
        c_json::text, encode(c_bytea, 'hex'), c_text_arr, c_int_arr, c_mood::text, c_total";
    let q = format!("SET \"DateStyle\" = 'ISO'; SET extra_float_digits = 3; SELECT string_agg(row({cols})::text, E'\\n' ORDER BY id) FROM everything");
    let dump = |c: &mut postgres::Client| -> String {
        let mut out = String::new();
        for m in c.simple_query(&q).unwrap() {
            if let postgres::SimpleQueryMessage::Row(r) = m {
                out = r.get(0).unwrap().to_string();
            }
        }
        out
    };
    let (da, db) = (dump(&mut a), dump(&mut b));
    assert_eq!(da, db);
    assert!(
        da.contains("\"{\"\"keep\"\":  \"\"whitespace\"\",   \"\"dup\"\": 1, \"\"dup\"\": 2}\""),
        "json text kept byte for byte: {da}"
    );
    assert!(da.contains("3.14159274"), "{da}");
    let total: String = b
        .query_one("SELECT c_total::text FROM everything WHERE id = 3", &[])
        .unwrap()
        .get(0);
    assert_eq!(total, "3.0", "generated column recomputed on the receiver");
}

#[test]
fn applied_changes_are_not_echoed_back() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PRODUCTS);
    // counts every row insert attempted on A's table; synclink applies every change as an
    // INSERT ... ON CONFLICT, so an echo of A's own changes would be counted too
    a.batch_execute(
        "CREATE TABLE attempts (n bigint NOT NULL);
         INSERT INTO attempts VALUES (0);
         CREATE FUNCTION count_attempt() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN UPDATE public.attempts SET n = n + 1; RETURN NEW; END $$;
         CREATE TRIGGER count_attempt BEFORE INSERT ON products FOR EACH ROW EXECUTE FUNCTION count_attempt();",
    )
    .unwrap();
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    a.execute(
        "INSERT INTO products (id, name) SELECT g, 'n' FROM generate_series(1, 100) g",
        &[],
    )
    .unwrap();
    a.execute("UPDATE products SET price = 1", &[]).unwrap();
    same(&mut a, &mut b, "products");
    let attempts = count(&mut a, "SELECT n FROM attempts");
    assert_eq!(
        attempts, 100,
        "A saw its own 100 inserts and nothing came back from B"
    );
    b.execute("UPDATE products SET price = 2 WHERE id <= 10", &[])
        .unwrap();
    let attempts = count(&mut a, "SELECT n FROM attempts");
    assert_eq!(attempts, 110, "B's 10 updates arrived once each");
    same(&mut a, &mut b, "products");
}

#[test]
fn an_application_role_cannot_silence_or_forge_replication() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PRODUCTS);
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    a.batch_execute("CREATE ROLE app LOGIN PASSWORD 'app-pw'; GRANT ALL ON products TO app")
        .unwrap();
    let mut app = nodes.a.connect_as("app", "app-pw");
    // the echo marker is not a setting: setting look-alikes changes nothing
    app.batch_execute("SET synclink.origin = 'shop_whatever'; SET application_name = 'synclink'")
        .unwrap();
    app.execute(
        "INSERT INTO products (id, name) VALUES (7, 'from app')",
        &[],
    )
    .unwrap();
    assert_eq!(same(&mut a, &mut b, "products"), 1);
    for forged in [
        "SELECT synclink.apply('x', 'x', 'public', 'products', 'I', NULL, NULL)",
        "SELECT synclink.ship(1, 'I', '{}', NULL, NULL)",
        "INSERT INTO synclink.inbox VALUES ('x', 'x', 'public', 'products', 'D', NULL, '{}')",
        "INSERT INTO synclink.b_inbox VALUES ('x', 'x', 'public', 'products', 'D', NULL, '{}')",
        "SELECT synclink.handle_request('x', 'unlink', '{}', NULL)",
        "SELECT synclink.add_bulk_tables()",
    ] {
        let err = app.batch_execute(forged).expect_err(forged);
        let code = err
            .as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_default();
        assert_eq!(code, "42501", "{forged}: {err}");
    }
}

#[test]
fn linking_twice_is_a_no_op_and_unlink_keeps_the_data() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PRODUCTS);
    assert!(a
        .query_one("SELECT sync_link_table('products')", &[])
        .unwrap()
        .get::<_, bool>(0));
    // a migration that runs twice, from either side
    assert!(!a
        .query_one("SELECT sync_link_table('products')", &[])
        .unwrap()
        .get::<_, bool>(0));
    assert!(!b
        .query_one("SELECT sync_link_table('products')", &[])
        .unwrap()
        .get::<_, bool>(0));
    a.execute("INSERT INTO products (id, name) VALUES (1, 'x')", &[])
        .unwrap();
    let shown = count(
        &mut b,
        "SELECT count(*) FROM sync_status WHERE \"table\" = 'products'::regclass AND peer = 'a'",
    );
    assert_eq!(shown, 1);

    assert!(b
        .query_one("SELECT sync_unlink_table('products')", &[])
        .unwrap()
        .get::<_, bool>(0));
    for c in [&mut a, &mut b] {
        let (triggers, links): (i64, i64) = {
            let r = c.query_one("SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'products'::regclass), (SELECT count(*) FROM synclink.link)", &[]).unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!((triggers, links), (0, 0));
        let objects = count(c, "SELECT (SELECT count(*) FROM pg_proc WHERE pronamespace = 'synclink'::regnamespace AND prorettype = 'trigger'::regtype AND proname LIKE 'products%') + (SELECT count(*) FROM pg_type WHERE typnamespace = 'synclink'::regnamespace AND typname LIKE 'products%')");
        assert_eq!(objects, 0, "capture function and row type are gone");
        let rows = count(c, "SELECT count(*) FROM products");
        assert_eq!(rows, 1);
    }
    a.execute(
        "INSERT INTO products (id, name) VALUES (2, 'only on a')",
        &[],
    )
    .unwrap();
    let on_b = count(&mut b, "SELECT count(*) FROM products");
    assert_eq!(on_b, 1);
}

#[test]
fn drop_extension_leaves_nothing_behind() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PRODUCTS);
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    a.batch_execute("DROP EXTENSION synclink").unwrap();
    let leftovers: Vec<(String, i64)> = a
        .query(
            "SELECT 'triggers', count(*) FROM pg_trigger WHERE tgname LIKE 'synclink%'
             UNION ALL SELECT 'servers', count(*) FROM pg_foreign_server
             UNION ALL SELECT 'wrappers', count(*) FROM pg_foreign_data_wrapper
             UNION ALL SELECT 'mappings', count(*) FROM pg_user_mappings
             UNION ALL SELECT 'foreign tables', count(*) FROM pg_foreign_table
             UNION ALL SELECT 'schema', count(*) FROM pg_namespace WHERE nspname = 'synclink'
             UNION ALL SELECT 'functions', count(*) FROM pg_proc WHERE proname LIKE 'sync\\_%' OR proname LIKE 'products\\_%'
             UNION ALL SELECT 'types', count(*) FROM pg_type WHERE typname LIKE 'products\\_b%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (what, n) in leftovers {
        assert_eq!(n, 0, "{what} left behind");
    }
    // and the peer stopped sending: its half of the link was removed too
    let peer_triggers = count(
        &mut b,
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'products'::regclass",
    );
    assert_eq!(peer_triggers, 0);
    b.execute(
        "INSERT INTO products (id, name) VALUES (1, 'b keeps working')",
        &[],
    )
    .unwrap();
}

#[test]
fn odd_identifiers_are_names_not_sql() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    let ddl = r#"CREATE SCHEMA "Sales Dept";
        CREATE TABLE "Sales Dept"."Order ""Items""; DROP TABLE x; --" (
            "Line ID" integer PRIMARY KEY, "qty'); DELETE FROM t; --" integer, "Ünïcode" text)"#;
    both(&mut a, &mut b, ddl);
    a.batch_execute("CREATE TABLE x (i int)").unwrap();
    let t = r#""Sales Dept"."Order ""Items""; DROP TABLE x; --""#;
    a.execute("SELECT sync_link_table($1::text::regclass)", &[&t])
        .unwrap();
    a.execute(
        &format!(r#"INSERT INTO {t} VALUES (1, 2, 'ä'), (2, NULL, '"')"#),
        &[],
    )
    .unwrap();
    b.execute(
        &format!(r#"UPDATE {t} SET "qty'); DELETE FROM t; --" = 9 WHERE "Line ID" = 2"#),
        &[],
    )
    .unwrap();
    let ha = table_hash_by(&mut a, t, r#"t."Line ID""#);
    assert_eq!(ha, table_hash_by(&mut b, t, r#"t."Line ID""#));
    assert_eq!(ha.0, 2);
    a.execute("SELECT count(*) FROM x", &[]).unwrap();
    a.execute("SELECT sync_unlink_table($1::text::regclass)", &[&t])
        .unwrap();
}

#[test]
fn plain_create_extension_and_a_preloaded_library_work_alike() {
    let (_nodes, mut a, mut b) =
        Nodes::two_clusters(&["shared_preload_libraries = 'synclink'"]).peered();
    // CREATE EXTENSION without CASCADE was enough: synclink brings its own wrapper
    let wrappers = count(
        &mut a,
        "SELECT count(*) FROM pg_foreign_data_wrapper WHERE fdwname = 'synclink'",
    );
    assert_eq!(wrappers, 1);
    both(&mut a, &mut b, PRODUCTS);
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    a.execute(
        "INSERT INTO products (id, name) SELECT g, 'x' FROM generate_series(1, 1000) g",
        &[],
    )
    .unwrap();
    b.execute("UPDATE products SET price = 3 WHERE id % 2 = 0", &[])
        .unwrap();
    assert_eq!(same(&mut a, &mut b, "products"), 1000);
}

#[test]
fn a_record_applied_twice_or_onto_an_existing_row_converges() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PRODUCTS);
    // B already holds a row A is about to insert (data from before the link)
    b.execute(
        "INSERT INTO products (id, name, price) VALUES (1, 'stale', 1)",
        &[],
    )
    .unwrap();
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    a.execute(
        "INSERT INTO products (id, name, price) VALUES (1, 'fresh', 2), (2, 'new', 3)",
        &[],
    )
    .unwrap();
    assert_eq!(same(&mut a, &mut b, "products"), 2);

    // deliver the same insert records to B once more, as a retry would: same rows, same
    // versions
    let node_a = node_name(&mut a);
    let (rows, stamps): (String, String) = {
        let r = b
            .query_one(
                "SELECT array_agg(ROW(p.id, p.name, p.price, p.created_at, p.updated_at)::synclink.products_a_row ORDER BY p.id)::text,
                        array_agg(ROW(v.\"synclink$at\", v.\"synclink$node\", NULL, NULL, 'I', v.\"synclink$gen\")::synclink.stamp ORDER BY p.id)::text
                   FROM products p JOIN synclink.products_version v USING (id)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    for _ in 0..2 {
        b.execute(
            "SELECT synclink.apply($1, $1, 'public', 'products', 'I', $2, NULL, NULL, NULL, $3)",
            &[&node_a, &rows, &stamps],
        )
        .unwrap();
    }
    assert_eq!(same(&mut a, &mut b, "products"), 2);
    // a delete made on A after its insert of row 2, delivered twice
    let at: i64 = b
        .query_one(
            "SELECT \"synclink$at\" FROM synclink.products_version WHERE id = 2",
            &[],
        )
        .unwrap()
        .get(0);
    let gone = "{\"(2,x,,\\\"2024-01-01 00:00:00\\\",\\\"2024-01-01 00:00:00\\\")\"}";
    let stamp = format!("{{\"({},{node_a},{at},{node_a},D)\"}}", at + 1);
    for _ in 0..2 {
        b.execute(
            "SELECT synclink.apply($1, $1, 'public', 'products', 'D', NULL, $2, NULL, NULL, $3)",
            &[&node_a, &gone, &stamp],
        )
        .unwrap();
    }
    let left: Vec<i64> = b
        .query("SELECT id FROM products ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec![1]);
    // a redelivered version is the same change, not a conflict with itself
    let conflicts: i64 = b
        .query_one("SELECT count(*) FROM synclink.conflict", &[])
        .unwrap()
        .get(0);
    assert_eq!(conflicts, 0);
}

#[test]
fn schema_changes_keep_links_honest() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PRODUCTS);
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    for (sql, message) in [
        (
            "ALTER TABLE products DROP COLUMN price",
            "cannot change replicated columns",
        ),
        (
            "ALTER TABLE products RENAME COLUMN name TO title",
            "cannot change replicated columns",
        ),
        (
            "ALTER TABLE products ALTER COLUMN price TYPE bigint",
            "cannot change replicated columns",
        ),
        (
            "ALTER TABLE products RENAME TO goods",
            "cannot rename \"public\".\"goods\"",
        ),
    ] {
        let err = a.batch_execute(sql).expect_err(sql);
        let (code, msg, _, hint) = db_error(err);
        assert_eq!(code, "55006", "{sql}: {msg}");
        assert!(
            msg.contains(message) && hint.contains("sync_unlink_table"),
            "{sql}: {msg} / {hint}"
        );
    }
    // an added column is allowed, with a warning that it is not mirrored
    a.batch_execute("ALTER TABLE products ADD COLUMN note text")
        .unwrap();
    a.execute(
        "INSERT INTO products (id, name, note) VALUES (1, 'x', 'local only')",
        &[],
    )
    .unwrap();
    let on_b = count(&mut b, "SELECT count(*) FROM products");
    assert_eq!(on_b, 1);

    // dropping a linked table unlinks it on both nodes; the peer keeps working
    b.batch_execute("DROP TABLE products").unwrap();
    for c in [&mut a, &mut b] {
        let linked = links(c);
        let leftovers = count(c, "SELECT count(*) FROM pg_proc WHERE pronamespace = 'synclink'::regnamespace AND proname LIKE 'products%'");
        assert_eq!((linked, leftovers), (0, 0));
    }
    a.execute(
        "INSERT INTO products (id, name) VALUES (2, 'still fine')",
        &[],
    )
    .unwrap();
}
