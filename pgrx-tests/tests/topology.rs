//! More than two nodes, and links that carry changes one way: a push link from an authority,
//! a pull link, a hub relaying between children that do not link each other, and a mesh where
//! every node links every other; one capture and one version table per table throughout.

use postgres::Client;
use std::time::Duration;
use synclink_e2e::{
    count, db_error, flush, flush_to, links, listening, queued, status, wait_until, Node, Nodes,
};

const PRICES: &str = "CREATE TABLE prices (id int PRIMARY KEY, amount int)";

/// The rows of `table`, in key order, as text: two nodes hold the same rows when these match.
fn rows(c: &mut Client, table: &str) -> Vec<String> {
    c.query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn conflicts(c: &mut Client) -> i64 {
    count(c, "SELECT count(*) FROM synclink.conflict")
}

/// The capture triggers on `table` (synclink's triggers, named after it).
fn triggers(c: &mut Client, table: &str) -> i64 {
    count(
        c,
        &format!(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = '{table}'::regclass \
                AND NOT tgisinternal AND tgname LIKE 'synclink%'"
        ),
    )
}

/// Conflicts this node logged more than once: the same two versions of a row met again (by
/// another path through a mesh or a hub) must not be logged again.
fn conflicts_logged_twice(c: &mut Client) -> i64 {
    count(
        c,
        "SELECT count(*) FROM (SELECT FROM synclink.conflict \
          GROUP BY key, (local_version).at, (local_version).node, \
                   (peer_version).at, (peer_version).node HAVING count(*) > 1) d",
    )
}

/// Flush every node until nothing is queued anywhere; panics if relayed changes keep
/// coming back (a loop).
fn settle(nodes: &mut [&mut Client]) {
    for _ in 0..10 {
        for c in nodes.iter_mut() {
            flush(c);
        }
        if nodes.iter_mut().all(|c| queued(c) == 0) {
            return;
        }
    }
    panic!("changes are still queued after ten rounds of delivery");
}

/// Three rounds in which a, b and c each run their statement (`{round}` standing for the
/// round's number) with nothing delivered in between; then delivery settles, and all three
/// must hold the same rows, which `check` may look at further.
fn write_rounds(
    nodes: [&mut Client; 3],
    statements: [&str; 3],
    mut check: impl FnMut(&mut [&mut Client; 3], i32),
) {
    let mut nodes = nodes;
    for round in 1..=3 {
        for (n, sql) in nodes.iter_mut().zip(statements) {
            n.batch_execute(&sql.replace("{round}", &round.to_string()))
                .unwrap();
        }
        settle(&mut nodes);
        let [a, b, c] = &mut nodes;
        let on_a = rows(a, "prices");
        assert_eq!(rows(b, "prices"), on_a, "round {round}");
        assert_eq!(rows(c, "prices"), on_a, "round {round}");
        check(&mut nodes, round);
    }
}

#[test]
fn a_push_link_carries_the_authoritys_changes_and_leaves_the_childs_at_home() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    a.batch_execute(PRICES).unwrap();
    b.batch_execute(PRICES).unwrap();
    a.execute("SELECT sync_link_table('prices', direction => 'push')", &[])
        .unwrap();
    assert_eq!(status(&mut a, "prices").direction, "push");
    assert_eq!(status(&mut b, "prices").direction, "pull");
    // nothing is captured on the child
    assert!(triggers(&mut a, "prices") > 0);
    assert_eq!(triggers(&mut b, "prices"), 0);

    a.batch_execute("INSERT INTO prices VALUES (1, 10), (2, 20)")
        .unwrap();
    assert_eq!(rows(&mut b, "prices"), ["(1,10)", "(2,20)"]);

    // made anew (as ALTER EXTENSION UPDATE does), each half stays as it was
    a.batch_execute("SELECT sync_refresh_link('prices')")
        .unwrap();
    b.batch_execute("SELECT sync_refresh_link('prices')")
        .unwrap();
    assert!(triggers(&mut a, "prices") > 0);
    assert_eq!(triggers(&mut b, "prices"), 0);

    // the child's own edits stay on the child
    b.batch_execute(
        "UPDATE prices SET amount = 99 WHERE id = 1; INSERT INTO prices VALUES (3, 30)",
    )
    .unwrap();
    assert_eq!(queued(&mut b), 0);
    assert_eq!(rows(&mut a, "prices"), ["(1,10)", "(2,20)"]);

    // until the authority changes the same row: its change wins, without a conflict
    a.batch_execute("UPDATE prices SET amount = 11 WHERE id = 1; DELETE FROM prices WHERE id = 2")
        .unwrap();
    assert_eq!(rows(&mut b, "prices"), ["(1,11)", "(3,30)"]);
    assert_eq!(conflicts(&mut b), 0);
    assert_eq!(conflicts(&mut a), 0);

    // nor can a repair from the child write the authority's rows
    let (code, message, _, hint) = db_error(
        b.batch_execute("SELECT sync_reconcile('prices', prefer => 'local')")
            .unwrap_err(),
    );
    assert_eq!(code, "55000", "{message}");
    assert!(hint.contains("node that sends"), "{hint}");
    assert_eq!(rows(&mut a, "prices"), ["(1,11)"]);
    // while the authority may repair the child
    a.batch_execute("SELECT sync_reconcile('prices', prefer => 'local')")
        .unwrap();
    assert_eq!(rows(&mut b, "prices"), ["(1,11)"]);
}

#[test]
fn a_pull_link_brings_the_peers_changes_and_sends_none() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    a.batch_execute(PRICES).unwrap();
    b.batch_execute(PRICES).unwrap();
    a.execute(
        "SELECT sync_link_table('prices', direction => 'pull', mode => 'async')",
        &[],
    )
    .unwrap();
    assert_eq!(status(&mut b, "prices").direction, "push");
    b.batch_execute("INSERT INTO prices VALUES (1, 10)")
        .unwrap();
    a.batch_execute("INSERT INTO prices VALUES (2, 20)")
        .unwrap();
    assert_eq!(queued(&mut a), 0, "nothing of a's is queued");
    assert_eq!(flush(&mut b), 1);
    assert_eq!(rows(&mut a, "prices"), ["(1,10)", "(2,20)"]);
    assert_eq!(rows(&mut b, "prices"), ["(1,10)"]);
}

