//! The capture side: one generated PL/pgSQL trigger function per linked table, fired once per
//! statement with its transition tables. It stamps the changed rows' versions once, in the
//! table's one version table, packs the rows into change records of up to CHUNK_ROWS rows or
//! CHUNK_BYTES bytes each and hands each record to every link the change goes to: into the
//! outbox for async links, to `synclink.ship` for sync ones.

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

/// A link a table's changes are sent to.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub link_id: i32,
    pub peer_name: String,
    /// The peer's node: a change being applied from it, or one that began there, is not sent
    /// back to it.
    pub peer_node: String,
    /// async mode: records go straight into the outbox from the capture function; sync mode
    /// hands them to synclink.ship(), which sends them or queues them
    pub queue_only: bool,
}

pub struct CaptureSpec<'a> {
    pub function: &'a str,
    pub table_display: &'a str,
    /// A row type of the columns the links send, in their order: the rows' text form.
    pub row_type: &'a str,
    pub columns: &'a [String],
    pub key: &'a [String],
    /// The table's own primary key when rows are matched by another key: an UPDATE that
    /// changes the key is sent as old/new pairs found through it, so the peer updates its row
    /// in place (keeping its excluded columns) instead of deleting and inserting it.
    pub pair_by: Option<&'a [String]>,
    /// this node's name: the origin of a change unless it is being applied from elsewhere
    pub node: &'a str,
    /// the table's version table: per key, who changed the row last and when
    pub version_table: &'a str,
    /// the links this node's changes to the table go to (every link of the table that sends)
    pub targets: &'a [Target],
    /// a link of the table prefers this node: a change made here raises its row's generation
    pub preferred: bool,
}

impl CaptureSpec<'_> {
    fn any_sync(&self) -> bool {
        self.targets.iter().any(|t| !t.queue_only)
    }
}

/// `ROW(alias."a", alias."b")::synclink."t_row"` for the links' wire columns.
fn row_expr(spec: &CaptureSpec, alias: &str) -> String {
    format!(
        "ROW({})::{}",
        join(spec.columns, ", ", |c| format!("{alias}.{}", ident(c))),
        spec.row_type
    )
}

/// The version table's upsert for the keys `select` yields (key columns, new version, node),
/// returning each key's row with the version it replaced kept in the base columns. While a
/// change applied from a peer is passed on (`relay`), a key keeps the version and base the
/// apply gave it: the change travels on as it was made, not as a new change made here.
fn version_upsert(spec: &CaptureSpec, select: &str, relay: &str) -> String {
    let keys = join(spec.key, ", ", |k| ident(k));
    format!(
        "INSERT INTO {vt} AS v ({keys}, \"synclink$at\", \"synclink$node\"{gen})\n\
         \x20          {select}\n\
         \x20          ON CONFLICT ({keys}) DO UPDATE\n\
         \x20             SET {set}\n\
         \x20          RETURNING v.*",
        vt = spec.version_table,
        gen = if spec.preferred {
            ", \"synclink$gen\""
        } else {
            ""
        },
        set = restamp(
            spec,
            relay,
            "greatest(EXCLUDED.\"synclink$at\", v.\"synclink$at\" + 1)",
            "EXCLUDED.\"synclink$node\""
        ),
    )
}

/// What a version upsert's SELECT gives a key it has no version for yet, after the key, the
/// new version and the origin: on a node a link of the table prefers, the first generation for
/// a change made here (the column's default, 0, otherwise).
fn first_generation(spec: &CaptureSpec, relay: &str) -> String {
    match (spec.preferred, relay) {
        (false, _) => String::new(),
        (true, "false") => ", 1".into(),
        (true, relay) => format!(", CASE WHEN {relay} THEN 0 ELSE 1 END"),
    }
}

/// The generation a preferred node gives a key's new version: one up for a change made here.
/// A change applied from a peer and passed on that the apply did not stamp (a TRUNCATE applied
/// as deletes, a key change, what a trigger or a cascade wrote) was not made here: it keeps
/// the generation, or it would win over the changes its own node makes after it.
fn raised(relay: &str) -> String {
    match relay {
        "false" => "v.\"synclink$gen\" + 1".into(),
        relay => format!("v.\"synclink$gen\" + CASE WHEN {relay} THEN 0 ELSE 1 END"),
    }
}

