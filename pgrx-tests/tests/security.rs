//! synclink holds a superuser's trust: each test here attacks it the way a hostile application
//! role, a table owner or a database owner could, and checks that nothing of theirs runs with
//! synclink's privileges and that nobody reads rows they may not.

use postgres::Client;
use std::time::Duration;
use synclink_e2e::{
    both, count, db_error, delivery_workers, flush, links, node_name, queued, wait_until, Nodes,
    SYNC_PASSWORD,
};

const PRODUCTS: &str = "CREATE TABLE products (id int PRIMARY KEY, name text)";

/// Schema `evil`, owned by `role`, with a function that counts its runs, as a superuser and
/// as anyone else, in two sequences (which a rollback does not undo). Everything below it
/// installs is named after PostgreSQL's own operators, so that a search path naming `evil`
/// first would pick it up.
fn evil_schema(c: &mut Client, role: &str) {
    c.batch_execute(&format!(
        "CREATE SCHEMA evil AUTHORIZATION {role};
         SET ROLE {role};
         CREATE SEQUENCE evil.as_superuser;
         CREATE SEQUENCE evil.as_other;
         CREATE FUNCTION evil.spy() RETURNS bool LANGUAGE plpgsql AS $$
         BEGIN
             IF (SELECT rolsuper FROM pg_catalog.pg_roles
                  WHERE rolname OPERATOR(pg_catalog.=) current_user) THEN
                 PERFORM pg_catalog.nextval('evil.as_superuser');
             ELSE
                 PERFORM pg_catalog.nextval('evil.as_other');
             END IF;
             RETURN true;
         END $$;
         CREATE FUNCTION evil.eq_int(int, int) RETURNS bool LANGUAGE sql
             AS $$ SELECT evil.spy() AND $1 OPERATOR(pg_catalog.=) $2 $$;
         CREATE OPERATOR evil.= (LEFTARG = int, RIGHTARG = int, FUNCTION = evil.eq_int);
         CREATE FUNCTION evil.eq_text(text, text) RETURNS bool LANGUAGE sql
             AS $$ SELECT evil.spy() AND $1 OPERATOR(pg_catalog.=) $2 $$;
         CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.eq_text);
         CREATE FUNCTION evil.ge_big(bigint, bigint) RETURNS bool LANGUAGE sql
             AS $$ SELECT evil.spy() AND $1 OPERATOR(pg_catalog.>=) $2 $$;
         CREATE OPERATOR evil.>= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.ge_big);
         GRANT USAGE ON SCHEMA evil TO PUBLIC;
         GRANT USAGE, SELECT ON evil.as_superuser, evil.as_other TO PUBLIC;
         RESET ROLE;"
    ))
    .unwrap();
}

/// How often the spy ran: (as a superuser, as anyone else). (0, 0): nothing of the
/// attacker's ran.
fn spied(c: &mut Client) -> (i64, i64) {
    let runs = |c: &mut Client, seq: &str| {
        count(
            c,
            &format!("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {seq}"),
        )
    };
    (runs(c, "evil.as_superuser"), runs(c, "evil.as_other"))
}

fn code(e: postgres::Error) -> String {
    db_error(e).0
}