#[test]
fn a_direction_is_checked_and_a_link_is_never_changed_by_linking_it_again() {
    let (_nodes, mut a, mut b) = Nodes::one_cluster().peered();
    a.batch_execute(PRICES).unwrap();
    b.batch_execute(PRICES).unwrap();
    let (code, message, _, hint) = db_error(
        a.batch_execute("SELECT sync_link_table('prices', direction => 'sideways')")
            .unwrap_err(),
    );
    assert_eq!(code, "22023");
    assert!(message.contains("sideways"), "{message}");
    assert!(hint.contains("'push'") && hint.contains("'pull'"), "{hint}");
    let (code, _, _, hint) = db_error(
        a.batch_execute(
            "SELECT sync_link_table('prices', direction => 'push', copy => 'from_peer')",
        )
        .unwrap_err(),
    );
    assert_eq!(code, "22023");
    assert!(hint.contains("'to_peer'"), "{hint}");
    assert_eq!((links(&mut a), links(&mut b)), (0, 0));

    a.execute("SELECT sync_link_table('prices')", &[]).unwrap();
    // the same link again: nothing to do
    let again: bool = a
        .query_one("SELECT sync_link_table('prices', direction => 'both')", &[])
        .unwrap()
        .get(0);
    assert!(!again);
    // another way: refused, saying what differs, and the link stays as it was
    let (code, _, detail, hint) = db_error(
        a.batch_execute("SELECT sync_link_table('prices', direction => 'push', mode => 'async')")
            .unwrap_err(),
    );
    assert_eq!(code, "42710");
    assert!(
        detail.contains("mode is sync, not async")
            && detail.contains("direction is both, not push"),
        "{detail}"
    );
    assert!(hint.contains("sync_unlink_table"), "{hint}");
    assert_eq!(status(&mut a, "prices").direction, "both");
    assert_eq!(status(&mut b, "prices").direction, "both");

    // halves that disagree (the peer's changed by hand): a change is refused where it
    // arrives, and the writer is told
    b.batch_execute("UPDATE synclink.link SET direction = 'push'")
        .unwrap();
    let (code, _, detail, _) = db_error(
        a.batch_execute("INSERT INTO prices VALUES (1, 1)")
            .unwrap_err(),
    );
    assert_eq!(code, "HV000");
    assert!(detail.contains("takes no changes"), "{detail}");
    assert_eq!(count(&mut a, "SELECT count(*) FROM prices"), 0);
    assert_eq!(count(&mut b, "SELECT count(*) FROM prices"), 0);
}

/// Three nodes of one cluster, each registered with the other two by their letters.
fn three() -> (Nodes, Node, Client, Client, Client) {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    let node_c = nodes.a.sibling("shop_c");
    let mut c = node_c.connect();
    a.execute("SELECT sync_add_peer('c', $1)", &[&node_c.conninfo()])
        .unwrap();
    b.execute("SELECT sync_add_peer('c', $1)", &[&node_c.conninfo()])
        .unwrap();
    c.execute("SELECT sync_add_peer('a', $1)", &[&nodes.a.conninfo()])
        .unwrap();
    c.execute("SELECT sync_add_peer('b', $1)", &[&nodes.b.conninfo()])
        .unwrap();
    for n in [&mut a, &mut b, &mut c] {
        n.batch_execute(PRICES).unwrap();
    }
    (nodes, node_c, a, b, c)
}

#[test]
fn a_hub_relays_between_children_that_do_not_link_each_other() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    // a is the hub; b and c are linked with a only
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b'); SELECT sync_link_table('prices', 'c');",
    )
    .unwrap();
    b.batch_execute("INSERT INTO prices VALUES (1, 10)")
        .unwrap();
    // reached the hub inside b's transaction; leaves the hub for c once that committed
    assert_eq!(rows(&mut a, "prices"), ["(1,10)"]);
    assert_eq!(queued(&mut a), 1);
    settle(&mut [&mut a, &mut b, &mut c]);
    c.batch_execute("UPDATE prices SET amount = 11 WHERE id = 1")
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(rows(n, "prices"), ["(1,11)"]);
        assert_eq!(conflicts(n), 0);
    }
}

/// The node each version of the rows of prices was made on (key, node).
fn made_on(c: &mut Client) -> Vec<String> {
    versions(c, "prices")
        .iter()
        .map(|v| {
            let parts: Vec<&str> = v.split(' ').collect();
            format!("{} {}", parts[0], parts[2])
        })
        .collect()
}

#[test]
fn a_hub_passes_on_a_change_that_changed_nothing_here_with_its_version() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    for n in [&mut a, &mut b, &mut c] {
        n.batch_execute("CREATE TABLE tags (a int, b int, PRIMARY KEY (a, b))")
            .unwrap();
    }
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async'); \
         SELECT sync_link_table('prices', 'c', mode => 'async'); \
         SELECT sync_link_table('tags', 'b', mode => 'async'); \
         SELECT sync_link_table('tags', 'c', mode => 'async'); \
         INSERT INTO prices VALUES (1, 10), (2, 20); INSERT INTO tags VALUES (1, 2);",
    )
    .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    // the hub's own row trigger, which a row left as it was does not fire
    a.batch_execute(
        "CREATE TABLE fired (n int); INSERT INTO fired VALUES (0); \
         CREATE FUNCTION count_it() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN UPDATE fired SET n = n + 1; RETURN NEW; END $$; \
         CREATE TRIGGER count_it BEFORE UPDATE ON prices FOR EACH ROW EXECUTE FUNCTION count_it();",
    )
    .unwrap();
    // updates that leave the rows as they were still make new versions (a table of key
    // columns only, too)
    b.batch_execute("UPDATE prices SET amount = amount WHERE id = 1; UPDATE tags SET a = a")
        .unwrap();
    // the hub and c both delete row 2, c later: c's delete wins on the hub, whose row is
    // gone already, and must still reach b
    a.batch_execute("DELETE FROM prices WHERE id = 2").unwrap();
    c.batch_execute("DELETE FROM prices WHERE id = 2").unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    let on_a = versions(&mut a, "prices");
    let node = |n: &mut Client| -> String {
        n.query_one("SELECT node_name FROM synclink.node", &[])
            .unwrap()
            .get(0)
    };
    let (node_b, node_c) = (node(&mut b), node(&mut c));
    assert_eq!(
        made_on(&mut a),
        [format!("1 {node_b}"), format!("2 {node_c}")]
    );
    for n in [&mut b, &mut c] {
        assert_eq!(rows(n, "prices"), ["(1,10)"]);
        assert_eq!(versions(n, "prices"), on_a);
    }
    for n in [&mut a, &mut b, &mut c] {
        let vt: String = n
            .query_one(
                "SELECT DISTINCT version_table FROM synclink.link WHERE relid = 'tags'::regclass",
                &[],
            )
            .unwrap()
            .get(0);
        let made_on: String = n
            .query_one(&format!("SELECT \"synclink$node\" FROM {vt}"), &[])
            .unwrap()
            .get(0);
        assert_eq!(made_on, node_b);
    }
    assert_eq!(count(&mut a, "SELECT n::bigint FROM fired"), 0);
    // the two deletes met on the hub and on c, each logged once there
    assert_eq!(conflicts(&mut a), 1);
    assert_eq!(conflicts(&mut b), 0);
    assert_eq!(conflicts(&mut c), 1);
}

