//! The capture side: one generated PL/pgSQL trigger function per link, fired once per
//! statement with its transition tables, packing the changed rows into change records of up
//! to CHUNK_ROWS rows each and handing them to `synclink.ship`.

use crate::sql::{ident, join, literal};

/// Rows per change record: large enough that a bulk statement costs a handful of round trips,
/// small enough that one record stays a few megabytes.
pub const CHUNK_ROWS: usize = 5000;

pub struct CaptureSpec<'a> {
    pub link_id: i32,
    pub function: &'a str,
    pub table_display: &'a str,
    pub peer_name: &'a str,
    pub row_type: &'a str,
    pub columns: &'a [String],
    pub key: &'a [String],
    /// The table's own primary key when rows are matched by another key: an UPDATE that
    /// changes the key is sent as old/new pairs found through it, so the peer updates its row
    /// in place (keeping its excluded columns) instead of deleting and inserting it.
    pub pair_by: Option<&'a [String]>,
    /// async mode: records go straight into the outbox from the capture function; sync mode
    /// hands them to synclink.ship(), which sends them or queues them
    pub queue_only: bool,
    /// this node's name: the origin of a change unless it is being applied from elsewhere
    pub node: &'a str,
}

/// `ROW(alias."a", alias."b")::synclink."t_row"` for the link's wire columns.
fn row_expr(spec: &CaptureSpec, alias: &str) -> String {
    format!(
        "ROW({})::{}",
        join(spec.columns, ", ", |c| format!("{alias}.{}", ident(c))),
        spec.row_type
    )
}

/// The SELECT that turns `source` rows into chunked text arrays.
fn chunks(spec: &CaptureSpec, source: &str, filter: &str) -> String {
    format!(
        "SELECT array_agg({row})::text AS rows\n\
         \x20             FROM (SELECT *, (row_number() OVER () - 1) / {CHUNK_ROWS} AS \"synclink$part\"\n\
         \x20                     FROM {source} s{filter}) r\n\
         \x20            GROUP BY r.\"synclink$part\"",
        row = row_expr(spec, "r"),
    )
}

fn ship_loop(spec: &CaptureSpec, query: &str, op: char, new_or_old: &str) -> String {
    let args = match new_or_old {
        "new" => "part.rows, NULL",
        "old" => "NULL, part.rows",
        _ => "part.new_rows, part.old_rows",
    };
    if spec.queue_only {
        // (not "part": that is the loop variable of the sync branch, and PL/pgSQL would read
        // part.rows as it)
        return format!(
            "        INSERT INTO synclink.outbox (peer_name, link_id, origin, op, new_rows, old_rows)\n\
             \x20       SELECT {peer}, {id}, {origin}, '{op}', {args}\n\
             \x20         FROM ({query}) chunk;\n",
            peer = literal(spec.peer_name),
            id = spec.link_id,
            origin = origin_sql(spec),
            args = args.replace("part.", "chunk."),
        );
    }
    format!(
        "        FOR part IN\n            {query}\n        LOOP\n            \
         PERFORM synclink.ship({}, '{op}', {args});\n        END LOOP;\n",
        spec.link_id
    )
}

/// The origin a queued change carries: the node it started on.
fn origin_sql(spec: &CaptureSpec) -> String {
    format!(
        "coalesce(synclink.applying_origin(), {})",
        literal(spec.node)
    )
}

fn truncate_sql(spec: &CaptureSpec) -> String {
    if spec.queue_only {
        format!(
            "        INSERT INTO synclink.outbox (peer_name, link_id, origin, op)\n\
             \x20       VALUES ({}, {}, {}, 'T');\n",
            literal(spec.peer_name),
            spec.link_id,
            origin_sql(spec)
        )
    } else {
        format!(
            "        PERFORM synclink.ship({}, 'T', NULL, NULL);\n",
            spec.link_id
        )
    }
}