#[test]
fn a_callers_operators_never_run_with_synclinks_privileges() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PRODUCTS);
    a.execute("SELECT sync_link_table('products', mode => 'async')", &[])
        .unwrap();
    a.batch_execute(
        "CREATE ROLE mallory LOGIN PASSWORD 'm-pw';
         GRANT INSERT, SELECT, UPDATE ON products TO mallory;
         CREATE TABLE mine (id int); ALTER TABLE mine OWNER TO mallory;",
    )
    .unwrap();
    evil_schema(&mut a, "mallory");
    let mut m = nodes.a.connect_as("mallory", "m-pw");
    m.batch_execute("SET search_path = evil, pg_catalog")
        .unwrap();

    // Attaching synclink's trigger functions to a table of one's own is refused outright.
    for f in [
        "synclink.capture_one('1')",
        "synclink.receive()",
        "synclink.queued()",
    ] {
        let err = m
            .batch_execute(&format!(
                "CREATE TRIGGER t AFTER INSERT ON public.mine FOR EACH STATEMENT EXECUTE FUNCTION {f}"
            ))
            .expect_err(f);
        assert_eq!(code(err), "42501", "{f}");
    }
    // A superuser who attaches it by mistake hands nothing over either: the link's catalog
    // is read with the search path pinned, and the trigger is refused before anything else.
    a.batch_execute(
        "CREATE TRIGGER t AFTER INSERT ON mine REFERENCING NEW TABLE AS new_rows
             FOR EACH STATEMENT EXECUTE FUNCTION synclink.capture_one('1')",
    )
    .unwrap();
    let err = m
        .batch_execute("INSERT INTO public.mine VALUES (1)")
        .unwrap_err();
    let (c, message, _, hint) = db_error(err);
    assert_eq!(c, "39P01", "{message}");
    assert!(
        message.contains("may only be called by the triggers of that link"),
        "{message}"
    );
    assert!(hint.contains("drop it"), "{hint}");
    assert_eq!(
        spied(&mut a),
        (0, 0),
        "the refused trigger ran the caller's operator"
    );

    // Writing the linked table with that search path: queued and delivered, nothing spied.
    m.batch_execute("INSERT INTO public.products VALUES (1, 'one')")
        .unwrap();
    // The backlog check counts every 1000th seq's queue: make the next write draw one.
    a.batch_execute(
        "SELECT setval('synclink.outbox_seq_seq', (last_value / 1000 + 1) * 1000 - 1)
           FROM synclink.outbox_seq_seq",
    )
    .unwrap();
    m.batch_execute(
        "SET synclink.backlog_warning = 1; INSERT INTO public.products VALUES (2, 'two');
         UPDATE public.products SET name = 'uno' WHERE id OPERATOR(pg_catalog.=) 1",
    )
    .unwrap();
    assert_eq!(spied(&mut a), (0, 0));
    assert_eq!(queued(&mut a), 3);
    flush(&mut a);
    assert_eq!(
        count(
            &mut b,
            "SELECT count(*) FROM products WHERE name IN ('uno', 'two')"
        ),
        2
    );
    assert_eq!(spied(&mut a), (0, 0));
}

#[test]
fn the_delivery_worker_ignores_a_database_owners_search_path() {
    let (nodes, mut a, mut b) =
        Nodes::two_clusters(&["shared_preload_libraries = 'synclink'"]).peered();
    both(&mut a, &mut b, PRODUCTS);
    a.execute("SELECT sync_link_table('products', mode => 'async')", &[])
        .unwrap();
    let db = &nodes.a.db;
    a.batch_execute(&format!(
        "CREATE ROLE dbo LOGIN PASSWORD 'd-pw'; ALTER DATABASE {db} OWNER TO dbo;"
    ))
    .unwrap();
    evil_schema(&mut a, "dbo");
    let mut owner = nodes.a.connect_as("dbo", "d-pw");
    owner
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET search_path = evil, pg_catalog"
        ))
        .unwrap();
    // The worker connects again with the database's settings.
    a.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE backend_type = 'synclink delivery'",
    )
    .unwrap();
    // (A superuser's own new session takes that search path too: not synclink's to guard.)
    let mut fresh = nodes.a.connect();
    fresh.batch_execute("SET search_path = public").unwrap();
    wait_until(Duration::from_secs(20), || {
        delivery_workers(&mut fresh) == 1
    });
    fresh
        .batch_execute("INSERT INTO public.products VALUES (1, 'one')")
        .unwrap();
    wait_until(Duration::from_secs(20), || {
        count(&mut b, "SELECT count(*) FROM products") == 1
    });
    assert_eq!(spied(&mut fresh), (0, 0));
}