/// The open conflicts of a node, by key: (conflict id, id of the row).
fn open_conflicts(c: &mut Client) -> Vec<(i64, String)> {
    c.query(
        "SELECT conflict_id, key ->> 'id' FROM synclink.conflict WHERE outcome = 'open' \
          ORDER BY key ->> 'id'",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn a_conflict_settled_by_hand_on_the_hub_or_on_a_child_is_settled_on_every_node() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async', conflict => 'manual'); \
         SELECT sync_link_table('prices', 'c', mode => 'async', conflict => 'manual'); \
         INSERT INTO prices VALUES (1, 10), (2, 20);",
    )
    .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    // b and c change the same rows at once (c deletes row 2)
    b.batch_execute("UPDATE prices SET amount = amount + 1")
        .unwrap();
    c.batch_execute("UPDATE prices SET amount = 12 WHERE id = 1; DELETE FROM prices WHERE id = 2")
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    // b's changes reached the hub first and went on to c: the conflicts met on the hub (with
    // c's changes) and on c (with b's, passed on), and wait there; b met none
    let on_a = open_conflicts(&mut a);
    assert_eq!(on_a.iter().map(|k| &k.1).collect::<Vec<_>>(), ["1", "2"]);
    assert_eq!(open_conflicts(&mut c).len(), 2);
    assert_eq!(conflicts(&mut b), 0);
    assert_eq!(rows(&mut a, "prices"), ["(1,11)", "(2,21)"]);
    assert_eq!(rows(&mut b, "prices"), ["(1,11)", "(2,21)"]);
    assert_eq!(rows(&mut c, "prices"), ["(1,12)"]);
    // row 1 settled on the hub, keeping c's row; row 2 on c, keeping c's delete
    a.execute("SELECT sync_resolve($1, keep => 'peer')", &[&on_a[0].0])
        .unwrap();
    // (which closed row 1's conflict on c too)
    let on_c = open_conflicts(&mut c);
    assert_eq!(on_c.iter().map(|k| &k.1).collect::<Vec<_>>(), ["2"]);
    c.execute("SELECT sync_resolve($1, keep => 'local')", &[&on_c[0].0])
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    // every node holds the rows kept, with the versions the choices made; nothing waits
    let versions_a = versions(&mut a, "prices");
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(rows(n, "prices"), ["(1,12)"]);
        assert_eq!(versions(n, "prices"), versions_a);
        assert!(open_conflicts(n).is_empty());
    }
    assert_eq!(
        conflicts(&mut b),
        0,
        "b took the choices without a conflict"
    );
}

#[test]
fn in_a_mesh_of_manual_links_one_choice_settles_the_conflict_on_every_node() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async', conflict => 'manual'); \
         SELECT sync_link_table('prices', 'c', mode => 'async', conflict => 'manual'); \
         INSERT INTO prices VALUES (1, 10);",
    )
    .unwrap();
    b.batch_execute("SELECT sync_link_table('prices', 'c', mode => 'async', conflict => 'manual')")
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    a.batch_execute("UPDATE prices SET amount = 11").unwrap();
    b.batch_execute("UPDATE prices SET amount = 12").unwrap();
    // a's change reaches b first through c: b logs the conflict on its link with c, and the
    // same change arriving from a later is not logged again
    assert_eq!(flush_to(&mut a, "c"), 1);
    assert_eq!(flush_to(&mut c, "b"), 1);
    settle(&mut [&mut a, &mut b, &mut c]);
    let peers = |n: &mut Client| -> Vec<String> {
        n.query(
            "SELECT peer_name FROM synclink.conflict WHERE outcome = 'open'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    assert_eq!(peers(&mut a), ["b"]);
    assert_eq!(peers(&mut b), ["c"]);
    assert_eq!(peers(&mut c), ["b"]);
    // a and b each keep their row; c took a's, the first to arrive, and met b's
    assert_eq!(rows(&mut a, "prices"), ["(1,11)"]);
    assert_eq!(rows(&mut b, "prices"), ["(1,12)"]);
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(open_conflicts(n).len(), 1);
    }
    // settled on a, keeping b's row: a and b settle it (b closing its conflict, logged by
    // another link) and pass it on to c, whose own conflict is about rows that are gone now
    // (settle delivers a's copy first, which c takes; b's is then one c holds already)
    let on_a = open_conflicts(&mut a);
    a.execute("SELECT sync_resolve($1, keep => 'peer')", &[&on_a[0].0])
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    let versions_a = versions(&mut a, "prices");
    for (i, n) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
        assert_eq!(rows(n, "prices"), ["(1,12)"]);
        assert_eq!(versions(n, "prices"), versions_a);
        let log: Vec<String> = n
            .query(
                "SELECT format('%s %s %s %s %s', peer_name, kind, local_version, peer_version, outcome) \
                   FROM synclink.conflict ORDER BY conflict_id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(open_conflicts(n).is_empty(), "node {i}: {log:?}");
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM synclink.conflict WHERE outcome = 'superseded'"
        ),
        1
    );
}

#[test]
fn a_child_that_is_down_gets_what_the_hub_relayed_meanwhile_and_the_others_keep_going() {
    let (nodes, mut a, _) =
        Nodes::two_clusters(&["shared_preload_libraries = 'synclink'"]).peered();
    // a is the hub; c a child on a's server, b a child on a server of its own
    let node_c = nodes.a.sibling("shop_c");
    let mut c = node_c.connect();
    a.execute("SELECT sync_add_peer('c', $1)", &[&node_c.conninfo()])
        .unwrap();
    c.execute("SELECT sync_add_peer('a', $1)", &[&nodes.a.conninfo()])
        .unwrap();
    let mut b = nodes.b.connect();
    for n in [&mut a, &mut b, &mut c] {
        n.batch_execute(PRICES).unwrap();
    }
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async'); \
         SELECT sync_link_table('prices', 'c', mode => 'async');",
    )
    .unwrap();
    drop(b);
    nodes.b.stop_immediate();
    // delivery to c goes on while b is down, and what c sends is relayed towards b
    c.batch_execute("INSERT INTO prices VALUES (1, 10)")
        .unwrap();
    a.batch_execute("INSERT INTO prices VALUES (2, 20)")
        .unwrap();
    wait_until(Duration::from_secs(60), || {
        rows(&mut a, "prices") == ["(1,10)", "(2,20)"]
            && rows(&mut c, "prices") == ["(1,10)", "(2,20)"]
    });
    assert_eq!(queued(&mut a), 2, "c's change and a's own wait for b");
    nodes.b.start_again();
    let mut b = nodes.b.connect();
    wait_until(Duration::from_secs(60), || {
        rows(&mut b, "prices") == ["(1,10)", "(2,20)"]
    });
    wait_until(Duration::from_secs(30), || {
        queued(&mut a) == 0 && queued(&mut b) == 0 && queued(&mut c) == 0
    });
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(conflicts(n), 0);
    }
}

#[test]
fn a_sequence_is_shared_with_one_peer_at_a_time() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    for n in [&mut a, &mut b, &mut c] {
        n.batch_execute("CREATE TABLE items (id serial PRIMARY KEY, name text)")
            .unwrap();
    }
    a.batch_execute(
        "SELECT sync_link_table('items', 'b'); SELECT sync_link_table('items', 'c'); \
         SELECT sync_share_sequence('items_id_seq', 'b', strategy => 'interleave');",
    )
    .unwrap();
    let (code, message, _, hint) = db_error(
        a.batch_execute(
            "SELECT sync_share_sequence('items_id_seq', 'c', strategy => 'interleave')",
        )
        .unwrap_err(),
    );
    assert_eq!(code, "55006", "{message}");
    assert!(!hint.is_empty());
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM synclink.shared_sequence"),
        0
    );
}

#[test]
fn a_ring_of_push_links_carries_a_change_round_once() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    a.execute(
        "SELECT sync_link_table('prices', 'b', direction => 'push')",
        &[],
    )
    .unwrap();
    b.execute(
        "SELECT sync_link_table('prices', 'c', direction => 'push')",
        &[],
    )
    .unwrap();
    c.execute(
        "SELECT sync_link_table('prices', 'a', direction => 'push')",
        &[],
    )
    .unwrap();
    a.batch_execute("INSERT INTO prices VALUES (1, 10)")
        .unwrap();
    c.batch_execute("INSERT INTO prices VALUES (2, 20)")
        .unwrap();
    // a → b → c, and c → a → b: each change stops before the node it started on
    settle(&mut [&mut a, &mut b, &mut c]);
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(rows(n, "prices"), ["(1,10)", "(2,20)"]);
        assert_eq!(conflicts(n), 0);
    }
}