/// The SET list that gives a version row the new version `at` from `node`, keeping the one it
/// replaces as its base and its generation (raised on a node a link prefers); unless `relay`
/// holds and the apply of this transaction stamped the row, when it stays as the apply left it.
fn restamp(spec: &CaptureSpec, relay: &str, at: &str, node: &str) -> String {
    let kept = |column: &str, new: &str| {
        if relay == "false" {
            format!("\"synclink${column}\" = {new}")
        } else {
            format!(
                "\"synclink${column}\" = CASE WHEN {relay} AND synclink.written_in_this_transaction(v.xmin) \
                 THEN v.\"synclink${column}\" ELSE {new} END"
            )
        }
    };
    let mut set = vec![
        kept("at", at),
        kept("node", node),
        kept("base_at", "v.\"synclink$at\""),
        kept("base_node", "v.\"synclink$node\""),
    ];
    if spec.preferred {
        set.push(kept("gen", &raised(relay)));
    }
    set.join(",\n\x20                 ")
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
         {alias}.\"synclink$base_node\", '{op}', {alias}.\"synclink$gen\")::synclink.stamp"
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
    let (now, origin, relay) = (values.now, values.origin, values.relay);
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
                    "SELECT {keys}, {now}, {origin}{} FROM {source} s{}",
                    first_generation(spec, relay),
                    condition("")
                ),
                relay,
            )
        );
    }
    format!(
        "WITH u AS (UPDATE {vt} AS v\n\
         \x20              SET {set}\n\
         \x20             FROM {source} s{found}\n\
         \x20           RETURNING v.*),\n\
         \x20    i AS ({upsert}),\n\
         \x20    v AS (SELECT * FROM u UNION ALL SELECT * FROM i)",
        vt = spec.version_table,
        set = restamp(
            spec,
            relay,
            &format!("greatest({now}, v.\"synclink$at\" + 1)"),
            origin
        ),
        found = condition(&matching(spec, "v")),
        upsert = version_upsert(
            spec,
            &format!(
                "SELECT {keys}, {now}, {origin}{} FROM {source} s{}",
                first_generation(spec, relay),
                condition(&format!(
                    "NOT EXISTS (SELECT FROM u WHERE {})",
                    matching(spec, "u")
                ))
            ),
            relay,
        ),
    )
}

/// How a capture statement names the new version, the origin, whether a change applied from a
/// peer is being passed on, and the links the change goes to: the function's variables where
/// it runs as written, parameters where it runs through EXECUTE.
struct Values {
    now: &'static str,
    origin: &'static str,
    relay: &'static str,
    to: &'static str,
    /// planned for each statement with its transition tables' real size
    planned_for_size: bool,
}

const IN_PLACE: Values = Values {
    now: "synclink$now",
    origin: "synclink$origin",
    relay: "synclink$relay",
    to: "synclink$to",
    planned_for_size: false,
};

const EXECUTED: Values = Values {
    now: "$1",
    origin: "$2",
    relay: "$3",
    to: "$4",
    planned_for_size: true,
};

/// The EXECUTE … USING list that gives an executed statement the values EXECUTED names.
const USING: &str = "USING synclink$now, synclink$origin, synclink$relay, synclink$to";

/// Statements that changed fewer rows than this run as written, with the plan PL/pgSQL keeps
/// for them; larger ones through EXECUTE, planned for their own size. Planning the statement
/// costs about what capturing a few hundred rows does, so a single-row statement must not
/// pay it every time; a plan kept from a small statement (index lookups in nested loops)
/// would be quadratic for a large one, and one made for a large one (hash joins) would read
/// the whole version table for each small one.
const FEW_ROWS: usize = 100;

/// The async links among the targets.
fn queued<'a>(spec: &CaptureSpec<'a>) -> Vec<&'a Target> {
    spec.targets.iter().filter(|t| t.queue_only).collect()
}