#[test]
fn the_conflict_log_shows_each_role_only_tables_it_may_read() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(
        &mut a,
        &mut b,
        "CREATE TABLE secrets (id int PRIMARY KEY, v text); INSERT INTO secrets VALUES (1, 'start');
         CREATE TABLE notes (id int PRIMARY KEY, v text); INSERT INTO notes VALUES (1, 'start');",
    );
    for t in ["secrets", "notes"] {
        a.execute(
            &format!("SELECT sync_link_table('{t}', mode => 'async', conflict => 'manual')"),
            &[],
        )
        .unwrap();
        a.batch_execute(&format!("UPDATE {t} SET v = 'a'")).unwrap();
        b.batch_execute(&format!("UPDATE {t} SET v = 'b'")).unwrap();
    }
    flush(&mut a);
    assert_eq!(count(&mut b, "SELECT count(*) FROM synclink.conflict"), 2);
    b.batch_execute(
        "CREATE ROLE clerk LOGIN PASSWORD 'c-pw'; GRANT SELECT ON notes TO clerk;
         CREATE ROLE watcher LOGIN PASSWORD 'w-pw'; GRANT pg_monitor TO watcher;",
    )
    .unwrap();
    let mut clerk = nodes.b.connect_as("clerk", "c-pw");
    for sql in [
        "SELECT count(DISTINCT relid) FROM synclink.conflict",
        "SELECT count(DISTINCT \"table\") FROM sync_conflicts",
    ] {
        assert_eq!(count(&mut clerk, sql), 1, "{sql}");
    }
    let seen: String = clerk
        .query_one(
            "SELECT string_agg(DISTINCT \"table\"::text, ',') FROM sync_conflicts",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(seen, "notes");
    // What is remembered of a resolution is filtered alike.
    b.batch_execute(
        "SELECT sync_resolve(conflict_id, 'local') FROM synclink.conflict WHERE outcome = 'open'",
    )
    .unwrap();
    assert_eq!(count(&mut b, "SELECT count(*) FROM synclink.resolution"), 2);
    assert_eq!(
        count(&mut clerk, "SELECT count(*) FROM synclink.resolution"),
        1
    );
    // Peers' connection details are for monitoring roles; sync_status works for them.
    let err = clerk.query("SELECT * FROM sync_status", &[]).unwrap_err();
    assert_eq!(code(err), "42501");
    let err = clerk.query("SELECT * FROM synclink.peer", &[]).unwrap_err();
    assert_eq!(code(err), "42501");
    let mut watcher = nodes.b.connect_as("watcher", "w-pw");
    assert_eq!(count(&mut watcher, "SELECT count(*) FROM sync_status"), 2);
    let open: i64 = watcher
        .query_one("SELECT sum(conflicts)::bigint FROM sync_status", &[])
        .unwrap()
        .get(0);
    assert_eq!(open, 2, "counts, without rows");
    assert_eq!(
        count(&mut watcher, "SELECT count(*) FROM sync_conflicts"),
        0
    );
}

/// On B, `products` and `notes` belong to an ordinary role whose trigger logs who ran it and
/// whose check refuses to run as a superuser.
const OWNED: &str = "
    CREATE ROLE shopkeeper;
    CREATE TABLE owner_log (who text, superuser text);
    GRANT INSERT ON owner_log TO shopkeeper;
    CREATE FUNCTION public.not_as_superuser(text) RETURNS bool LANGUAGE plpgsql AS $$
    BEGIN
        IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            RAISE EXCEPTION 'a table owner''s check ran as a superuser';
        END IF;
        RETURN true;
    END $$;
    CREATE FUNCTION public.audit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO public.owner_log
            SELECT current_user, rolsuper::text FROM pg_roles WHERE rolname = current_user;
        RETURN NULL;
    END $$;
    ALTER FUNCTION public.audit() OWNER TO shopkeeper;
    ALTER FUNCTION public.not_as_superuser(text) OWNER TO shopkeeper;
    -- the owner's type, with casts to text and json of its own, and its domain's check
    ALTER TYPE public.mood OWNER TO shopkeeper;
    ALTER DOMAIN public.label OWNER TO shopkeeper;
    GRANT CREATE ON SCHEMA public TO shopkeeper;
    SET ROLE shopkeeper;
    CREATE FUNCTION public.mood_text(public.mood) RETURNS text LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM public.not_as_superuser('');
        RETURN pg_catalog.enum_out($1)::text;
    END $$;
    CREATE FUNCTION public.mood_json(public.mood) RETURNS json LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM public.not_as_superuser('');
        RETURN pg_catalog.to_json(pg_catalog.enum_out($1)::text);
    END $$;
    CREATE CAST (public.mood AS text) WITH FUNCTION public.mood_text(public.mood);
    CREATE CAST (public.mood AS json) WITH FUNCTION public.mood_json(public.mood);
    ALTER DOMAIN public.label ADD CHECK (public.not_as_superuser(VALUE));
    RESET ROLE;";