pub fn function_sql(spec: &CaptureSpec) -> String {
    let key_match = join(spec.key, " AND ", |k| {
        format!("n.{k} = s.{k}", k = ident(k))
    });
    let paired = spec.pair_by.map(|pk| {
        (
            join(pk, " AND ", |k| format!("n.{k} = s.{k}", k = ident(k))),
            join(spec.key, ", ", |k| format!("s.{}", ident(k))),
            join(spec.key, ", ", |k| format!("n.{}", ident(k))),
        )
    });
    let vanished = match &paired {
        // a row whose own key stayed is re-keyed below, not removed
        Some((pk_match, _, _)) => format!(
            "\n                     WHERE NOT EXISTS (SELECT FROM new_rows n WHERE {key_match})\n\
             \x20                      AND NOT EXISTS (SELECT FROM new_rows n WHERE {pk_match})"
        ),
        None => format!(
            "\n                     WHERE NOT EXISTS (SELECT FROM new_rows n WHERE {key_match})"
        ),
    };
    let rekey = match &paired {
        Some((pk_match, old_key, new_key)) => format!(
            "        -- Rows whose match key changed, paired through the table's own primary key.\n{}",
            ship_loop(
                spec,
                &format!(
                    "SELECT array_agg(p.o ORDER BY p.i)::text AS old_rows, array_agg(p.n ORDER BY p.i)::text AS new_rows\n\
                     \x20             FROM (SELECT {old_row} AS o, {new_row} AS n, row_number() OVER () AS i\n\
                     \x20                     FROM old_rows s JOIN new_rows n ON {pk_match}\n\
                     \x20                    WHERE ({old_key}) IS DISTINCT FROM ({new_key})) p\n\
                     \x20            GROUP BY (p.i - 1) / {CHUNK_ROWS}",
                    old_row = row_expr(spec, "s"),
                    new_row = row_expr(spec, "n"),
                ),
                'R',
                "both",
            )
        ),
        None => String::new(),
    };
    format!(
        r#"CREATE FUNCTION {function}() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET "DateStyle" = 'ISO, YMD'
    SET "IntervalStyle" = 'postgres'
    SET bytea_output = 'hex'
    SET extra_float_digits = '3'
    SET enable_nestloop = off
AS $synclink$
-- Captures changes to {table} for peer {peer} (synclink link {id}).
-- Made by sync_link_table(); sync_unlink_table() drops it.
-- Rows travel as {row_type}[] in text form, {CHUNK_ROWS} rows per change record at most.
-- The session settings above make that text mean the same on the receiving side.
-- The triggers' WHEN clause keeps changes synclink applies from this peer from being sent back.
-- enable_nestloop is off because PL/pgSQL keeps the plans made for the first statement's
-- transition tables: a nested loop chosen for 1 row would be quadratic for 100,000.
DECLARE
    part record;
BEGIN
    IF TG_OP = 'INSERT' THEN
{insert}    ELSIF TG_OP = 'UPDATE' THEN
        -- Keys that no longer exist after the statement are removed first, across the whole
        -- statement, so a key that moved into another chunk is never deleted after its upsert.
{rekey}{vanish}{update}    ELSIF TG_OP = 'DELETE' THEN
{delete}    ELSE
{truncate}    END IF;
    RETURN NULL;
END
$synclink$"#,
        function = spec.function,
        table = spec.table_display,
        peer = literal(spec.peer_name),
        id = spec.link_id,
        row_type = spec.row_type,
        insert = ship_loop(spec, &chunks(spec, "new_rows", ""), 'I', "new"),
        rekey = rekey,
        truncate = truncate_sql(spec),
        vanish = ship_loop(spec, &chunks(spec, "old_rows", &vanished), 'K', "old"),
        update = ship_loop(spec, &chunks(spec, "new_rows", ""), 'U', "new"),
        delete = ship_loop(spec, &chunks(spec, "old_rows", ""), 'D', "old"),
    )
}