/// The queueing of the records `from` yields (with `new`, `old` and `stamps` naming their parts)
/// for the async links among `to` (an int[] of link ids), or None when no link is async. With
/// one async link, a record in the outbox; with several, one record in synclink.fanout for all
/// of them, whatever their number (the worker hands it on to each peer's queue).
fn queue_insert(
    spec: &CaptureSpec,
    op: char,
    parts: (&str, &str, &str),
    from: &str,
    (origin, to): (&str, &str),
) -> Option<String> {
    let (new, old, stamps) = parts;
    match queued(spec)[..] {
        [] => None,
        [only] => {
            let from = from.trim_end_matches(", ");
            let from = if from.is_empty() {
                String::new()
            } else {
                format!("\n\x20         FROM {from}")
            };
            Some(format!(
                "INSERT INTO synclink.outbox (peer_name, link_id, origin, op, new_rows, old_rows, stamps)\n\
                 \x20       SELECT {peer}, {id}, {origin}, '{op}', {new}, {old}, {stamps}{from}\n\
                 \x20        WHERE {id} = ANY ({to})",
                peer = literal(&only.peer_name),
                id = only.link_id,
            ))
        }
        ref several => {
            // every link the change goes to is async: the list itself; else its async part
            let ids = if spec.any_sync() {
                format!(
                    "ARRAY(SELECT t FROM pg_catalog.unnest({to}) t WHERE t = ANY ('{{{}}}'::int[]))",
                    join(several, ",", |t| t.link_id.to_string())
                )
            } else {
                to.to_string()
            };
            Some(format!(
                "INSERT INTO synclink.fanout (link_ids, origin, op, new_rows, old_rows, stamps)\n\
                 \x20       SELECT l.link_ids, {origin}, '{op}', {new}, {old}, {stamps}\n\
                 \x20         FROM {from}(SELECT {ids} AS link_ids) l\n\
                 \x20        WHERE pg_catalog.cardinality(l.link_ids) > 0"
            ))
        }
    }
}

/// For each record a loop yields as `part` (with `new`, `old` and `stamps` naming its parts):
/// synclink.ship() for each sync link the change goes to, one outbox insert for the async ones.
fn fan_out(spec: &CaptureSpec, op: char, parts: (&str, &str, &str)) -> String {
    let (new, old, stamps) = parts;
    let mut body = String::new();
    for t in spec.targets.iter().filter(|t| !t.queue_only) {
        body.push_str(&format!(
            "            IF {id} = ANY (synclink$to) THEN\n\
             \x20               PERFORM synclink.ship({id}, '{op}', {new}, {old}, {stamps});\n\
             \x20           END IF;\n",
            id = t.link_id
        ));
    }
    if let Some(insert) = queue_insert(spec, op, parts, "", (IN_PLACE.origin, IN_PLACE.to)) {
        body.push_str(&format!("            {insert};\n"));
    }
    body
}

/// The statement that stamps `source` rows with new versions and turns them into chunked
/// text arrays (`rows`, `stamps`), handed to `ship` (sync links) or queued in the outbox
/// (async links). The previous version travels as the row's base. The same statement is
/// written twice: as is for statements of fewer than FEW_ROWS rows, through EXECUTE for the
/// others.
fn stamped(spec: &CaptureSpec, source: &str, filter: Option<&str>, op: char) -> String {
    let few =
        format!("(SELECT count(*) FROM (SELECT FROM {source} LIMIT {FEW_ROWS}) f) < {FEW_ROWS}");
    let small = stamped_as(spec, source, filter, op, &IN_PLACE);
    let large = stamped_as(spec, source, filter, op, &EXECUTED);
    if !spec.any_sync() {
        return format!(
            "        IF {few} THEN\n\
             \x20       {small};\n\
             \x20       ELSE\n\
             \x20       EXECUTE $statement$\n\
             \x20       {large}\n\
             \x20       $statement$ {USING};\n\
             \x20       END IF;\n"
        );
    }
    let parts = if matches!(op, 'I' | 'U') {
        ("part.rows", "NULL", "part.stamps")
    } else {
        ("NULL", "part.rows", "part.stamps")
    };
    let ship = format!("LOOP\n{}        END LOOP;", fan_out(spec, op, parts));
    format!(
        "        IF {few} THEN\n\
         \x20       FOR part IN\n        {small}\n        {ship}\n\
         \x20       ELSE\n\
         \x20       FOR part IN EXECUTE $statement$\n        {large}\n        $statement$ {USING}\n        {ship}\n\
         \x20       END IF;\n"
    )
}

/// `stamped`'s statement, naming the new version and origin as `values` says: when every
/// link the table sends to is async it inserts the records into the outbox, otherwise it
/// yields them.
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
         \x20                         v.\"synclink$gen\", {row}::text AS \"synclink$text\"\n\
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
    let queue = |parts| {
        queue_insert(spec, op, parts, "chunk, ", (values.origin, values.to))
            .filter(|_| !spec.any_sync())
    };
    let parts = if matches!(op, 'I' | 'U') {
        ("chunk.rows", "NULL", "chunk.stamps")
    } else {
        ("NULL", "chunk.rows", "chunk.stamps")
    };
    let Some(insert) = queue(parts) else {
        return format!("{ctes}\n        {select}");
    };
    format!(
        "{ctes},\n\
         \x20    chunk AS ({select})\n\
         \x20       {insert}"
    )
}