/// On both nodes: the tables, their enum and domain (on B, OWNED gives them code).
const OWNED_TABLES: &str = "
    CREATE TYPE public.mood AS ENUM ('a', 'b');
    CREATE DOMAIN public.label AS text;
    CREATE TABLE products (id int PRIMARY KEY, name text, m public.mood DEFAULT 'a', l public.label);
    CREATE TABLE notes (id int PRIMARY KEY, name text, m public.mood DEFAULT 'a', l public.label);
    INSERT INTO notes VALUES (1, 'start');";

fn owned_by_shopkeeper(b: &mut Client, table: &str) {
    b.batch_execute(&format!(
        "ALTER TABLE {table} OWNER TO shopkeeper;
         SET ROLE shopkeeper;
         ALTER TABLE {table} ADD CHECK (public.not_as_superuser(name));
         CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON {table}
             FOR EACH ROW EXECUTE FUNCTION public.audit();
         CREATE CONSTRAINT TRIGGER audit_at_commit AFTER INSERT OR UPDATE ON {table}
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.audit();
         RESET ROLE;"
    ))
    .unwrap();
}

fn owner_log(c: &mut Client) -> Vec<String> {
    c.query(
        "SELECT DISTINCT who || ':' || superuser FROM owner_log ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn changes_arrive_as_the_table_owner_never_as_a_superuser() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, OWNED_TABLES);
    b.batch_execute(OWNED).unwrap();
    owned_by_shopkeeper(&mut b, "products");
    owned_by_shopkeeper(&mut b, "notes");
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    a.execute(
        "SELECT sync_link_table('notes', mode => 'async', conflict => 'manual')",
        &[],
    )
    .unwrap();
    // sync mode: applied inside A's transaction; async: a queued run, applied at the end of
    // the delivering statement; both with a conflict logged as the owner.
    a.batch_execute(
        "INSERT INTO products VALUES (1, 'one'), (2, 'two');
         UPDATE products SET name = 'uno' WHERE id = 1;
         DELETE FROM products WHERE id = 2;
         UPDATE notes SET name = 'a';",
    )
    .unwrap();
    // (each its own transaction: the constraint trigger fires at commit)
    b.batch_execute("SET ROLE shopkeeper").unwrap();
    b.batch_execute("UPDATE notes SET name = 'b'").unwrap();
    b.batch_execute("RESET ROLE").unwrap();
    assert_eq!(owner_log(&mut b), vec!["shopkeeper:false"]);
    flush(&mut a);
    assert_eq!(
        count(
            &mut b,
            "SELECT count(*) FROM synclink.conflict WHERE outcome = 'open'"
        ),
        1
    );
    // settling it by hand writes the row as the owner too
    b.batch_execute(
        "SELECT sync_resolve(conflict_id, 'peer') FROM synclink.conflict WHERE outcome = 'open'",
    )
    .unwrap();
    assert_eq!(
        count(&mut b, "SELECT count(*) FROM notes WHERE name = 'a'"),
        1
    );
    assert_eq!(
        count(
            &mut b,
            "SELECT count(*) FROM products WHERE id = 1 AND name = 'uno'"
        ),
        1
    );
    assert_eq!(count(&mut b, "SELECT count(*) FROM products"), 1);
    assert_eq!(owner_log(&mut b), vec!["shopkeeper:false"]);
    // and comparing and repairing: rows read, cast to text and json, keys read as the table's
    // row type, rows written, from either node
    a.batch_execute(
        "ALTER TABLE products DISABLE TRIGGER USER; INSERT INTO products VALUES (3, 'three');
         UPDATE products SET m = 'b' WHERE id = 1; ALTER TABLE products ENABLE TRIGGER USER;",
    )
    .unwrap();
    assert_eq!(
        count(&mut a, "SELECT count(*) FROM sync_diff('products')"),
        2
    );
    assert_eq!(
        count(&mut b, "SELECT count(*) FROM sync_diff('products')"),
        2
    );
    // A takes B's rows (read on B), then B takes a row of A's (written on B)
    a.execute("SELECT sync_reconcile('products', prefer => 'peer')", &[])
        .unwrap();
    assert_eq!(count(&mut a, "SELECT count(*) FROM products"), 1);
    a.batch_execute(
        "ALTER TABLE products DISABLE TRIGGER USER; INSERT INTO products VALUES (4, 'four', 'b');
         ALTER TABLE products ENABLE TRIGGER USER;",
    )
    .unwrap();
    b.execute("SELECT sync_reconcile('products', prefer => 'peer')", &[])
        .unwrap();
    assert_eq!(count(&mut b, "SELECT count(*) FROM products"), 2);
    assert_eq!(owner_log(&mut b), vec!["shopkeeper:false"]);
}

/// The receiving node remembers which deferred checks run an owner's code until the catalog
/// changes: a constraint trigger added while the delivering session stays open is made
/// immediate (and so runs as the owner) from the next change on.
#[test]
fn a_constraint_trigger_added_between_deliveries_still_runs_as_the_owner() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, OWNED_TABLES);
    b.batch_execute(OWNED).unwrap();
    b.batch_execute("ALTER TABLE products OWNER TO shopkeeper")
        .unwrap();
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    // sync mode: B applies in the session A's backend keeps open to it
    a.batch_execute("INSERT INTO products VALUES (1, 'one')")
        .unwrap();
    b.batch_execute(
        "SET ROLE shopkeeper;
         CREATE CONSTRAINT TRIGGER audit_at_commit AFTER INSERT OR UPDATE ON products
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.audit();
         RESET ROLE;",
    )
    .unwrap();
    a.batch_execute("INSERT INTO products VALUES (2, 'two')")
        .unwrap();
    assert_eq!(count(&mut b, "SELECT count(*) FROM products"), 2);
    assert_eq!(owner_log(&mut b), vec!["shopkeeper:false"]);
}