#[test]
fn a_half_left_behind_is_not_paired_with_a_link_made_another_way() {
    let (nodes, mut a, mut b) = Nodes::one_cluster().peered();
    a.batch_execute(PRICES).unwrap();
    b.batch_execute(PRICES).unwrap();
    a.execute("SELECT sync_link_table('prices')", &[]).unwrap();
    // a drops its peer while b cannot be reached: b keeps its half
    a.batch_execute("ALTER SERVER synclink_b OPTIONS (SET port '1')")
        .unwrap();
    a.batch_execute("SELECT sync_drop_peer('b', cascade => true)")
        .unwrap();
    assert_eq!((links(&mut a), links(&mut b)), (0, 1));
    a.execute("SELECT sync_add_peer('b', $1)", &[&nodes.b.conninfo()])
        .unwrap();
    let (code, message, detail, _) = db_error(
        a.batch_execute(
            "SELECT sync_link_table('prices', conflict => 'manual', direction => 'push')",
        )
        .unwrap_err(),
    );
    assert_eq!(code, "42710", "{message}");
    assert!(
        detail.contains("conflict is last_write_wins, not manual")
            && detail.contains("direction is both, not pull"),
        "{detail}"
    );
    assert_eq!((links(&mut a), links(&mut b)), (0, 1));
    // the same way as b's half: paired again
    a.execute("SELECT sync_link_table('prices')", &[]).unwrap();
    a.batch_execute("INSERT INTO prices VALUES (1, 1)").unwrap();
    assert_eq!(rows(&mut b, "prices"), ["(1,1)"]);
}

#[test]
fn the_links_of_a_table_match_rows_by_one_key_and_send_the_same_columns() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    for n in [&mut a, &mut b, &mut c] {
        n.batch_execute("CREATE TABLE items (id int PRIMARY KEY, code text NOT NULL UNIQUE)")
            .unwrap();
    }
    a.execute("SELECT sync_link_table('items', 'b')", &[])
        .unwrap();
    let (code, message, _, hint) = db_error(
        a.batch_execute("SELECT sync_link_table('items', 'c', key => '{code}')")
            .unwrap_err(),
    );
    assert_eq!(code, "0A000", "{message}");
    assert!(
        message.contains("peer \"b\"") && message.contains("(id)"),
        "{message}"
    );
    assert!(hint.contains("key =>"), "{hint}");
    // the same from the other side: c asks a, whose other link has another key
    let (code, message, _, _) = db_error(
        c.batch_execute("SELECT sync_link_table('items', 'a', key => '{code}')")
            .unwrap_err(),
    );
    assert_eq!(code, "0A000", "{message}");
    assert_eq!((links(&mut a), links(&mut c)), (1, 0));
    // and send the same columns: a table's changes are captured once for all its links
    let (code, message, _, hint) = db_error(
        a.batch_execute("SELECT sync_link_table('items', 'c', exclude => '{code}')")
            .unwrap_err(),
    );
    assert_eq!(code, "0A000", "{message}");
    assert!(
        message.contains("peer \"b\"") && message.contains("other columns (id, code)"),
        "{message}"
    );
    assert!(hint.contains("exclude => '{}'"), "{hint}");
    assert_eq!((links(&mut a), links(&mut c)), (1, 0));
    a.execute("SELECT sync_link_table('items', 'c')", &[])
        .unwrap();
    assert_eq!(links(&mut a), 2);
}

#[test]
fn a_star_converges_under_concurrent_writes_to_the_same_rows() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    // a is the hub; b and c write the same rows as a, none delivered in between
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async'); \
         SELECT sync_link_table('prices', 'c', mode => 'async'); \
         INSERT INTO prices SELECT g, 0 FROM generate_series(1, 20) g;",
    )
    .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    write_rounds([&mut a, &mut b, &mut c], CONCURRENT, |_, _| {});
}

/// What a, b and c write in each round of the convergence tests: rows 2, 4, … (a), 1-10 (b),
/// 6-20 and one delete (c).
const CONCURRENT: [&str; 3] = [
    "UPDATE prices SET amount = {round}00 + id WHERE id % 2 = 0",
    "UPDATE prices SET amount = {round}10 + id WHERE id <= 10",
    "UPDATE prices SET amount = {round}20 + id WHERE id > 5; DELETE FROM prices WHERE id = {round}",
];

