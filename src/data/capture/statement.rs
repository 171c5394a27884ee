//! The capture side: one generated PL/pgSQL trigger function per link, fired once per
//! statement with its transition tables, packing the changed rows into change records of up
//! to CHUNK_ROWS rows or CHUNK_BYTES bytes each and handing them to `synclink.ship`.

use crate::pg::sql::{ident, join, literal};

/// Rows per change record: large enough that a bulk statement costs a handful of round trips,
/// small enough that one record stays a few megabytes.
pub const CHUNK_ROWS: usize = 5000;

/// Bytes of row text per change record (one row larger than this is a record of its own): a
/// record of 5,000 wide rows must stay far below the 1 GB a PostgreSQL value or protocol
/// message may have, on both nodes and through postgres_fdw.
pub const CHUNK_BYTES: usize = 32 << 20;

/// The capture function's work_mem: the sorts that pair a bulk statement's rows with their
/// versions stay in memory up to here, and the memory a statement's capture takes is bounded
/// by a few times this, however many rows it changed.
const CAPTURE_WORK_MEM: &str = "32MB";

/// Each row counts as at least this many bytes, so that CHUNK_ROWS small rows fill a record.
const MIN_ROW_WEIGHT: usize = CHUNK_BYTES.div_ceil(CHUNK_ROWS);

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
    /// the link's version table: per key, who changed the row last and when
    pub version_table: &'a str,
}

/// `ROW(alias."a", alias."b")::synclink."t_row"` for the link's wire columns.
fn row_expr(spec: &CaptureSpec, alias: &str) -> String {
    format!(
        "ROW({})::{}",
        join(spec.columns, ", ", |c| format!("{alias}.{}", ident(c))),
        spec.row_type
    )
}

/// The version table's upsert for the keys `select` yields (key columns, new version, node),
/// returning each key's row with the version it replaced kept in the base columns.
fn version_upsert(spec: &CaptureSpec, select: &str) -> String {
    let keys = join(spec.key, ", ", |k| ident(k));
    format!(
        "INSERT INTO {vt} AS v ({keys}, \"synclink$at\", \"synclink$node\")\n\
         \x20          {select}\n\
         \x20          ON CONFLICT ({keys}) DO UPDATE\n\
         \x20             SET \"synclink$at\" = greatest(EXCLUDED.\"synclink$at\", v.\"synclink$at\" + 1),\n\
         \x20                 \"synclink$node\" = EXCLUDED.\"synclink$node\",\n\
         \x20                 \"synclink$base_at\" = v.\"synclink$at\",\n\
         \x20                 \"synclink$base_node\" = v.\"synclink$node\"\n\
         \x20          RETURNING v.*",
        vt = spec.version_table,
    )
}

/// `alias.k = s.k` for each match key column `k`: rows of `alias` that are the source row's.
fn matching(spec: &CaptureSpec, alias: &str) -> String {
    join(spec.key, " AND ", |k| {
        format!("{alias}.{k} = s.{k}", k = ident(k))
    })
}

/// A row's stamp (synclink.stamp), from the version columns the upsert returned under `alias`.
fn stamp_expr(alias: &str, op: char) -> String {
    format!(
        "ROW({alias}.\"synclink$at\", {alias}.\"synclink$node\", {alias}.\"synclink$base_at\", \
         {alias}.\"synclink$base_node\", '{op}')::synclink.stamp"
    )
}