/// The statement the native capture (one_row.rs) runs for a statement that changed one row, on
/// a table whose links that send are all async: the same version upsert and outbox records as
/// `stamped`, for a row passed as $1 (the table's row type) with the new version in $2 and the
/// origin in $3, so no transition table is scanned and nothing is aggregated. For an UPDATE, $4
/// is the old row and nothing is written unless the match key stayed the same: a changed key
/// takes the general path ('K' or 'R' records), which the caller sees as no row inserted. The
/// native capture never passes on a change applied from a peer, so every target gets it.
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
    let every = format!(
        "'{{{}}}'::int[]",
        join(&queued(spec), ",", |t| t.link_id.to_string())
    );
    let stamps = format!("ARRAY[{}]::pg_catalog.text", stamp_expr("v", op));
    format!(
        "WITH v AS ({upsert})\n{insert}",
        upsert = version_upsert(
            spec,
            &format!(
                "SELECT {}, $2, $3{}{same_key}",
                join(spec.key, ", ", |k| format!("($1).{}", ident(k))),
                first_generation(spec, "false")
            ),
            "false",
        ),
        insert = queue_insert(spec, op, (&new, &old, &stamps), "v, ", ("$3", &every))
            .unwrap_or_else(|| "SELECT FROM v WHERE false".into()),
    )
}

/// The re-key pairs: old and new rows of an UPDATE that changed the match key (planned for
/// each statement, as `stamped`).
fn rekey_loop(spec: &CaptureSpec, query: &str) -> String {
    if !spec.any_sync() {
        if let Some(insert) = queue_insert(
            spec,
            'R',
            ("chunk.new_rows", "chunk.old_rows", "NULL"),
            &format!("({query}) chunk, "),
            (EXECUTED.origin, EXECUTED.to),
        ) {
            return format!(
                "        EXECUTE $statement$\n\
                 \x20       {insert}\n\
                 \x20       $statement$ {USING};\n"
            );
        }
    }
    format!(
        "        FOR part IN EXECUTE $statement$\n            {query}\n        $statement$\n        LOOP\n{}        END LOOP;\n",
        fan_out(spec, 'R', ("part.new_rows", "part.old_rows", "NULL"))
    )
}

fn truncate_sql(spec: &CaptureSpec) -> String {
    let mut out = String::new();
    for t in spec.targets.iter().filter(|t| !t.queue_only) {
        out.push_str(&format!(
            "        IF {id} = ANY (synclink$to) THEN\n\
             \x20           PERFORM synclink.ship({id}, 'T', NULL, NULL, NULL);\n\
             \x20       END IF;\n",
            id = t.link_id
        ));
    }
    if let Some(insert) = queue_insert(
        spec,
        'T',
        ("NULL", "NULL", "NULL"),
        "",
        (IN_PLACE.origin, IN_PLACE.to),
    ) {
        out.push_str(&format!("        {insert};\n"));
    }
    out
}