/// Each node's versions of the table's rows (key, version, node that made it): the same on
/// every node once a change has travelled as it was made, whatever the path.
fn versions(c: &mut Client, table: &str) -> Vec<String> {
    let vt: String = c
        .query_one(
            "SELECT DISTINCT version_table FROM synclink.link WHERE relid = $1::text::regclass",
            &[&table],
        )
        .unwrap()
        .get(0);
    c.query(
        &format!("SELECT format('%s %s %s %s', id, \"synclink$at\", \"synclink$node\", \"synclink$gen\") FROM {vt} ORDER BY id"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The versions of the rows of prices that exist (a delete that meets a row deleted already
/// changes nothing on the node and is not passed on, so a deleted row's version may differ
/// from node to node).
fn live_versions(n: &mut Client) -> Vec<String> {
    let ids: Vec<String> = rows(n, "prices")
        .iter()
        .map(|r| r[1..].split(',').next().unwrap().to_string())
        .collect();
    versions(n, "prices")
        .into_iter()
        .filter(|v| ids.contains(&v.split(' ').next().unwrap().to_string()))
        .collect()
}

/// Every node holds the same version of each row that exists; on a difference, the panic
/// shows for each differing key every node's version row and the conflicts it logged.
fn same_versions(nodes: &mut [&mut Client]) {
    let all: Vec<Vec<String>> = nodes.iter_mut().map(|n| live_versions(n)).collect();
    if all.iter().all(|v| *v == all[0]) {
        return;
    }
    let mut keys: Vec<String> = all
        .iter()
        .flat_map(|v| v.iter().filter(|x| !all.iter().all(|o| o.contains(x))))
        .map(|x| x.split(' ').next().unwrap().to_string())
        .collect();
    keys.sort();
    keys.dedup();
    let mut shown = String::new();
    for key in keys {
        for (i, n) in nodes.iter_mut().enumerate() {
            let vt: String = n
                .query_one("SELECT DISTINCT version_table FROM synclink.link", &[])
                .unwrap()
                .get(0);
            for r in n
                .query(
                    &format!(
                        "SELECT format('node %s version %s', $2::int, v::text) FROM {vt} v WHERE id = $1::text::int \
                         UNION ALL SELECT format('node %s row %s', $2::int, t::text) FROM prices t WHERE id = $1::text::int \
                         UNION ALL SELECT format('node %s conflict %s %s %s %s %s %s %s', $2::int, c.peer_name, c.kind, \
                                c.local_row, c.peer_row, c.local_version, c.peer_version, c.outcome) \
                           FROM synclink.conflict c WHERE c.key ->> 'id' = $1"
                    ),
                    &[&key, &(i as i32)],
                )
                .unwrap()
            {
                shown.push_str(&r.get::<_, String>(0));
                shown.push('\n');
            }
        }
    }
    panic!("the nodes hold different versions of the same rows:\n{shown}");
}

/// Three nodes each linked with the other two.
fn mesh(mode: &str) -> (Nodes, Node, Client, Client, Client) {
    let (nodes, node_c, mut a, mut b, c) = three();
    a.batch_execute(&format!(
        "SELECT sync_link_table('prices', 'b', mode => '{mode}'); \
         SELECT sync_link_table('prices', 'c', mode => '{mode}');"
    ))
    .unwrap();
    b.batch_execute(&format!(
        "SELECT sync_link_table('prices', 'c', mode => '{mode}');"
    ))
    .unwrap();
    (nodes, node_c, a, b, c)
}

#[test]
fn a_mesh_applies_each_change_once_with_the_version_it_was_made_with() {
    let (_nodes, _node_c, mut a, mut b, mut c) = mesh("async");
    // one capture per table: one function and one set of triggers for both links
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(triggers(n, "prices"), 4);
        assert_eq!(
            count(
                n,
                "SELECT count(DISTINCT capture_function) + count(DISTINCT version_table) \
                   FROM synclink.link"
            ),
            2
        );
    }
    a.batch_execute("INSERT INTO prices SELECT g, g FROM generate_series(1, 10) g")
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    b.batch_execute("UPDATE prices SET amount = 20 WHERE id <= 5")
        .unwrap();
    c.batch_execute("DELETE FROM prices WHERE id > 8").unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    let on_a = rows(&mut a, "prices");
    assert_eq!(on_a.len(), 8);
    assert_eq!(on_a[0], "(1,20)");
    let versions_a = versions(&mut a, "prices");
    for n in [&mut b, &mut c] {
        assert_eq!(rows(n, "prices"), on_a);
        // every node holds the version each change was made with, not one of its own
        assert_eq!(versions(n, "prices"), versions_a);
    }
    // a change reaching a node a second time, through the third node, is recognised
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(conflicts(n), 0);
    }
    // unlinking one peer leaves the other links of the table working
    a.batch_execute("SELECT sync_unlink_table('prices', 'c')")
        .unwrap();
    assert_eq!(triggers(&mut a, "prices"), 4);
    a.batch_execute("UPDATE prices SET amount = 30 WHERE id = 1")
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    for n in [&mut b, &mut c] {
        assert_eq!(rows(n, "prices")[0], "(1,30)");
    }
}

#[test]
fn a_mesh_converges_under_concurrent_writes_and_logs_each_conflict_once_where_it_met() {
    let (_nodes, _node_c, mut a, mut b, mut c) = mesh("async");
    a.batch_execute("INSERT INTO prices SELECT g, 0 FROM generate_series(1, 20) g")
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    write_rounds([&mut a, &mut b, &mut c], CONCURRENT, |[a, b, c], round| {
        let versions_a = live_versions(a);
        assert_eq!(live_versions(b), versions_a, "round {round}");
        assert_eq!(live_versions(c), versions_a, "round {round}");
    });
    // rows 2, 4 (a and b), 6, 8, 10 (all three), 12.. (a and c), 7, 9 (b and c) met on
    // each node that wrote them; a conflict a change met is logged once per node however
    // many paths brought it there
    let mut met = 0;
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(conflicts_logged_twice(n), 0);
        met += conflicts(n);
    }
    assert!(met > 0);
    // a row only one node wrote met nothing: b alone wrote id 5 in every round
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(
            count(
                n,
                "SELECT count(*) FROM synclink.conflict WHERE key->>'id' = '5'"
            ),
            0
        );
    }
}