/// The version write for the keys of `source` rows that pass `filter`, as CTEs ending in `v`:
/// each key's row of the version table with the version it replaced kept in the base columns.
/// The new version (`values.now`) is the capture time, bumped past the version the row had, so a node
/// whose clock runs behind still orders its change after the one it overwrote.
///
/// The keys of an update or a delete have versions already: in a statement planned for its own
/// size, one UPDATE writes them (a plain update, HOT where the page has room, where speculative
/// insertion would lock and check each row first), and the upsert covers the keys it did not
/// find (first changes, and a key a concurrent transaction gave a version since this
/// statement's snapshot). An insert's keys are mostly new: the upsert alone. So is a small
/// statement's, whose plan is kept: a join with the version table in a plan made while that
/// table was empty would read all of it for every statement after, where the upsert reaches
/// each key through the index whatever the plan.
fn version_write(
    spec: &CaptureSpec,
    source: &str,
    filter: Option<&str>,
    op: char,
    values: &Values,
) -> String {
    let (now, origin) = (values.now, values.origin);
    let keys = join(spec.key, ", ", |k| format!("s.{}", ident(k)));
    let condition = |first: &str| match (first, filter) {
        ("", None) => String::new(),
        ("", Some(f)) => format!(" WHERE {f}"),
        (c, None) => format!(" WHERE {c}"),
        (c, Some(f)) => format!(" WHERE {c} AND {f}"),
    };
    if op == 'I' || !values.planned_for_size {
        return format!(
            "WITH v AS ({})",
            version_upsert(
                spec,
                &format!(
                    "SELECT {keys}, {now}, {origin} FROM {source} s{}",
                    condition("")
                )
            )
        );
    }
    format!(
        "WITH u AS (UPDATE {vt} AS v\n\
         \x20              SET \"synclink$at\" = greatest({now}, v.\"synclink$at\" + 1),\n\
         \x20                  \"synclink$node\" = {origin},\n\
         \x20                  \"synclink$base_at\" = v.\"synclink$at\",\n\
         \x20                  \"synclink$base_node\" = v.\"synclink$node\"\n\
         \x20             FROM {source} s{found}\n\
         \x20           RETURNING v.*),\n\
         \x20    i AS ({upsert}),\n\
         \x20    v AS (SELECT * FROM u UNION ALL SELECT * FROM i)",
        vt = spec.version_table,
        found = condition(&matching(spec, "v")),
        upsert = version_upsert(
            spec,
            &format!(
                "SELECT {keys}, {now}, {origin} FROM {source} s{}",
                condition(&format!(
                    "NOT EXISTS (SELECT FROM u WHERE {})",
                    matching(spec, "u")
                ))
            )
        ),
    )
}

/// How a capture statement names the new version and the origin: the function's variables
/// where it runs as written, parameters where it runs through EXECUTE.
struct Values {
    now: &'static str,
    origin: &'static str,
    /// planned for each statement with its transition tables' real size
    planned_for_size: bool,
}

const IN_PLACE: Values = Values {
    now: "synclink$now",
    origin: "synclink$origin",
    planned_for_size: false,
};

const EXECUTED: Values = Values {
    now: "$1",
    origin: "$2",
    planned_for_size: true,
};

/// Statements that changed fewer rows than this run as written, with the plan PL/pgSQL keeps
/// for them; larger ones through EXECUTE, planned for their own size. Planning the statement
/// costs about what capturing a few hundred rows does, so a single-row statement must not
/// pay it every time; a plan kept from a small statement (index lookups in nested loops)
/// would be quadratic for a large one, and one made for a large one (hash joins) would read
/// the whole version table for each small one.
const FEW_ROWS: usize = 100;

/// The statement that stamps `source` rows with new versions and turns them into chunked
/// text arrays (`rows`, `stamps`), handed to `ship` (sync) or queued in the outbox (async).
/// The previous version travels as the row's base. The same statement is written twice:
/// as is for statements of fewer than FEW_ROWS rows, through EXECUTE for the others.
fn stamped(spec: &CaptureSpec, source: &str, filter: Option<&str>, op: char) -> String {
    let few =
        format!("(SELECT count(*) FROM (SELECT FROM {source} LIMIT {FEW_ROWS}) f) < {FEW_ROWS}");
    let small = stamped_as(spec, source, filter, op, &IN_PLACE);
    let large = stamped_as(spec, source, filter, op, &EXECUTED);
    let using = format!("USING {}, {}", IN_PLACE.now, IN_PLACE.origin);
    if spec.queue_only {
        return format!(
            "        IF {few} THEN\n\
             \x20       {small};\n\
             \x20       ELSE\n\
             \x20       EXECUTE $statement$\n\
             \x20       {large}\n\
             \x20       $statement$ {using};\n\
             \x20       END IF;\n"
        );
    }
    let args = if matches!(op, 'I' | 'U') {
        "part.rows, NULL"
    } else {
        "NULL, part.rows"
    };
    let ship = format!(
        "LOOP\n            PERFORM synclink.ship({}, '{op}', {args}, part.stamps);\n        END LOOP;",
        spec.link_id
    );
    format!(
        "        IF {few} THEN\n\
         \x20       FOR part IN\n        {small}\n        {ship}\n\
         \x20       ELSE\n\
         \x20       FOR part IN EXECUTE $statement$\n        {large}\n        $statement$ {using}\n        {ship}\n\
         \x20       END IF;\n"
    )
}