/// `synclink$to`'s initial value: every target, less those a change being applied came from
/// or began on.
fn targets_expr(spec: &CaptureSpec) -> String {
    if spec.targets.is_empty() {
        return "'{}'".into();
    }
    format!(
        "pg_catalog.array_remove(ARRAY[{}]::int[], NULL)",
        join(spec.targets, ",\n        ", |t| format!(
            "CASE WHEN synclink.applying_from({}) THEN NULL ELSE {} END",
            literal(&t.peer_node),
            t.link_id
        ))
    )
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
    let peers = if spec.targets.is_empty() {
        "no peer (this node sends none of its changes to the table)".to_string()
    } else {
        join(spec.targets, ", ", |t| {
            format!(
                "{} (link {}, {})",
                t.peer_name,
                t.link_id,
                if t.queue_only { "async" } else { "sync" }
            )
        })
    };
    format!(
        r#"CREATE FUNCTION {function}() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
{wire}    SET work_mem = '{CAPTURE_WORK_MEM}'
    SET jit = off
AS $synclink$
-- Captures changes to {table} for {peers}.
-- Made by sync_link_table(), made anew when a link of the table comes or goes;
-- sync_unlink_table() drops it with the table's last link.
-- Rows travel as {row_type}[] in text form, {CHUNK_ROWS} rows per change record at most,
-- each with a synclink.stamp: its new version and the one it replaced, kept per key in
-- {version_table}, which every link of the table shares. The session settings above make the
-- text mean the same on the receiving side.
-- A change synclink applies from a peer goes on to the table's other peers with the version
-- it came with, never back to the peer it came from nor to the node where it began.
-- work_mem is raised so that joining the rows to their versions and cutting them into
-- records sorts in memory for statements of tens of thousands of rows; larger ones spill.
-- jit is off: compiling a large statement's plan costs more than it saves here.
-- A statement of fewer than {FEW_ROWS} rows runs each capture statement as written, with the plan
-- PL/pgSQL keeps; a larger one runs it through EXECUTE, planned for its own size.
DECLARE
    part record;
    -- The origin of the change: this node, or the node a change being applied came from.
    synclink$origin text := coalesce(synclink.applying_origin(), {node});
    synclink$relay boolean := synclink.applying_origin() IS NOT NULL;
    synclink$now bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    -- The links this statement's changes go to.
    synclink$to int[] := {to};
BEGIN
    IF pg_catalog.cardinality(synclink$to) = 0 THEN
        RETURN NULL;
    END IF;
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
        row_type = spec.row_type,
        version_table = spec.version_table,
        node = literal(spec.node),
        to = targets_expr(spec),
        insert = stamped(spec, "new_rows", None, 'I'),
        rekey = rekey,
        truncate = truncate_sql(spec),
        vanish = stamped(spec, "old_rows", Some(&vanished), 'K'),
        update = stamped(spec, "new_rows", None, 'U'),
        delete = stamped(spec, "old_rows", None, 'D'),
    )
}

/// What a table's triggers execute. When every link the table sends to is async, the native
/// capture with the first one's id (it reads the others itself): it handles a statement that
/// changed one row itself and hands every other statement to the generated function.
/// Otherwise the generated function.
pub fn trigger_call(spec: &CaptureSpec) -> String {
    match spec.targets {
        [first, ..] if !spec.any_sync() => format!("synclink.capture_one('{}')", first.link_id),
        _ => format!("{}()", spec.function),
    }
}

