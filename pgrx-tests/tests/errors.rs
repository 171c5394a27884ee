//! Bad input gets a clear error — SQLSTATE, message, hint — and leaves nothing half-made.

use std::net::TcpListener;
use std::time::{Duration, Instant};
use synclink_e2e::{both, count, db_error, Nodes, SYNC_PASSWORD};

/// Counts of everything a link makes, on one node.
fn link_objects(c: &mut postgres::Client) -> i64 {
    c.query_one(
        "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'synclink%')
              + (SELECT count(*) FROM synclink.link)
              + (SELECT count(*) FROM pg_type t JOIN pg_class c ON c.oid = t.typrelid
                  WHERE t.typnamespace = 'synclink'::regnamespace AND c.relkind = 'c' AND t.typname <> 'stamp')
              + (SELECT count(*) FROM pg_class WHERE relnamespace = 'synclink'::regnamespace
                  AND relkind = 'r' AND relname LIKE '%\\_version')
              + (SELECT count(*) FROM pg_proc WHERE pronamespace = 'synclink'::regnamespace AND proname LIKE '%capture%' AND proname <> 'capture_one')",
        &[],
    )
    .unwrap()
    .get(0)
}

struct Case {
    name: &'static str,
    node: char,
    sql: &'static str,
    code: &'static str,
    message: &'static str,
    hint: &'static str,
}

macro_rules! cases {
    ($($name:ident on $node:literal: $sql:literal => $code:literal, $message:literal, hint $hint:literal;)*) => {
        vec![$(Case { name: stringify!($name), node: $node, sql: $sql, code: $code, message: $message, hint: $hint }),*]
    };
}