/// `stamped`'s statement, naming the new version and origin as `values` says: for async
/// links it inserts the records into the outbox, for sync links it yields them.
fn stamped_as(
    spec: &CaptureSpec,
    source: &str,
    filter: Option<&str>,
    op: char,
    values: &Values,
) -> String {
    // The previous version comes back from the version write itself (kept in the base
    // columns). Each row's text is made once; a row starts a new chunk when the rows before
    // it (each weighing at least MIN_ROW_WEIGHT) fill CHUNK_BYTES, a running sum in input
    // order. Both arrays are aggregated from the same input in one pass, so they line up
    // element for element; the input comes sorted by chunk so that grouping never hashes (and
    // spills) whole arrays. An array of the rows' texts reads as an array of the rows:
    // array_out quotes each element alike. (OFFSET 0 keeps the planner from copying the
    // text's expression into each place that reads it.)
    let ctes = format!(
        "{versions},\n\
         \x20    s AS (SELECT q.*, (sum(w.weight) OVER (ROWS UNBOUNDED PRECEDING) - w.weight) / {CHUNK_BYTES}\n\
         \x20                      AS \"synclink$chunk\"\n\
         \x20            FROM (SELECT s.*, v.\"synclink$at\", v.\"synclink$node\", v.\"synclink$base_at\", v.\"synclink$base_node\",\n\
         \x20                         {row}::text AS \"synclink$text\"\n\
         \x20                    FROM {source} s JOIN v ON {v_match} OFFSET 0) q\n\
         \x20           CROSS JOIN LATERAL (SELECT greatest(octet_length(q.\"synclink$text\"), {MIN_ROW_WEIGHT})) w(weight))",
        versions = version_write(spec, source, filter, op, values),
        row = row_expr(spec, "s"),
        v_match = matching(spec, "v"),
    );
    let select = format!(
        "SELECT array_agg(s.\"synclink$text\")::text AS rows,\n\
         \x20      array_agg({stamp})::text AS stamps\n\
         \x20 FROM (SELECT * FROM s ORDER BY \"synclink$chunk\") s\n\
         \x20GROUP BY s.\"synclink$chunk\"",
        stamp = stamp_expr("s", op),
    );
    if !spec.queue_only {
        return format!("{ctes}\n        {select}");
    }
    let (new, old) = if matches!(op, 'I' | 'U') {
        ("chunk.rows", "NULL")
    } else {
        ("NULL", "chunk.rows")
    };
    format!(
        "{ctes},\n\
         \x20    chunk AS ({select})\n\
         \x20       INSERT INTO synclink.outbox (peer_name, link_id, origin, op, new_rows, old_rows, stamps)\n\
         \x20       SELECT {peer}, {id}, {origin}, '{op}', {new}, {old}, chunk.stamps FROM chunk",
        peer = literal(spec.peer_name),
        id = spec.link_id,
        origin = values.origin,
    )
}