/// Each writer updates, deletes and puts back rows 1..=40 of prices on its node, `rounds`
/// statements, each in its own transaction, with values no other writer writes.
fn write_concurrently(conninfos: &[(usize, String)], rounds: usize) {
    let writers: Vec<_> = conninfos
        .iter()
        .cloned()
        .map(|(n, conninfo)| {
            std::thread::spawn(move || {
                let mut c = Client::connect(&conninfo, postgres::NoTls).unwrap();
                let mut x: u64 = 7 + n as u64 * 1_000_003;
                for i in 0..rounds {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let id = (x >> 33) as i32 % 40 + 1;
                    let value = (n * 100_000 + i) as i32;
                    let sql = match i % 15 {
                        0 => "DELETE FROM prices WHERE id = $1 AND $2::int IS NOT NULL",
                        1 => "INSERT INTO prices VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        _ => "UPDATE prices SET amount = $2 WHERE id = $1",
                    };
                    c.execute(sql, &[&id, &value]).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
}

#[test]
fn a_star_of_three_children_settles_on_the_same_rows_while_a_child_is_down_and_back() {
    let (nodes, mut a, _) =
        Nodes::two_clusters(&["shared_preload_libraries = 'synclink'"]).peered();
    // a is the hub; b a child on a server of its own, c and d children on a's server
    let node_c = nodes.a.sibling("shop_c");
    let node_d = nodes.a.sibling("shop_d");
    for (name, node) in [("c", &node_c), ("d", &node_d)] {
        a.execute("SELECT sync_add_peer($1, $2)", &[&name, &node.conninfo()])
            .unwrap();
        node.connect()
            .execute("SELECT sync_add_peer('a', $1)", &[&nodes.a.conninfo()])
            .unwrap();
    }
    let (mut b, mut c, mut d) = (nodes.b.connect(), node_c.connect(), node_d.connect());
    for n in [&mut a, &mut b, &mut c, &mut d] {
        n.batch_execute(PRICES).unwrap();
    }
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async'); \
         SELECT sync_link_table('prices', 'c', mode => 'async'); \
         SELECT sync_link_table('prices', 'd'); \
         INSERT INTO prices SELECT g, 0 FROM generate_series(1, 40) g;",
    )
    .unwrap();
    converged(&mut [&mut a, &mut b, &mut c, &mut d]);
    let info = |n: usize, node: &Node| (n, node.socket_conninfo());
    // everyone writes the same rows at once
    write_concurrently(
        &[
            info(0, &nodes.a),
            info(1, &nodes.b),
            info(2, &node_c),
            info(3, &node_d),
        ],
        150,
    );
    // b goes down; the others go on writing; b comes back and writes too
    drop(b);
    nodes.b.stop_immediate();
    write_concurrently(
        &[info(0, &nodes.a), info(2, &node_c), info(3, &node_d)],
        150,
    );
    nodes.b.start_again();
    write_concurrently(
        &[
            info(0, &nodes.a),
            info(1, &nodes.b),
            info(2, &node_c),
            info(3, &node_d),
        ],
        150,
    );
    let mut b = nodes.b.connect();
    converged(&mut [&mut a, &mut b, &mut c, &mut d]);
    // nothing comes back once everything was delivered: no echo
    std::thread::sleep(Duration::from_secs(1));
    same_versions(&mut [&mut a, &mut b, &mut c, &mut d]);
    for n in [&mut a, &mut b, &mut c, &mut d] {
        assert_eq!(queued(n), 0);
        // each conflict logged once where it met
        assert_eq!(conflicts_logged_twice(n), 0);
    }
    assert!(conflicts(&mut a) > 0, "the writers met on the hub");
}

#[test]
fn a_hub_stopped_at_once_while_relaying_loses_nothing_either_way() {
    let (nodes, mut a, mut b) =
        Nodes::two_clusters(&["shared_preload_libraries = 'synclink'"]).peered();
    // a is the hub, on a server of its own; b and e are children on the other server
    let node_e = nodes.b.sibling("shop_e");
    a.execute("SELECT sync_add_peer('e', $1)", &[&node_e.conninfo()])
        .unwrap();
    node_e
        .connect()
        .execute("SELECT sync_add_peer('a', $1)", &[&nodes.a.conninfo()])
        .unwrap();
    let mut e = node_e.connect();
    for n in [&mut a, &mut b, &mut e] {
        n.batch_execute(PRICES).unwrap();
    }
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async'); \
         SELECT sync_link_table('prices', 'e', mode => 'async'); \
         INSERT INTO prices SELECT g, 0 FROM generate_series(1, 40) g;",
    )
    .unwrap();
    // records for both children, more than the worker hands on to each at a time
    a.batch_execute(
        "DO $$ BEGIN FOR i IN 41..2540 LOOP INSERT INTO prices VALUES (i, i); END LOOP; END $$",
    )
    .unwrap();
    converged(&mut [&mut a, &mut b, &mut e]);
    let info = |n: usize, node: &Node| (n, node.socket_conninfo());
    // everyone writes; then the children go on writing, and the hub stops at once meanwhile,
    // with changes on their way in and out, and stays down for a while
    write_concurrently(
        &[info(0, &nodes.a), info(1, &nodes.b), info(2, &node_e)],
        150,
    );
    let children = [info(1, &nodes.b), info(2, &node_e)];
    let writers = std::thread::spawn(move || write_concurrently(&children, 300));
    std::thread::sleep(Duration::from_millis(300));
    drop(a);
    nodes.a.stop_immediate();
    writers.join().unwrap();
    nodes.a.start_again();
    write_concurrently(
        &[info(0, &nodes.a), info(1, &nodes.b), info(2, &node_e)],
        100,
    );
    let mut a = nodes.a.connect();
    converged(&mut [&mut a, &mut b, &mut e]);
    same_versions(&mut [&mut a, &mut b, &mut e]);
}

/// Wait (delivery left to the workers) until nothing is queued anywhere and every node holds
/// the first one's rows.
fn converged(nodes: &mut [&mut Client]) {
    wait_until(Duration::from_secs(90), || {
        let (first, others) = nodes.split_first_mut().unwrap();
        let rows_first = rows(first, "prices");
        queued(first) == 0
            && others
                .iter_mut()
                .all(|n| queued(n) == 0 && rows(n, "prices") == rows_first)
    });
}

#[test]
fn a_hub_that_prefers_itself_wins_everywhere_and_its_children_settle_between_them() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async', conflict => 'prefer_local'); \
         SELECT sync_link_table('prices', 'c', mode => 'async', conflict => 'prefer_local'); \
         INSERT INTO prices SELECT g, 0 FROM generate_series(1, 20) g;",
    )
    .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    // the hub writes rows 1-10, both children rows 5-20: 5-10 meet the hub's, 11-20 only the
    // children's
    let statements = [
        "UPDATE prices SET amount = {round}00 + id WHERE id <= 10",
        "UPDATE prices SET amount = {round}10 + id WHERE id >= 5",
        "UPDATE prices SET amount = {round}20 + id WHERE id >= 5",
    ];
    write_rounds([&mut a, &mut b, &mut c], statements, |[_, b, _], round| {
        // the hub's rows won wherever it wrote
        assert_eq!(
            count(
                b,
                &format!("SELECT count(*) FROM prices WHERE id <= 10 AND amount = {round}00 + id")
            ),
            10,
            "round {round}"
        );
    });
}

/// In a mesh whose links prefer a, a's change wins over any made without it, and one made
/// after it, anywhere, wins over it, whichever path each takes: every node settles on the same
/// rows and versions, also when a's change reaches a node late, after the row moved on twice
/// there (which "a's change wins" alone would undo on that node only). b and c link with
/// last_write_wins, and order the versions alike.
#[test]
fn a_mesh_that_prefers_a_node_converges_when_its_change_arrives_late() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async', conflict => 'prefer_local'); \
         SELECT sync_link_table('prices', 'c', mode => 'async', conflict => 'prefer_local'); \
         INSERT INTO prices VALUES (1, 1), (2, 1);",
    )
    .unwrap();
    b.batch_execute("SELECT sync_link_table('prices', 'c', mode => 'async')")
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    // row 2: b writes after a, before a's change reached it; a's wins
    a.batch_execute("UPDATE prices SET amount = 6 WHERE id = 2")
        .unwrap();
    b.batch_execute("UPDATE prices SET amount = 5 WHERE id = 2")
        .unwrap();
    // row 1: a's change reaches b, b changes the row, c gets both from b and changes it again;
    // only then does a's change reach c by its own link
    a.batch_execute("UPDATE prices SET amount = 2 WHERE id = 1")
        .unwrap();
    flush_to(&mut a, "b");
    assert_eq!(rows(&mut b, "prices"), ["(1,2)", "(2,6)"]);
    b.batch_execute("UPDATE prices SET amount = 3 WHERE id = 1")
        .unwrap();
    flush_to(&mut b, "c");
    c.batch_execute("UPDATE prices SET amount = 4 WHERE id = 1")
        .unwrap();
    flush_to(&mut a, "c");
    assert_eq!(rows(&mut c, "prices"), ["(1,4)", "(2,6)"]);
    settle(&mut [&mut a, &mut b, &mut c]);
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(rows(n, "prices"), ["(1,4)", "(2,6)"]);
        assert!(open_conflicts(n).is_empty());
    }
    same_versions(&mut [&mut a, &mut b, &mut c]);
    // a raised each row's generation with its insert and its update; the versions made after
    // it kept it
    let generations: Vec<String> = versions(&mut a, "prices")
        .iter()
        .map(|v| v.rsplit(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(generations, ["2", "2"]);
}

/// A mesh whose links with a prefer a (and whose link between b and c is last_write_wins),
/// with writers on all three nodes at once and the workers delivering in whatever order the
/// paths make: every node ends with the same rows and versions, and no conflict is left open.
/// (Two workers delivering the same change to a node by two paths at the same moment may each
/// log its meeting with the row there, when neither changes the row: the README says so.)
#[test]
fn a_mesh_that_prefers_a_node_converges_under_concurrent_writers() {
    let (nodes, mut a, mut b) =
        Nodes::two_clusters(&["shared_preload_libraries = 'synclink'"]).peered();
    let node_c = nodes.a.sibling("shop_c");
    let mut c = node_c.connect();
    for (n, other) in [(&mut a, "b"), (&mut b, "a")] {
        n.execute("SELECT sync_add_peer('c', $1)", &[&node_c.conninfo()])
            .unwrap();
        c.execute(
            "SELECT sync_add_peer($1, $2)",
            &[
                &other,
                &match other {
                    "a" => nodes.a.conninfo(),
                    _ => nodes.b.conninfo(),
                },
            ],
        )
        .unwrap();
    }
    for n in [&mut a, &mut b, &mut c] {
        n.batch_execute(PRICES).unwrap();
    }
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async', conflict => 'prefer_local'); \
         SELECT sync_link_table('prices', 'c', mode => 'async', conflict => 'prefer_local'); \
         INSERT INTO prices SELECT g, 0 FROM generate_series(1, 40) g;",
    )
    .unwrap();
    b.batch_execute("SELECT sync_link_table('prices', 'c', mode => 'async')")
        .unwrap();
    converged(&mut [&mut a, &mut b, &mut c]);
    let info = |n: usize, node: &Node| (n, node.socket_conninfo());
    write_concurrently(
        &[info(0, &nodes.a), info(1, &nodes.b), info(2, &node_c)],
        200,
    );
    converged(&mut [&mut a, &mut b, &mut c]);
    std::thread::sleep(Duration::from_secs(1));
    same_versions(&mut [&mut a, &mut b, &mut c]);
    let mut met = 0;
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(queued(n), 0);
        assert!(open_conflicts(n).is_empty());
        met += conflicts(n);
    }
    assert!(met > 0, "the writers met");
}