#[test]
fn a_table_owner_cannot_forge_conflicts_or_reach_synclinks_tables() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, OWNED_TABLES);
    b.batch_execute(OWNED).unwrap();
    owned_by_shopkeeper(&mut b, "notes");
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    a.execute("SELECT sync_link_table('notes')", &[]).unwrap();
    let products_link: i32 = b
        .query_one(
            "SELECT link_id FROM synclink.link WHERE relid = 'products'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    b.batch_execute("SET ROLE shopkeeper").unwrap();
    for forged in [
        // an open conflict on its own table but naming another table's link
        format!(
            "INSERT INTO synclink.conflict (link_id, relid, peer_name, key, kind, policy, columns, outcome)
             VALUES ({products_link}, 'notes', 'a', '{{\"id\": 1}}', 'update_changed', 'manual', '{{name}}', 'open')"
        ),
        // a conflict id of its choosing (a later one would collide with it)
        "INSERT INTO synclink.conflict (conflict_id, link_id, relid, peer_name, key, kind, policy, columns, outcome)
         SELECT 999999, link_id, relid, peer_name, '{}', 'update_changed', 'manual', '{}', 'open'
           FROM synclink.link WHERE relid = 'notes'::regclass"
            .to_string(),
        // another table's row versions, synclink's queue, its peers
        "SELECT count(*) FROM synclink.outbox".to_string(),
        "SELECT count(*) FROM synclink.peer".to_string(),
        "INSERT INTO synclink.inbox (origin, sender, target_schema, target_table, op) VALUES ('x', 'x', 'public', 'products', 'T')".to_string(),
    ] {
        let (code, message, _, _) = db_error(b.batch_execute(&forged).unwrap_err());
        assert_eq!(code, "42501", "{forged}: {message}");
    }
    let versions: String = b
        .query_one(
            "SELECT version_table FROM synclink.link WHERE relid = 'products'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        count(&mut b, &format!("SELECT count(*) FROM {versions}")),
        0,
        "another owner's versions are not visible"
    );
    b.batch_execute("RESET ROLE").unwrap();
}