/// The statement the native capture (capture_one.rs) runs for an async statement that
/// changed one row: the same version upsert and outbox record as `stamped`, for a row passed
/// as $1 (the table's row type) with the new version in $2 and the origin in $3, so no
/// transition table is scanned and nothing is aggregated. For an UPDATE, $4 is the old row and
/// nothing is written unless the match key stayed the same: a changed key takes the general
/// path ('K' or 'R' records), which the caller sees as no row inserted.
pub fn single_row_sql(spec: &CaptureSpec, op: char) -> String {
    let row = |param: &str| {
        format!(
            "ARRAY[ROW({})::{}]::pg_catalog.text",
            join(spec.columns, ", ", |c| format!("({param}).{}", ident(c))),
            spec.row_type
        )
    };
    let same_key = if op == 'U' {
        format!(
            " WHERE {}",
            join(spec.key, " AND ", |k| format!(
                "($1).{k} = ($4).{k}",
                k = ident(k)
            ))
        )
    } else {
        String::new()
    };
    let (new, old) = if op == 'D' {
        ("NULL".to_string(), row("$1"))
    } else {
        (row("$1"), "NULL".to_string())
    };
    format!(
        "WITH v AS ({upsert})\n\
         INSERT INTO synclink.outbox (peer_name, link_id, origin, op, new_rows, old_rows, stamps)\n\
         SELECT {peer}, {id}, $3, '{op}', {new}, {old},\n\
         \x20      ARRAY[{stamp}]::pg_catalog.text\n\
         \x20 FROM v",
        upsert = version_upsert(
            spec,
            &format!(
                "SELECT {}, $2, $3{same_key}",
                join(spec.key, ", ", |k| format!("($1).{}", ident(k)))
            )
        ),
        peer = literal(spec.peer_name),
        id = spec.link_id,
        stamp = stamp_expr("v", op),
    )
}

/// The re-key pairs: old and new rows of an UPDATE that changed the match key (planned for
/// each statement, as `stamped`).
fn rekey_loop(spec: &CaptureSpec, query: &str) -> String {
    if spec.queue_only {
        return format!(
            "        EXECUTE $statement$\n\
             \x20       INSERT INTO synclink.outbox (peer_name, link_id, origin, op, new_rows, old_rows)\n\
             \x20       SELECT {peer}, {id}, $1, 'R', chunk.new_rows, chunk.old_rows\n\
             \x20         FROM ({query}) chunk\n\
             \x20       $statement$ USING synclink$origin;\n",
            peer = literal(spec.peer_name),
            id = spec.link_id,
        );
    }
    format!(
        "        FOR part IN EXECUTE $statement$\n            {query}\n        $statement$\n        LOOP\n            \
         PERFORM synclink.ship({}, 'R', part.new_rows, part.old_rows, NULL);\n        END LOOP;\n",
        spec.link_id
    )
}

fn truncate_sql(spec: &CaptureSpec) -> String {
    if spec.queue_only {
        format!(
            "        INSERT INTO synclink.outbox (peer_name, link_id, origin, op)\n\
             \x20       VALUES ({}, {}, synclink$origin, 'T');\n",
            literal(spec.peer_name),
            spec.link_id,
        )
    } else {
        format!(
            "        PERFORM synclink.ship({}, 'T', NULL, NULL, NULL);\n",
            spec.link_id
        )
    }
}