/// Links made before a table's links shared one version table each had their own: making the
/// table's capture anew (as the update to 0.5.0 does) merges them, the later version of a key
/// kept, and drops the other.
#[test]
fn the_version_tables_of_a_tables_links_are_merged_into_one() {
    let (_nodes, _node_c, mut a, mut b, mut c) = mesh("async");
    a.batch_execute("INSERT INTO prices VALUES (1, 1), (2, 2)")
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    let vt: String = a
        .query_one("SELECT DISTINCT version_table FROM synclink.link", &[])
        .unwrap()
        .get(0);
    // the link with c as it was before 0.5.0: a version table of its own, where key 1 has a
    // later version than in the shared one and key 3 one the shared table lacks; neither has
    // the generations of 0.6.0 (and the one merged from sorts first)
    a.batch_execute(&format!(
        "CREATE TABLE synclink.prices_c_version (LIKE {vt} INCLUDING ALL);
         ALTER TABLE synclink.prices_c_version DROP COLUMN \"synclink$gen\";
         ALTER TABLE {vt} DROP COLUMN \"synclink$gen\";
         INSERT INTO synclink.prices_c_version
              SELECT id, \"synclink$at\" + 5, \"synclink$node\", NULL, NULL FROM {vt} WHERE id = 1;
         INSERT INTO synclink.prices_c_version VALUES (3, 42, 'elsewhere', NULL, NULL);
         UPDATE {vt} SET \"synclink$at\" = \"synclink$at\" + 5 WHERE id = 2;
         UPDATE synclink.link SET version_table = 'synclink.prices_c_version' WHERE peer_name = 'c';"
    ))
    .unwrap();
    let before = versions(&mut b, "prices");
    a.batch_execute("SELECT sync_refresh_link('prices', 'c')")
        .unwrap();
    assert_eq!(
        count(
            &mut a,
            "SELECT count(DISTINCT version_table) FROM synclink.link"
        ),
        1
    );
    assert_eq!(
        count(
            &mut a,
            "SELECT count(*) FROM pg_class WHERE relname = 'prices_c_version'"
        ),
        0
    );
    let merged = versions(&mut a, "prices");
    let at = |v: &str| v.split(' ').nth(1).unwrap().parse::<i64>().unwrap();
    assert_eq!(merged.len(), 3, "{merged:?}");
    assert_eq!(
        at(&merged[0]),
        at(&before[0]) + 5,
        "the later version of key 1"
    );
    assert_eq!(
        at(&merged[1]),
        at(&before[1]) + 5,
        "the later version of key 2"
    );
    assert_eq!(merged[2], "3 42 elsewhere 0");
}

/// A TRUNCATE applied from one child is passed on as the deletes it made, with versions of
/// their own: the other child removes its rows too (with the versions the rows had before, it
/// would take the deletes for changes it had seen and keep its rows).
#[test]
fn a_truncate_passed_on_by_a_hub_empties_the_other_children() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async'); \
         SELECT sync_link_table('prices', 'c', mode => 'async'); \
         INSERT INTO prices SELECT g, g FROM generate_series(1, 5) g;",
    )
    .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(rows(&mut c, "prices").len(), 5);
    b.batch_execute("TRUNCATE prices").unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    for n in [&mut a, &mut b, &mut c] {
        assert!(rows(n, "prices").is_empty());
        assert_eq!(conflicts(n), 0);
    }
}

/// A hub that prefers itself passes on a child's TRUNCATE as deletes of its own making, with
/// the generation the rows had: the child's next changes to those rows are not beaten by them
/// (they would be, had the hub counted them as its own changes).
#[test]
fn a_truncate_passed_on_by_a_hub_that_prefers_itself_does_not_outrank_the_child() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async', conflict => 'prefer_local'); \
         SELECT sync_link_table('prices', 'c', mode => 'async', conflict => 'prefer_local'); \
         INSERT INTO prices SELECT g, g FROM generate_series(1, 5) g;",
    )
    .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    b.batch_execute("TRUNCATE prices").unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    b.batch_execute("INSERT INTO prices VALUES (1, 100), (6, 600)")
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(rows(n, "prices"), ["(1,100)", "(6,600)"]);
    }
    same_versions(&mut [&mut a, &mut b, &mut c]);
}

/// A table has one preferred node wherever it travels: a link that would prefer another one,
/// on this node or on the peer, is refused, and nothing is made.
#[test]
fn a_second_preferred_node_for_a_table_is_refused() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    a.batch_execute("SELECT sync_link_table('prices', 'b', conflict => 'prefer_local')")
        .unwrap();
    // on b, whose link with a prefers a
    let err = b
        .execute(
            "SELECT sync_link_table('prices', 'c', conflict => 'prefer_local')",
            &[],
        )
        .unwrap_err();
    let (code, message, _, hint) = db_error(err);
    assert_eq!(code, "0A000", "{message}");
    assert!(
        message.starts_with("table \"public\".\"prices\" prefers node \"shop_a")
            && message.contains("not \"shop_b"),
        "{message}"
    );
    assert!(hint.contains("last_write_wins"), "{hint}");
    // asked from c, whose own links prefer no node: b refuses
    let err = c
        .execute(
            "SELECT sync_link_table('prices', 'b', conflict => 'prefer_local')",
            &[],
        )
        .unwrap_err();
    let (code, message, _, _) = db_error(err);
    assert_eq!(code, "0A000", "{message}");
    assert_eq!(links(&mut b), 1);
    assert_eq!(links(&mut c), 0);
    // last_write_wins, or the same preferred node, is linked
    c.batch_execute("SELECT sync_link_table('prices', 'b')")
        .unwrap();
    c.batch_execute("SELECT sync_link_table('prices', 'a', conflict => 'prefer_peer')")
        .unwrap();
    assert_eq!(links(&mut c), 2);
}

/// In a triangle, a change that reaches a node by a second path after the node has changed
/// the row again is one it has seen: skipped, not logged as a conflict.
#[test]
fn a_change_arriving_by_a_second_path_after_the_row_moved_on_is_no_conflict() {
    let (_nodes, _node_c, mut a, mut b, mut c) = mesh("async");
    a.batch_execute("INSERT INTO prices VALUES (1, 1)").unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    a.batch_execute("UPDATE prices SET amount = 2 WHERE id = 1")
        .unwrap();
    flush_to(&mut a, "c");
    c.batch_execute("UPDATE prices SET amount = 3 WHERE id = 1")
        .unwrap();
    // b gets a's change and passes it on to c, which has moved past it
    flush_to(&mut a, "b");
    flush_to(&mut b, "c");
    settle(&mut [&mut a, &mut b, &mut c]);
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(rows(n, "prices"), ["(1,3)"]);
        assert_eq!(conflicts(n), 0);
    }
}

