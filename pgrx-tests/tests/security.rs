//! synclink holds a superuser's trust: each test here attacks it the way a hostile application
//! role, a table owner or a database owner could, and checks that nothing of theirs runs with
//! synclink's privileges and that nobody reads rows they may not.

use postgres::Client;
use std::time::Duration;
use synclink_e2e::{both, count, db_error, wait_until, Pair};

const PRODUCTS: &str = "CREATE TABLE products (id int PRIMARY KEY, name text)";

/// Schema `evil`, owned by `role`, with a log table and a function that records who ran it
/// and whether as a superuser. Everything below it installs is named after PostgreSQL's own
/// operators, so that a search path naming `evil` first would pick it up.
fn evil_schema(c: &mut Client, role: &str) {
    c.batch_execute(&format!(
        "CREATE SCHEMA evil AUTHORIZATION {role};
         SET ROLE {role};
         CREATE TABLE evil.log (who text, superuser text);
         CREATE FUNCTION evil.spy() RETURNS bool LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO evil.log VALUES (current_user, current_setting('is_superuser'));
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
         GRANT INSERT, SELECT ON evil.log TO PUBLIC;
         RESET ROLE;"
    ))
    .unwrap();
}

/// Who ran the spy, and as what: empty when nothing of the attacker's ran.
fn spied(c: &mut Client) -> Vec<String> {
    c.query("SELECT who || ':' || superuser FROM evil.log", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn code(e: postgres::Error) -> String {
    db_error(e).0
}

#[test]
fn a_callers_operators_never_run_with_synclinks_privileges() {
    let (p, mut a, mut b) = Pair::peered();
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
    let mut m = p.a.connect_as(&p.db, "mallory", "m-pw");
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
    assert_eq!(spied(&mut a), Vec::<String>::new());
    assert_eq!(count(&mut a, "SELECT count(*) FROM synclink.outbox"), 3);
    a.execute("SELECT sync_flush()", &[]).unwrap();
    assert_eq!(
        count(
            &mut b,
            "SELECT count(*) FROM products WHERE name IN ('uno', 'two')"
        ),
        2
    );
    assert_eq!(spied(&mut a), Vec::<String>::new());
}

#[test]
fn the_delivery_worker_ignores_a_database_owners_search_path() {
    let (p, mut a, mut b) = Pair::peered_with(&["shared_preload_libraries = 'synclink'"]);
    both(&mut a, &mut b, PRODUCTS);
    a.execute("SELECT sync_link_table('products', mode => 'async')", &[])
        .unwrap();
    a.batch_execute("CREATE ROLE dbo LOGIN PASSWORD 'd-pw'; ALTER DATABASE shop OWNER TO dbo;")
        .unwrap();
    evil_schema(&mut a, "dbo");
    let mut owner = p.a.connect_as(&p.db, "dbo", "d-pw");
    owner
        .batch_execute("ALTER DATABASE shop SET search_path = evil, pg_catalog")
        .unwrap();
    // The worker connects again with the database's settings.
    a.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE backend_type = 'synclink delivery'",
    )
    .unwrap();
    // (A superuser's own new session takes that search path too: not synclink's to guard.)
    let mut fresh = p.a.connect(&p.db);
    fresh.batch_execute("SET search_path = public").unwrap();
    wait_until(Duration::from_secs(20), || {
        count(
            &mut fresh,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'synclink delivery' AND datname = 'shop'",
        ) == 1
    });
    fresh
        .batch_execute("INSERT INTO public.products VALUES (1, 'one')")
        .unwrap();
    wait_until(Duration::from_secs(20), || {
        count(&mut b, "SELECT count(*) FROM products") == 1
    });
    assert_eq!(spied(&mut fresh), Vec::<String>::new());
}

#[test]
fn the_conflict_log_shows_each_role_only_tables_it_may_read() {
    let (p, mut a, mut b) = Pair::peered();
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
    a.execute("SELECT sync_flush()", &[]).unwrap();
    assert_eq!(count(&mut b, "SELECT count(*) FROM synclink.conflict"), 2);
    b.batch_execute(
        "CREATE ROLE clerk LOGIN PASSWORD 'c-pw'; GRANT SELECT ON notes TO clerk;
         CREATE ROLE watcher LOGIN PASSWORD 'w-pw'; GRANT pg_monitor TO watcher;",
    )
    .unwrap();
    let mut clerk = p.b.connect_as(&p.db, "clerk", "c-pw");
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
    let mut watcher = p.b.connect_as(&p.db, "watcher", "w-pw");
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