#[test]
fn link_and_peer_errors_are_clear_and_leave_nothing_behind() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(
        &mut a,
        &mut b,
        "
        CREATE TABLE no_pk (id int, v text);
        CREATE TABLE deferred_pk (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED);
        CREATE TABLE cols (id int PRIMARY KEY, v text);
        CREATE TABLE typed (id int PRIMARY KEY, n integer);
        CREATE TABLE keyed (id int PRIMARY KEY, code text NOT NULL UNIQUE);
        CREATE TABLE fine (id int PRIMARY KEY, v text)",
    );
    a.batch_execute(
        "CREATE TABLE only_here (id int PRIMARY KEY); ALTER TABLE cols ADD COLUMN extra int;
        ALTER TABLE typed ALTER COLUMN n TYPE text",
    )
    .unwrap();
    b.batch_execute(
        "ALTER TABLE cols ADD COLUMN other int; ALTER TABLE keyed DROP CONSTRAINT keyed_pkey;
        ALTER TABLE keyed ADD PRIMARY KEY (code)",
    )
    .unwrap();

    let cases = cases! {
        no_primary_key on 'a': "SELECT sync_link_table('no_pk')"
            => "42P16", "table \"public\".\"no_pk\" has no primary key", hint "ADD PRIMARY KEY";
        deferrable_primary_key on 'a': "SELECT sync_link_table('deferred_pk')"
            => "42P16", "has no primary key", hint "DEFERRABLE";
        missing_on_peer on 'a': "SELECT sync_link_table('only_here')"
            => "42P01", "table \"public\".\"only_here\" does not exist on node", hint "Create the table on that node";
        column_sets_differ on 'a': "SELECT sync_link_table('cols')"
            => "42804", "has different columns on node", hint "same column names";
        column_types_differ on 'a': "SELECT sync_link_table('typed')"
            => "42804", "has different columns", hint "compatible types";
        keys_differ on 'a': "SELECT sync_link_table('keyed')"
            => "42P16", "has no primary key or unique index on (id)", hint "same primary key";
        unknown_peer on 'a': "SELECT sync_link_table('fine', 'nobody')"
            => "42704", "peer \"nobody\" does not exist", hint "sync_add_peer";
        unknown_table on 'a': "SELECT sync_link_table('no_such_table')"
            => "42P01", "relation \"no_such_table\" does not exist", hint "";
        unlink_not_linked on 'a': "SELECT sync_unlink_table('fine')"
            => "42704", "table \"public\".\"fine\" is not linked with peer \"b\"", hint "sync_status";
        invalid_peer_name on 'a': "SELECT sync_add_peer('Bad Name', 'host=x')"
            => "42602", "invalid peer name \"Bad Name\"", hint "lower-case";
        bad_conninfo on 'a': "SELECT sync_add_peer('c', 'host localhost')"
            => "22023", "invalid connection string", hint "key=value";
        peer_exists_differently on 'a': "SELECT sync_add_peer('b', 'host=127.0.0.1 port=1 dbname=x')"
            => "42710", "peer \"b\" already exists with a different connection string", hint "sync_drop_peer";
        drop_unknown_peer on 'a': "SELECT sync_drop_peer('zzz')"
            => "42704", "peer \"zzz\" does not exist", hint "";
        bad_node_name on 'a': "SELECT sync_set_node_name('has space')"
            => "42602", "invalid node name", hint "letters, digits";
    };
    for case in cases {
        let c = if case.node == 'a' { &mut a } else { &mut b };
        let err = c.batch_execute(case.sql).expect_err(case.name);
        let (code, message, _detail, hint) = db_error(err);
        assert_eq!(code, case.code, "{}: {message}", case.name);
        assert!(
            message.contains(case.message),
            "{}: message {message:?}",
            case.name
        );
        assert!(hint.contains(case.hint), "{}: hint {hint:?}", case.name);
        for node in [&mut a, &mut b] {
            assert_eq!(
                link_objects(node),
                0,
                "{}: something was left half-made",
                case.name
            );
        }
    }

    // every column difference is listed in DETAIL
    let (_, _, detail, _) = db_error(
        a.batch_execute("SELECT sync_link_table('cols')")
            .unwrap_err(),
    );
    assert!(
        detail.contains("\"extra\"") && detail.contains("\"other\""),
        "{detail}"
    );
    let (_, _, detail, _) = db_error(
        a.batch_execute("SELECT sync_link_table('typed')")
            .unwrap_err(),
    );
    assert!(
        detail.contains("column \"n\" is integer here but text on the other side"),
        "{detail}"
    );

    // a migration that runs twice: same peer again is a no-op, linking twice too
    a.execute("SELECT sync_add_peer('b', $1)", &[&nodes.b.conninfo()])
        .unwrap();
    a.execute("SELECT sync_link_table('fine')", &[]).unwrap();
    a.execute("SELECT sync_link_table('fine')", &[]).unwrap();

    // a peer with links is not dropped by accident; cascade unlinks both sides first
    let (code, _, _, hint) = db_error(a.batch_execute("SELECT sync_drop_peer('b')").unwrap_err());
    assert_eq!(
        (code.as_str(), hint.contains("cascade => true")),
        ("2BP01", true)
    );
    a.execute("SELECT sync_drop_peer('b', cascade => true)", &[])
        .unwrap();
    assert_eq!(link_objects(&mut a) + link_objects(&mut b), 0);
    let servers = count(&mut a, "SELECT count(*) FROM pg_foreign_server");
    assert_eq!(servers, 0);
}

#[test]
fn ambiguous_and_unregistered_peers() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    both(&mut a, &mut b, "CREATE TABLE t (id int PRIMARY KEY)");
    // B forgets A: A's request cannot be served, and says what to do on B
    b.execute("SELECT sync_drop_peer('a')", &[]).unwrap();
    let (code, message, _, hint) =
        db_error(a.batch_execute("SELECT sync_link_table('t')").unwrap_err());
    assert_eq!(code, "42704", "{message}");
    assert!(
        message.contains("is not registered as a peer here"),
        "{message}"
    );
    assert!(hint.contains("sync_add_peer"), "{hint}");
    assert_eq!(link_objects(&mut a), 0);

    // with two peers the call must say which
    let c = nodes.a.sibling("shop_c");
    a.execute("SELECT sync_add_peer('c', $1)", &[&c.conninfo()])
        .unwrap();
    let (code, _, detail, hint) =
        db_error(a.batch_execute("SELECT sync_link_table('t')").unwrap_err());
    assert_eq!(code, "42P08");
    assert!(
        detail.contains("b, c") && hint.contains("second argument"),
        "{detail} / {hint}"
    );
}