pub fn function_sql(spec: &CaptureSpec) -> String {
    let key_match = matching(spec, "n");
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
            "NOT EXISTS (SELECT FROM new_rows n WHERE {key_match})\n\
             \x20                      AND NOT EXISTS (SELECT FROM new_rows n WHERE {pk_match})"
        ),
        None => format!("NOT EXISTS (SELECT FROM new_rows n WHERE {key_match})"),
    };
    let rekey = match &paired {
        Some((pk_match, old_key, new_key)) => format!(
            "        -- Rows whose match key changed, paired through the table's own primary key.\n{}",
            rekey_loop(
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
            )
        ),
        None => String::new(),
    };
    format!(
        r#"CREATE FUNCTION {function}() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
{wire}    SET work_mem = '{CAPTURE_WORK_MEM}'
    SET jit = off
AS $synclink$
-- Captures changes to {table} for peer {peer} (synclink link {id}).
-- Made by sync_link_table(); sync_unlink_table() drops it.
-- Rows travel as {row_type}[] in text form, {CHUNK_ROWS} rows per change record at most,
-- each with a synclink.stamp: its new version and the one it replaced, kept per key in
-- {version_table}. The session settings above make the text mean the same on the receiving side.
{echo}
-- work_mem is raised so that joining the rows to their versions and cutting them into
-- records sorts in memory for statements of tens of thousands of rows; larger ones spill.
-- jit is off: compiling a large statement's plan costs more than it saves here.
-- A statement of fewer than {FEW_ROWS} rows runs each capture statement as written, with the plan
-- PL/pgSQL keeps; a larger one runs it through EXECUTE, planned for its own size.
DECLARE
    part record;
    -- The origin of the change: this node, or the node a change being applied came from.
    synclink$origin text := coalesce(synclink.applying_origin(), {node});
    synclink$now bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
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
        wire = crate::data::wire::set_clauses(),
        table = spec.table_display,
        peer = literal(spec.peer_name),
        id = spec.link_id,
        row_type = spec.row_type,
        version_table = spec.version_table,
        node = literal(spec.node),
        insert = stamped(spec, "new_rows", None, 'I'),
        rekey = rekey,
        truncate = truncate_sql(spec),
        vanish = stamped(spec, "old_rows", Some(&vanished), 'K'),
        update = stamped(spec, "new_rows", None, 'U'),
        delete = stamped(spec, "old_rows", None, 'D'),
        echo = if spec.queue_only {
            "-- The triggers call synclink.capture_one(), which skips the changes synclink applies from\n\
             -- this peer (they are not sent back), queues a statement that changed one row itself,\n\
             -- the same way as below, and calls this function for every other statement."
        } else {
            "-- The triggers' WHEN clause keeps changes synclink applies from this peer from being sent back."
        },
    )
}

/// What the triggers of a link execute. An async link's triggers call the native capture
/// with the link id; it handles a statement that changed one row itself and hands every
/// other statement to the generated function. A sync link's triggers call the generated
/// function directly.
pub fn trigger_call(spec: &CaptureSpec) -> String {
    if spec.queue_only {
        format!("synclink.capture_one('{}')", spec.link_id)
    } else {
        format!("{}()", spec.function)
    }
}