#[test]
fn a_non_superuser_drops_its_own_tables_linked_or_not() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, PRODUCTS);
    a.batch_execute(
        "CREATE ROLE app LOGIN PASSWORD 'app-pw';
         ALTER TABLE products OWNER TO app;
         CREATE TABLE scratch (id int); ALTER TABLE scratch OWNER TO app;",
    )
    .unwrap();
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    let mut app = nodes.a.connect_as("app", "app-pw");
    app.batch_execute("DROP TABLE scratch").unwrap();
    app.batch_execute("DROP TABLE products").unwrap();
    for c in [&mut a, &mut b] {
        assert_eq!(links(c), 0);
    }
}

#[test]
fn a_peer_reaches_only_the_tables_its_role_was_granted() {
    let nodes = Nodes::one_cluster();
    let mut a = nodes.a.connect();
    let mut b = nodes.b.connect();
    both(
        &mut a,
        &mut b,
        "CREATE TABLE products (id int PRIMARY KEY, name text);
         CREATE TABLE catalogue (id int PRIMARY KEY, name text);
         CREATE TABLE secrets (id int PRIMARY KEY, name text);",
    );
    b.batch_execute(
        "INSERT INTO secrets VALUES (1, 'the recipe');
         CREATE ROLE peer_a LOGIN PASSWORD 'pa-pw';
         GRANT INSERT ON synclink.inbox TO peer_a;
         GRANT INSERT, SELECT (reply) ON synclink.request TO peer_a;
         GRANT SELECT, INSERT, UPDATE, DELETE ON products TO peer_a;
         GRANT SELECT ON catalogue TO peer_a;",
    )
    .unwrap();
    a.execute(
        "SELECT sync_add_peer('b', $1)",
        &[&format!(
            "host=127.0.0.1 port={} dbname={} user=peer_a password=pa-pw",
            nodes.b.port(),
            nodes.b.db
        )],
    )
    .unwrap();
    b.execute("SELECT sync_add_peer('a', $1)", &[&nodes.a.conninfo()])
        .unwrap();

    // granted: linked, and changes flow both ways
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    a.batch_execute("INSERT INTO products VALUES (1, 'from a')")
        .unwrap();
    b.batch_execute("INSERT INTO products VALUES (2, 'from b')")
        .unwrap();
    for c in [&mut a, &mut b] {
        assert_eq!(count(c, "SELECT count(*) FROM products"), 2);
    }

    // read-only: compared, not linked
    let err = a
        .execute("SELECT sync_link_table('catalogue')", &[])
        .unwrap_err();
    let (code, message, detail, hint) = db_error(err);
    assert_eq!(code, "42501", "{message}");
    assert!(
        message.contains("peer role \"peer_a\" may not link table \"public\".\"catalogue\""),
        "{message}"
    );
    assert!(detail.contains("INSERT, UPDATE, DELETE"), "{detail}");
    assert!(
        hint.contains("GRANT INSERT, UPDATE, DELETE ON \"public\".\"catalogue\" TO \"peer_a\""),
        "{hint}"
    );
    assert_eq!(links(&mut a), 1);
    assert_eq!(links(&mut b), 1);
    assert_eq!(
        count(&mut a, "SELECT count(*) FROM sync_diff('catalogue')"),
        0
    );
    // enough to take its changes one way: a pull link, whose half there only sends, is made
    // and unmade with SELECT alone
    a.execute(
        "SELECT sync_link_table('catalogue', direction => 'pull')",
        &[],
    )
    .unwrap();
    b.batch_execute("INSERT INTO catalogue VALUES (1, 'from b')")
        .unwrap();
    assert_eq!(count(&mut a, "SELECT count(*) FROM catalogue"), 1);
    a.execute("SELECT sync_unlink_table('catalogue')", &[])
        .unwrap();
    assert_eq!((links(&mut a), links(&mut b)), (1, 1));

    // not granted at all: neither compared nor pulled
    for sql in [
        "SELECT count(*) FROM sync_diff('secrets')",
        "SELECT sync_link_table('secrets', copy => 'from_peer')",
        "SELECT sync_reconcile('secrets', prefer => 'peer')",
    ] {
        let (code, message, _, _) = db_error(a.execute(sql, &[]).unwrap_err());
        assert_eq!(code, "42501", "{sql}: {message}");
    }
    assert_eq!(count(&mut a, "SELECT count(*) FROM secrets"), 0);

    // A third node, C, links products with B too, reaching B as the superuser `sync`. A's
    // role on B may write products, yet cannot act as C: asking B, in C's name, to drop C's
    // link is refused.
    let node_c = nodes.a.sibling("shop_c");
    let mut c = node_c.connect();
    c.batch_execute("CREATE TABLE products (id int PRIMARY KEY, name text)")
        .unwrap();
    c.execute("SELECT sync_add_peer('b', $1)", &[&nodes.b.conninfo()])
        .unwrap();
    b.execute("SELECT sync_add_peer('c', $1)", &[&node_c.conninfo()])
        .unwrap();
    c.execute(
        "SELECT sync_link_table('products', copy => 'from_peer')",
        &[],
    )
    .unwrap();
    c.batch_execute("INSERT INTO products VALUES (3, 'from c')")
        .unwrap();
    let node_c = node_name(&mut c);
    let (code, message, _, hint) = db_error(
        a.execute(
            "INSERT INTO synclink.b_request (from_node, action, body)
             VALUES ($1, 'unlink', '{\"schema\": \"public\", \"table\": \"products\"}')",
            &[&node_c],
        )
        .unwrap_err(),
    );
    assert_eq!(code, "42501", "{message}");
    assert!(
        message.contains("reaches this node as role \"sync\", not as \"peer_a\""),
        "{message}"
    );
    assert!(hint.contains("inbound_role"), "{hint}");
    assert_eq!(links(&mut b), 2);
}