#[test]
fn unreachable_peers_fail_fast_and_never_show_the_password() {
    // Unregistered: the test registers (and fails to register) peers itself.
    let nodes = Nodes::two_clusters(&[]);
    let (a, b) = (nodes.a.cluster(), nodes.b.cluster());
    let mut ca = nodes.a.connect();
    let mut cb_plain = b.connect("postgres");
    cb_plain.batch_execute("CREATE DATABASE plain").unwrap();

    // nothing listens on the port
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let (code, message, detail, hint) = db_error(
        ca.batch_execute(&format!("SELECT sync_add_peer('x', 'host=127.0.0.1 port={closed} dbname=shop user=sync password=closed-secret')"))
            .unwrap_err(),
    );
    assert_eq!(code, "08001");
    assert!(
        message.contains("could not connect to peer \"x\""),
        "{message}"
    );
    assert!(detail.contains("Connection refused"), "{detail}");
    assert!(hint.contains("pg_hba.conf"), "{hint}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // something accepts the connection and never answers: connect_timeout ends the wait
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let (code, _, detail, _) = db_error(
        ca.batch_execute(&format!("SELECT sync_add_peer('x', 'host=127.0.0.1 port={port} dbname=shop user=sync password=s connect_timeout=2')"))
            .unwrap_err(),
    );
    let waited = started.elapsed();
    assert_eq!(code, "08001", "{detail}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(6),
        "waited {waited:?}"
    );
    drop(silent);

    // a wrong password: the error, sync_status and both server logs never show it
    let secret = "Wr0ng-Pa55word-xyzzy";
    let (code, message, detail, hint) = db_error(
        ca.batch_execute(&format!("SELECT sync_add_peer('b', 'host=127.0.0.1 port={} dbname=shop user=sync password={secret}')", b.port))
            .unwrap_err(),
    );
    assert_eq!(code, "08001");
    assert!(
        detail.contains("password authentication failed"),
        "{detail}"
    );
    for text in [&message, &detail, &hint] {
        assert!(!text.contains(secret), "password leaked: {text}");
    }
    // the right one works, and is not shown either
    ca.execute("SELECT sync_add_peer('b', $1)", &[&nodes.b.conninfo()])
        .unwrap();
    let shown: String = ca
        .query_one("SELECT string_agg(s::text, ' ') FROM sync_status s", &[])
        .unwrap()
        .get::<_, Option<String>>(0)
        .unwrap_or_default();
    let peer_row: String = ca
        .query_one("SELECT p::text FROM synclink.peer p", &[])
        .unwrap()
        .get(0);
    assert!(
        !shown.contains(SYNC_PASSWORD) && !peer_row.contains(SYNC_PASSWORD),
        "{peer_row}"
    );
    std::thread::sleep(Duration::from_millis(300));
    for (name, log) in [("a", a.log()), ("b", b.log())] {
        assert!(
            !log.contains(secret) && !log.contains("closed-secret"),
            "password in the log of {name}:\n{log}"
        );
        assert!(
            !log.contains(SYNC_PASSWORD),
            "password in the log of {name}"
        );
    }

    // a database without synclink
    let (code, message, _, hint) = db_error(
        ca.batch_execute(&format!("SELECT sync_add_peer('p', 'host=127.0.0.1 port={} dbname=plain user=sync password={SYNC_PASSWORD}')", b.port))
            .unwrap_err(),
    );
    assert_eq!(code, "0A000");
    assert!(
        message.contains("does not run synclink") && hint.contains("CREATE EXTENSION synclink"),
        "{message} {hint}"
    );
    let peers = count(&mut ca, "SELECT count(*) FROM synclink.peer");
    let servers = count(&mut ca, "SELECT count(*) FROM pg_foreign_server");
    assert_eq!(
        (peers, servers),
        (1, 1),
        "failed registrations left nothing behind"
    );
}