/// The statement triggers that call the capture function, one per event.
/// The WHEN clause skips the function while synclink applies a change from the peer itself.
pub fn trigger_sqls(
    table: &str,
    function: &str,
    peer_name: &str,
    peer_node: &str,
) -> Vec<(String, String)> {
    let events = [
        ("insert", "INSERT", "REFERENCING NEW TABLE AS new_rows "),
        (
            "update",
            "UPDATE",
            "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows ",
        ),
        ("delete", "DELETE", "REFERENCING OLD TABLE AS old_rows "),
        ("truncate", "TRUNCATE", ""),
    ];
    events
        .iter()
        .map(|(suffix, event, referencing)| {
            let name = format!("synclink_{peer_name}_{suffix}");
            let sql = format!(
                "CREATE TRIGGER {} AFTER {event} ON {table} {referencing}FOR EACH STATEMENT\n    \
                 WHEN (NOT synclink.applying_from({})) EXECUTE FUNCTION {function}()",
                ident(&name),
                literal(peer_node)
            );
            (name, sql)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(cols: &'a [String], key: &'a [String]) -> CaptureSpec<'a> {
        CaptureSpec {
            link_id: 7,
            function: "synclink.\"products_b_capture\"",
            table_display: "public.products",
            peer_name: "b",
            row_type: "synclink.\"products_b_row\"",
            columns: cols,
            key,
            pair_by: None,
            queue_only: false,
            node: "shop_abc123",
        }
    }

    #[test]
    fn capture_function_ships_every_operation() {
        let cols = vec!["id".to_string(), "Name \"x\"".to_string()];
        let key = vec!["id".to_string()];
        let sql = function_sql(&spec(&cols, &key));
        for op in ["'I'", "'U'", "'K'", "'D'", "'T'"] {
            assert!(
                sql.contains(&format!("synclink.ship(7, {op}")),
                "{op} missing in\n{sql}"
            );
        }
        assert!(sql.contains("ROW(r.\"id\", r.\"Name \"\"x\"\"\")::synclink.\"products_b_row\""));
        assert!(sql.contains("n.\"id\" = s.\"id\""));
        assert!(
            sql.contains("SECURITY DEFINER")
                && sql.contains("SET search_path = pg_catalog, pg_temp")
        );
    }

    #[test]
    fn a_sync_key_change_is_paired_through_the_primary_key() {
        let cols = vec!["email".to_string(), "name".to_string()];
        let key = vec!["email".to_string()];
        let pk = vec!["id".to_string()];
        let mut s = spec(&cols, &key);
        s.pair_by = Some(&pk);
        let sql = function_sql(&s);
        assert!(
            sql.contains("FROM old_rows s JOIN new_rows n ON n.\"id\" = s.\"id\""),
            "{sql}"
        );
        assert!(
            sql.contains("WHERE (s.\"email\") IS DISTINCT FROM (n.\"email\")"),
            "{sql}"
        );
        assert!(
            sql.contains("synclink.ship(7, 'R', part.new_rows, part.old_rows)"),
            "{sql}"
        );
        assert!(
            sql.find("'R'").unwrap() < sql.find("'K'").unwrap(),
            "re-key before removals"
        );
    }

    #[test]
    fn async_capture_writes_the_outbox_itself() {
        let cols = vec!["id".to_string(), "v".to_string()];
        let key = vec!["id".to_string()];
        let mut s = spec(&cols, &key);
        s.queue_only = true;
        let sql = function_sql(&s);
        assert!(!sql.contains("synclink.ship("), "{sql}");
        for op in [
            "'I', chunk.rows, NULL",
            "'U', chunk.rows, NULL",
            "'K', NULL, chunk.rows",
            "'D', NULL, chunk.rows",
        ] {
            assert!(
                sql.contains(&format!(
                    "SELECT 'b', 7, coalesce(synclink.applying_origin(), 'shop_abc123'), {op}"
                )),
                "{op} in\n{sql}"
            );
        }
        assert!(sql
            .contains("VALUES ('b', 7, coalesce(synclink.applying_origin(), 'shop_abc123'), 'T')"));
    }

    #[test]
    fn composite_key_matches_all_columns() {
        let cols = vec!["a".to_string(), "b".to_string(), "v".to_string()];
        let key = vec!["a".to_string(), "b".to_string()];
        let sql = function_sql(&spec(&cols, &key));
        assert!(sql.contains("n.\"a\" = s.\"a\" AND n.\"b\" = s.\"b\""));
    }

    #[test]
    fn triggers_reference_the_right_transition_tables() {
        let t = trigger_sqls(
            "\"public\".\"products\"",
            "synclink.\"f\"",
            "b",
            "shop_abc123",
        );
        assert!(t
            .iter()
            .all(|(_, sql)| sql.contains("WHEN (NOT synclink.applying_from('shop_abc123'))")));
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].0, "synclink_b_insert");
        assert!(t[1]
            .1
            .contains("OLD TABLE AS old_rows NEW TABLE AS new_rows"));
        assert!(!t[3].1.contains("REFERENCING"));
    }
}