/// A write to a table linked async with several peers is stored once, whatever their number;
/// it takes its place in each peer's queue when handed on, and until then holds back what
/// comes after it for those peers: a sync-mode write to one of them first hands it on and
/// delivers it, then its own change.
#[test]
fn a_record_for_several_peers_is_stored_once_and_keeps_its_place_in_each_queue() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    for n in [&mut a, &mut b, &mut c] {
        n.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            .unwrap();
    }
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async'); \
         SELECT sync_link_table('prices', 'c', mode => 'async'); \
         SELECT sync_link_table('notes', 'b');",
    )
    .unwrap();
    a.batch_execute("INSERT INTO prices VALUES (1, 10)")
        .unwrap();
    a.batch_execute("INSERT INTO prices SELECT g, g FROM generate_series(2, 300) g")
        .unwrap();
    assert_eq!(count(&mut a, "SELECT count(*) FROM synclink.fanout"), 2);
    assert_eq!(count(&mut a, "SELECT count(*) FROM synclink.outbox"), 0);
    // each link shows them queued
    for peer in ["b", "c"] {
        assert_eq!(
            count(
                &mut a,
                &format!("SELECT queued FROM sync_status WHERE peer = '{peer}' AND \"table\"::text LIKE '%prices'")
            ),
            2
        );
    }
    // a sync-mode write to b delivers them to b first, then its own change; c's wait in its
    // queue
    a.batch_execute("INSERT INTO notes VALUES (1, 'after the prices')")
        .unwrap();
    assert_eq!(count(&mut b, "SELECT count(*) FROM prices"), 300);
    assert_eq!(count(&mut b, "SELECT count(*) FROM notes"), 1);
    assert_eq!(count(&mut a, "SELECT count(*) FROM synclink.fanout"), 0);
    assert_eq!(
        count(
            &mut a,
            "SELECT count(*) FROM synclink.outbox WHERE peer_name = 'c'"
        ),
        2
    );
    assert_eq!(queued(&mut a), 2);
    // unlinking c while they wait for it is refused, as for any queued change
    let (code, _, _, _) = db_error(
        a.batch_execute("SELECT sync_unlink_table('prices', 'c')")
            .unwrap_err(),
    );
    assert_eq!(code, "55006");
    settle(&mut [&mut a, &mut b, &mut c]);
    for n in [&mut b, &mut c] {
        assert_eq!(rows(n, "prices"), rows(&mut a, "prices"));
    }
    assert_eq!(rows(&mut b, "notes"), ["(1,\"after the prices\")"]);
    assert_eq!(queued(&mut a), 0);
}

/// While another session hands a record for several peers on (its transaction still open),
/// delivery to those peers stops short of it: a sync-mode write to one of them queues behind
/// it instead of overtaking it.
/// Records for several peers that nobody hands on (no worker runs here) do not pile up
/// silently either.
#[test]
fn records_waiting_to_be_handed_on_raise_the_backlog_warning() {
    let (nodes, _node_c, mut a, _b, _c) = three();
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async'); \
         SELECT sync_link_table('prices', 'c', mode => 'async');",
    )
    .unwrap();
    let (mut w, warnings) = listening(&nodes.a);
    w.batch_execute(
        "SET synclink.backlog_warning = 100;
         DO $$ BEGIN FOR i IN 1..2000 LOOP INSERT INTO prices VALUES (i, i); END LOOP; END $$",
    )
    .unwrap();
    assert_eq!(count(&mut a, "SELECT count(*) FROM synclink.fanout"), 2000);
    let said = warnings.lock().unwrap().clone();
    assert!(!said.is_empty(), "no warning");
    assert!(
        said.iter()
            .all(|m| m == "more than 100 changes for several peers wait to be handed on to each"),
        "{said:?}"
    );
}

#[test]
fn nothing_overtakes_a_record_being_handed_on_by_another_session() {
    let (nodes, _node_c, mut a, mut b, mut c) = three();
    for n in [&mut a, &mut b, &mut c] {
        n.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            .unwrap();
    }
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async'); \
         SELECT sync_link_table('prices', 'c', mode => 'async'); \
         SELECT sync_link_table('notes', 'b'); \
         INSERT INTO prices VALUES (1, 10);",
    )
    .unwrap();
    // another session hands it on (to b's queue and c's) and delivers c's, uncommitted
    let mut other = nodes.a.connect();
    other
        .batch_execute("BEGIN; SELECT sync_flush('c');")
        .unwrap();
    a.batch_execute("INSERT INTO notes VALUES (1, 'after the price')")
        .unwrap();
    assert_eq!(count(&mut b, "SELECT count(*) FROM notes"), 0);
    assert_eq!(count(&mut b, "SELECT count(*) FROM prices"), 0);
    assert_eq!(
        count(
            &mut a,
            "SELECT count(*) FROM synclink.outbox WHERE peer_name = 'b'"
        ),
        1,
        "the note waits in b's queue"
    );
    // nor does delivering b's queue send it ahead of the price
    flush_to(&mut a, "b");
    assert_eq!(count(&mut b, "SELECT count(*) FROM notes"), 0);
    other.batch_execute("COMMIT").unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(rows(&mut b, "prices"), ["(1,10)"]);
    assert_eq!(rows(&mut c, "prices"), ["(1,10)"]);
    assert_eq!(rows(&mut b, "notes"), ["(1,\"after the price\")"]);
}

/// An authority pushing to two children: each child's own edits stay on it (nothing is sent
/// from a child, so nothing reaches the authority or the other child) until the authority
/// changes the same row, which then wins there without a conflict.
#[test]
fn a_push_only_hub_feeds_two_children_whose_own_edits_stay_local() {
    let (_nodes, _node_c, mut a, mut b, mut c) = three();
    a.batch_execute(
        "SELECT sync_link_table('prices', 'b', mode => 'async', direction => 'push'); \
         SELECT sync_link_table('prices', 'c', mode => 'async', direction => 'push'); \
         INSERT INTO prices SELECT g, g FROM generate_series(1, 3) g;",
    )
    .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    for n in [&mut b, &mut c] {
        assert_eq!(rows(n, "prices"), ["(1,1)", "(2,2)", "(3,3)"]);
        assert_eq!(triggers(n, "prices"), 0);
    }
    b.batch_execute("UPDATE prices SET amount = 20 WHERE id = 2")
        .unwrap();
    c.batch_execute("DELETE FROM prices WHERE id = 3").unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(rows(&mut a, "prices"), ["(1,1)", "(2,2)", "(3,3)"]);
    assert_eq!(rows(&mut b, "prices"), ["(1,1)", "(2,20)", "(3,3)"]);
    assert_eq!(rows(&mut c, "prices"), ["(1,1)", "(2,2)"]);
    // the authority changes those rows: its values win on both children
    a.batch_execute("UPDATE prices SET amount = amount * 100 WHERE id IN (2, 3)")
        .unwrap();
    settle(&mut [&mut a, &mut b, &mut c]);
    for n in [&mut a, &mut b, &mut c] {
        assert_eq!(rows(n, "prices"), ["(1,1)", "(2,200)", "(3,300)"]);
        assert_eq!(conflicts(n), 0);
    }
}