#[test]
fn a_peer_registered_with_a_password_file_never_shows_the_password() {
    let nodes = Nodes::two_clusters(&["log_statement = 'all'", "log_min_messages = info"]);
    let mut a = nodes.a.connect();
    let mut b = nodes.b.connect();
    let secret = SYNC_PASSWORD;
    let (port, db) = (nodes.b.port(), &nodes.b.db);
    let passfile = nodes.a.cluster().write_private_file(
        "synclink.pgpass",
        &format!("127.0.0.1:{port}:{db}:sync:{secret}\n"),
    );
    a.execute(
        "SELECT sync_add_peer('b', $1)",
        &[&format!(
            "host=127.0.0.1 port={port} dbname={db} user=sync passfile={}",
            passfile.display()
        )],
    )
    .unwrap();
    b.execute("SELECT sync_add_peer('a', $1)", &[&nodes.a.conninfo()])
        .unwrap();
    both(&mut a, &mut b, PRODUCTS);
    a.execute("SELECT sync_link_table('products')", &[])
        .unwrap();
    a.batch_execute("INSERT INTO products VALUES (1, 'one')")
        .unwrap();
    assert_eq!(count(&mut b, "SELECT count(*) FROM products"), 1);
    // A's log has every statement, and no password but the harness's own CREATE ROLE;
    // the user mapping holds none.
    let log = nodes.a.cluster().log();
    assert!(log.contains("sync_add_peer"));
    let leaks: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(secret) && !l.contains("CREATE ROLE sync"))
        .collect();
    assert!(leaks.is_empty(), "password in A's log: {leaks:?}");
    assert_eq!(
        count(
            &mut a,
            "SELECT count(*) FROM pg_user_mappings WHERE array_to_string(umoptions, ',') LIKE '%password%'"
        ),
        0
    );
}