/// The statement triggers of a link, one per event. While synclink applies a change from the
/// peer itself, nothing may be sent back: the generated function is skipped by a WHEN clause;
/// the native capture makes that check itself, which saves the clause's parse and executor
/// set-up on every statement (about 6% of a single-row INSERT's time in the backend).
pub fn trigger_sqls(table: &str, spec: &CaptureSpec, peer_node: &str) -> Vec<(String, String)> {
    let call = trigger_call(spec);
    let when = if spec.queue_only {
        String::new()
    } else {
        format!("WHEN (NOT synclink.applying_from({})) ", literal(peer_node))
    };
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
            let name = format!("synclink_{}_{suffix}", spec.peer_name);
            let sql = format!(
                "CREATE TRIGGER {} AFTER {event} ON {table} {referencing}FOR EACH STATEMENT\n    \
                 {when}EXECUTE FUNCTION {call}",
                ident(&name),
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
            version_table: "synclink.\"products_b_version\"",
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
        assert!(sql.contains("ROW(s.\"id\", s.\"Name \"\"x\"\"\")::synclink.\"products_b_row\""));
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
            sql.contains("synclink.ship(7, 'R', part.new_rows, part.old_rows, NULL)"),
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
            "'I', chunk.rows, NULL, chunk.stamps",
            "'U', chunk.rows, NULL, chunk.stamps",
            "'K', NULL, chunk.rows, chunk.stamps",
            "'D', NULL, chunk.rows, chunk.stamps",
        ] {
            assert!(
                sql.contains(&format!("SELECT 'b', 7, $2, {op} FROM chunk"))
                    && sql.contains(&format!("SELECT 'b', 7, synclink$origin, {op} FROM chunk")),
                "{op} in\n{sql}"
            );
        }
        assert!(sql.contains("VALUES ('b', 7, synclink$origin, 'T')"));
        assert!(sql.contains(
            "synclink$origin text := coalesce(synclink.applying_origin(), 'shop_abc123')"
        ));
    }

    #[test]
    fn every_row_is_stamped_past_its_previous_version() {
        let cols = vec!["id".to_string(), "v".to_string()];
        let key = vec!["id".to_string()];
        let sql = function_sql(&spec(&cols, &key));
        assert!(
            sql.contains("\"synclink$base_at\" = v.\"synclink$at\""),
            "{sql}"
        );
        assert!(
            sql.contains(
                "SET \"synclink$at\" = greatest(EXCLUDED.\"synclink$at\", v.\"synclink$at\" + 1)"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("ROW(s.\"synclink$at\", s.\"synclink$node\", s.\"synclink$base_at\", s.\"synclink$base_node\", 'U')::synclink.stamp"),
            "{sql}"
        );
    }

    #[test]
    fn versions_of_existing_keys_are_updated_and_new_ones_upserted() {
        let cols = vec!["id".to_string(), "v".to_string()];
        let key = vec!["id".to_string()];
        let s = spec(&cols, &key);
        let delete = version_write(&s, "old_rows", None, 'D', &EXECUTED);
        assert!(
            delete.starts_with("WITH u AS (UPDATE synclink.\"products_b_version\" AS v"),
            "{delete}"
        );
        assert!(
            delete.contains("FROM old_rows s WHERE v.\"id\" = s.\"id\"\n"),
            "{delete}"
        );
        assert!(
            delete.contains(
                "SELECT s.\"id\", $1, $2 FROM old_rows s WHERE NOT EXISTS (SELECT FROM u WHERE u.\"id\" = s.\"id\")"
            ),
            "{delete}"
        );
        assert!(delete.contains("v AS (SELECT * FROM u UNION ALL SELECT * FROM i)"));
        // a filter applies to both the update and the upsert
        let vanished = version_write(&s, "old_rows", Some("NOT EXISTS (x)"), 'K', &EXECUTED);
        assert_eq!(
            vanished.matches("AND NOT EXISTS (x)").count(),
            2,
            "{vanished}"
        );
        // an insert's keys are new: the upsert alone
        let insert = version_write(&s, "new_rows", None, 'I', &EXECUTED);
        assert!(!insert.contains("UPDATE synclink"), "{insert}");
        assert!(
            insert.contains("SELECT s.\"id\", $1, $2 FROM new_rows s\n"),
            "{insert}"
        );
        // a large statement is planned for its own transition tables, a small one keeps its plan
        let function = function_sql(&s);
        assert!(!function.contains("enable_nestloop"), "{function}");
        assert_eq!(
            function.matches("FOR part IN EXECUTE $statement$").count(),
            4,
            "{function}"
        );
        assert_eq!(function.matches("FOR part IN\n").count(), 4, "{function}");
        assert!(function
            .contains("IF (SELECT count(*) FROM (SELECT FROM new_rows LIMIT 100) f) < 100 THEN"));
        assert!(
            function.contains("SELECT s.\"id\", synclink$now, synclink$origin FROM old_rows s\n")
        );
        // a statement with a kept plan reaches versions through the upsert only
        let small = version_write(&s, "old_rows", None, 'D', &IN_PLACE);
        assert!(!small.contains("UPDATE synclink"), "{small}");
        assert!(
            small.contains("SELECT s.\"id\", synclink$now, synclink$origin FROM old_rows s\n"),
            "{small}"
        );
        // outside EXECUTE, the statements name the function's variables only
        for (n, part) in function.split("$statement$").enumerate() {
            let executed = n % 2 == 1;
            assert!(
                executed || !(part.contains("$1") || part.contains("$2")),
                "a parameter outside EXECUTE in\n{part}"
            );
        }
        let async_function = function_sql(&CaptureSpec {
            queue_only: true,
            ..spec(&cols, &key)
        });
        for (n, part) in async_function.split("$statement$").enumerate() {
            assert!(
                n % 2 == 1 || !(part.contains("$1") || part.contains("$2")),
                "a parameter outside EXECUTE in\n{part}"
            );
        }
        assert!(function.contains("greatest($1, v.\"synclink$at\" + 1)"));
    }

    #[test]
    fn a_single_row_is_queued_like_a_statement_of_one() {
        let cols = vec!["id".to_string(), "v".to_string()];
        let key = vec!["id".to_string()];
        let mut s = spec(&cols, &key);
        s.queue_only = true;
        let insert = single_row_sql(&s, 'I');
        assert!(
            insert.contains("SELECT ($1).\"id\", $2, $3\n"),
            "version from the row: {insert}"
        );
        assert!(
            insert.contains(
                "SELECT 'b', 7, $3, 'I', ARRAY[ROW(($1).\"id\", ($1).\"v\")::synclink.\"products_b_row\"]::pg_catalog.text, NULL,"
            ),
            "{insert}"
        );
        assert!(insert.contains(
            "ARRAY[ROW(v.\"synclink$at\", v.\"synclink$node\", v.\"synclink$base_at\", v.\"synclink$base_node\", 'I')::synclink.stamp]::pg_catalog.text"
        ));
        let delete = single_row_sql(&s, 'D');
        assert!(
            delete.contains("'D', NULL, ARRAY[ROW(($1)."),
            "old rows for a delete: {delete}"
        );
        // the version upsert is the one the generated function runs
        let general = function_sql(&s);
        let upsert =
            &insert[insert.find("ON CONFLICT").unwrap()..insert.find("RETURNING").unwrap()];
        assert!(general.contains(upsert), "{upsert}");
    }

    #[test]
    fn a_single_row_update_is_queued_only_when_its_key_stayed() {
        let cols = vec!["a".to_string(), "b".to_string(), "v".to_string()];
        let key = vec!["a".to_string(), "b".to_string()];
        let sql = single_row_sql(&spec(&cols, &key), 'U');
        assert!(
            sql.contains("SELECT ($1).\"a\", ($1).\"b\", $2, $3 WHERE ($1).\"a\" = ($4).\"a\" AND ($1).\"b\" = ($4).\"b\""),
            "{sql}"
        );
        assert!(!single_row_sql(&spec(&cols, &key), 'I').contains("$4"));
    }

    #[test]
    fn async_triggers_call_the_native_capture() {
        let cols = vec!["id".to_string()];
        let key = vec!["id".to_string()];
        let mut s = spec(&cols, &key);
        assert_eq!(trigger_call(&s), "synclink.\"products_b_capture\"()");
        s.queue_only = true;
        assert_eq!(trigger_call(&s), "synclink.capture_one('7')");
        assert!(function_sql(&s).contains("synclink.capture_one()"));
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
        let cols = vec!["id".to_string()];
        let key = cols.clone();
        let mut s = spec(&cols, &key);
        let t = trigger_sqls("\"public\".\"products\"", &s, "shop_def456");
        assert!(t.iter().all(|(_, sql)| sql.contains(
            "WHEN (NOT synclink.applying_from('shop_def456')) EXECUTE FUNCTION synclink.\"products_b_capture\"()"
        )));
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].0, "synclink_b_insert");
        assert!(t[1]
            .1
            .contains("OLD TABLE AS old_rows NEW TABLE AS new_rows"));
        assert!(!t[3].1.contains("REFERENCING"));
        // the native capture checks for applied changes itself
        s.queue_only = true;
        let t = trigger_sqls("\"public\".\"products\"", &s, "shop_def456");
        assert!(t.iter().all(|(_, sql)| !sql.contains("WHEN")
            && sql
                .ends_with("FOR EACH STATEMENT\n    EXECUTE FUNCTION synclink.capture_one('7')")));
    }
}