/// The statement triggers of a table, one per event; none when it sends to no link. With one
/// link, a change synclink applies from that peer is skipped before the function starts: by a
/// WHEN clause for the generated function; the native capture makes that check itself, which
/// saves the clause's parse and executor set-up on every statement. With several, the function
/// leaves out each link the change came from.
pub fn trigger_sqls(table: &str, spec: &CaptureSpec) -> Vec<(String, String)> {
    if spec.targets.is_empty() {
        return Vec::new();
    }
    let call = trigger_call(spec);
    let when = match spec.targets {
        [only] if !only.queue_only => format!(
            "WHEN (NOT synclink.applying_from({})) ",
            literal(&only.peer_node)
        ),
        _ => String::new(),
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
            let name = format!("synclink_{suffix}");
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

    fn target(id: i32, peer: &str, queue_only: bool) -> Target {
        Target {
            link_id: id,
            peer_name: peer.into(),
            peer_node: format!("shop_{peer}"),
            queue_only,
        }
    }

    fn spec<'a>(cols: &'a [String], key: &'a [String], targets: &'a [Target]) -> CaptureSpec<'a> {
        CaptureSpec {
            function: "synclink.\"products_capture\"",
            table_display: "public.products",
            row_type: "synclink.\"products_b_row\"",
            columns: cols,
            key,
            pair_by: None,
            node: "shop_abc123",
            version_table: "synclink.\"products_version\"",
            targets,
            preferred: false,
        }
    }

    #[test]
    fn capture_function_ships_every_operation() {
        let cols = vec!["id".to_string(), "Name \"x\"".to_string()];
        let key = vec!["id".to_string()];
        let t = [target(7, "b", false)];
        let sql = function_sql(&spec(&cols, &key, &t));
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
        let t = [target(7, "b", false)];
        let mut s = spec(&cols, &key, &t);
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
        let t = [target(7, "b", true)];
        let sql = function_sql(&spec(&cols, &key, &t));
        assert!(!sql.contains("synclink.ship("), "{sql}");
        for op in [
            "'I', chunk.rows, NULL, chunk.stamps",
            "'U', chunk.rows, NULL, chunk.stamps",
            "'K', NULL, chunk.rows, chunk.stamps",
            "'D', NULL, chunk.rows, chunk.stamps",
        ] {
            assert!(
                sql.contains(&format!("SELECT 'b', 7, $2, {op}"))
                    && sql.contains(&format!("SELECT 'b', 7, synclink$origin, {op}")),
                "{op} in\n{sql}"
            );
        }
        assert!(
            sql.contains("FROM chunk\n         WHERE 7 = ANY ($4)"),
            "{sql}"
        );
        assert!(sql.contains("FROM chunk\n         WHERE 7 = ANY (synclink$to)"));
        assert!(
            sql.contains("SELECT 'b', 7, synclink$origin, 'T', NULL, NULL, NULL\n         WHERE 7 = ANY (synclink$to);"),
            "{sql}"
        );
        assert!(!sql.contains("synclink.fanout"));
        assert!(sql.contains(
            "synclink$origin text := coalesce(synclink.applying_origin(), 'shop_abc123')"
        ));
    }

    #[test]
    fn one_capture_stamps_once_and_fans_out_to_every_link() {
        let cols = vec!["id".to_string(), "v".to_string()];
        let key = vec!["id".to_string()];
        let t = [
            target(7, "b", true),
            target(8, "c", false),
            target(9, "d", true),
        ];
        let sql = function_sql(&spec(&cols, &key, &t));
        // one version write per operation and statement form, whatever the number of links
        assert_eq!(
            sql.matches("INSERT INTO synclink.\"products_version\"")
                .count(),
            // I, U, K, D, each as written and through EXECUTE
            8,
            "{sql}"
        );
        // and through EXECUTE, an UPDATE first for U, K and D
        assert_eq!(
            sql.matches("UPDATE synclink.\"products_version\"").count(),
            3
        );
        // each link leaves out the peer a change being applied came from or began on
        assert!(sql.contains(
            "synclink$to int[] := pg_catalog.array_remove(ARRAY[CASE WHEN synclink.applying_from('shop_b') THEN NULL ELSE 7 END,"
        ), "{sql}");
        assert!(sql.contains("IF pg_catalog.cardinality(synclink$to) = 0 THEN"));
        // the sync link is shipped, the async ones queued together
        assert!(
            sql.contains("IF 8 = ANY (synclink$to) THEN\n                PERFORM synclink.ship(8, 'I', part.rows, NULL, part.stamps);"),
            "{sql}"
        );
        // the async ones get one record for both, stored once
        assert!(
            sql.contains("SELECT l.link_ids, synclink$origin, 'I', part.rows, NULL, part.stamps\n          FROM (SELECT ARRAY(SELECT t FROM pg_catalog.unnest(synclink$to) t WHERE t = ANY ('{7,9}'::int[])) AS link_ids) l"),
            "{sql}"
        );
        assert!(!sql.contains("INSERT INTO synclink.outbox"), "{sql}");
        assert!(sql.contains("PERFORM synclink.ship(8, 'T', NULL, NULL, NULL);"));
        // with a sync link among them, triggers call the generated function, with no WHEN
        let triggers = trigger_sqls("\"public\".\"products\"", &spec(&cols, &key, &t));
        assert!(triggers.iter().all(|(_, sql)| !sql.contains("WHEN")
            && sql.ends_with("EXECUTE FUNCTION synclink.\"products_capture\"()")));
    }

    #[test]
    fn a_change_passed_on_keeps_the_version_the_apply_gave_it() {
        let cols = vec!["id".to_string(), "v".to_string()];
        let key = vec!["id".to_string()];
        let t = [target(7, "b", true)];
        let s = spec(&cols, &key, &t);
        let sql = function_sql(&s);
        assert!(sql.contains("synclink$relay boolean := synclink.applying_origin() IS NOT NULL;"));
        assert!(sql.contains(
            "\"synclink$at\" = CASE WHEN synclink$relay AND synclink.written_in_this_transaction(v.xmin) THEN v.\"synclink$at\" ELSE greatest(EXCLUDED.\"synclink$at\", v.\"synclink$at\" + 1) END"
        ), "{sql}");
        assert!(sql.contains(
            "\"synclink$base_at\" = CASE WHEN $3 AND synclink.written_in_this_transaction(v.xmin) THEN v.\"synclink$base_at\" ELSE v.\"synclink$at\" END"
        ), "{sql}");
        // the native one-row statement never passes a change on: no CASE there
        let single = single_row_sql(&s, 'U');
        assert!(!single.contains("CASE"), "{single}");
    }

    #[test]
    fn every_row_is_stamped_past_its_previous_version() {
        let cols = vec!["id".to_string(), "v".to_string()];
        let key = vec!["id".to_string()];
        let t = [target(7, "b", false)];
        let sql = function_sql(&spec(&cols, &key, &t));
        assert!(sql.contains("ELSE v.\"synclink$at\" END"), "{sql}");
        assert!(
            sql.contains("ELSE greatest(EXCLUDED.\"synclink$at\", v.\"synclink$at\" + 1) END"),
            "{sql}"
        );
        assert!(
            sql.contains("ROW(s.\"synclink$at\", s.\"synclink$node\", s.\"synclink$base_at\", s.\"synclink$base_node\", 'U', s.\"synclink$gen\")::synclink.stamp"),
            "{sql}"
        );
        // a node no link prefers keeps each row's generation
        assert!(!sql.contains("\"synclink$gen\" ="), "{sql}");
    }

    #[test]
    fn a_preferred_node_raises_each_rows_generation() {
        let cols = vec!["id".to_string(), "v".to_string()];
        let key = vec!["id".to_string()];
        let t = [target(7, "b", true), target(9, "d", true)];
        let preferred = CaptureSpec {
            preferred: true,
            ..spec(&cols, &key, &t)
        };
        let sql = function_sql(&preferred);
        // a new key starts at generation 1, a known one goes one up; a change being passed on
        // keeps the generation it came with, and one the apply did not stamp (a truncate, a
        // key change, a cascade) the generation the row had: it was not made here
        assert!(
            sql.contains("INSERT INTO synclink.\"products_version\" AS v (\"id\", \"synclink$at\", \"synclink$node\", \"synclink$gen\")")
                && sql.contains("SELECT s.\"id\", synclink$now, synclink$origin, CASE WHEN synclink$relay THEN 0 ELSE 1 END FROM new_rows s"),
            "{sql}"
        );
        assert!(
            sql.contains("\"synclink$gen\" = CASE WHEN synclink$relay AND synclink.written_in_this_transaction(v.xmin) THEN v.\"synclink$gen\" ELSE v.\"synclink$gen\" + CASE WHEN synclink$relay THEN 0 ELSE 1 END END"),
            "{sql}"
        );
        let single = single_row_sql(&preferred, 'U');
        assert!(
            single.contains("\"synclink$gen\" = v.\"synclink$gen\" + 1")
                && single.contains("SELECT ($1).\"id\", $2, $3, 1 WHERE"),
            "{single}"
        );
    }

    #[test]
    fn versions_of_existing_keys_are_updated_and_new_ones_upserted() {
        let cols = vec!["id".to_string(), "v".to_string()];
        let key = vec!["id".to_string()];
        let t = [target(7, "b", false)];
        let s = spec(&cols, &key, &t);
        let delete = version_write(&s, "old_rows", None, 'D', &EXECUTED);
        assert!(
            delete.starts_with("WITH u AS (UPDATE synclink.\"products_version\" AS v"),
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
        let queued = [target(7, "b", true)];
        let async_function = function_sql(&spec(&cols, &key, &queued));
        for (n, part) in async_function.split("$statement$").enumerate() {
            assert!(
                n % 2 == 1 || !(part.contains("$1") || part.contains("$2") || part.contains("$4")),
                "a parameter outside EXECUTE in\n{part}"
            );
        }
        assert!(function.contains("greatest($1, v.\"synclink$at\" + 1)"));
    }

    #[test]
    fn a_single_row_is_queued_like_a_statement_of_one() {
        let cols = vec!["id".to_string(), "v".to_string()];
        let key = vec!["id".to_string()];
        let t = [target(7, "b", true)];
        let s = spec(&cols, &key, &t);
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
        // for several async links, one record for all
        let two = [target(7, "b", true), target(9, "d", true)];
        let shared = single_row_sql(&spec(&cols, &key, &two), 'I');
        assert!(
            shared.contains("INSERT INTO synclink.fanout")
                && shared.contains("FROM v, (SELECT '{7,9}'::int[] AS link_ids) l"),
            "{shared}"
        );
        assert!(insert.contains(
            "ARRAY[ROW(v.\"synclink$at\", v.\"synclink$node\", v.\"synclink$base_at\", v.\"synclink$base_node\", 'I', v.\"synclink$gen\")::synclink.stamp]::pg_catalog.text"
        ));
        let delete = single_row_sql(&s, 'D');
        assert!(
            delete.contains("'D', NULL, ARRAY[ROW(($1)."),
            "old rows for a delete: {delete}"
        );
        // the version upsert is the one the generated function runs when it passes nothing on
        let general = function_sql(&s).replace(
            "CASE WHEN synclink$relay AND synclink.written_in_this_transaction(v.xmin) THEN v.\"synclink$at\" ELSE greatest(EXCLUDED.\"synclink$at\", v.\"synclink$at\" + 1) END",
            "greatest(EXCLUDED.\"synclink$at\", v.\"synclink$at\" + 1)",
        );
        let upsert = &insert[insert.find("ON CONFLICT").unwrap()..insert.find(",\n").unwrap()];
        assert!(general.contains(upsert), "{upsert}");
    }

    #[test]
    fn a_single_row_update_is_queued_only_when_its_key_stayed() {
        let cols = vec!["a".to_string(), "b".to_string(), "v".to_string()];
        let key = vec!["a".to_string(), "b".to_string()];
        let t = [target(7, "b", true)];
        let sql = single_row_sql(&spec(&cols, &key, &t), 'U');
        assert!(
            sql.contains("SELECT ($1).\"a\", ($1).\"b\", $2, $3 WHERE ($1).\"a\" = ($4).\"a\" AND ($1).\"b\" = ($4).\"b\""),
            "{sql}"
        );
        assert!(!single_row_sql(&spec(&cols, &key, &t), 'I').contains("$4"));
    }

    #[test]
    fn async_triggers_call_the_native_capture() {
        let cols = vec!["id".to_string()];
        let key = vec!["id".to_string()];
        let sync = [target(7, "b", false)];
        assert_eq!(
            trigger_call(&spec(&cols, &key, &sync)),
            "synclink.\"products_capture\"()"
        );
        let queued = [target(7, "b", true)];
        assert_eq!(
            trigger_call(&spec(&cols, &key, &queued)),
            "synclink.capture_one('7')"
        );
        // with two async links, the native capture too; with a sync one among them, the
        // generated function
        let two = [target(7, "b", true), target(8, "c", true)];
        assert_eq!(
            trigger_call(&spec(&cols, &key, &two)),
            "synclink.capture_one('7')"
        );
        let mixed = [target(7, "b", true), target(8, "c", false)];
        assert_eq!(
            trigger_call(&spec(&cols, &key, &mixed)),
            "synclink.\"products_capture\"()"
        );
    }

    #[test]
    fn composite_key_matches_all_columns() {
        let cols = vec!["a".to_string(), "b".to_string(), "v".to_string()];
        let key = vec!["a".to_string(), "b".to_string()];
        let t = [target(7, "b", false)];
        let sql = function_sql(&spec(&cols, &key, &t));
        assert!(sql.contains("n.\"a\" = s.\"a\" AND n.\"b\" = s.\"b\""));
    }

    #[test]
    fn triggers_reference_the_right_transition_tables() {
        let cols = vec!["id".to_string()];
        let key = cols.clone();
        let sync = [target(7, "b", false)];
        let t = trigger_sqls("\"public\".\"products\"", &spec(&cols, &key, &sync));
        assert!(t.iter().all(|(_, sql)| sql.contains(
            "WHEN (NOT synclink.applying_from('shop_b')) EXECUTE FUNCTION synclink.\"products_capture\"()"
        )));
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].0, "synclink_insert");
        assert!(t[1]
            .1
            .contains("OLD TABLE AS old_rows NEW TABLE AS new_rows"));
        assert!(!t[3].1.contains("REFERENCING"));
        // the native capture checks for applied changes itself
        let queued = [target(7, "b", true)];
        let t = trigger_sqls("\"public\".\"products\"", &spec(&cols, &key, &queued));
        assert!(t.iter().all(|(_, sql)| !sql.contains("WHEN")
            && sql
                .ends_with("FOR EACH STATEMENT\n    EXECUTE FUNCTION synclink.capture_one('7')")));
        // a table that sends nothing has no triggers
        assert!(trigger_sqls("\"public\".\"products\"", &spec(&cols, &key, &[])).is_empty());
    }
}
