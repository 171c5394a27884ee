//! The checked apply statement: one statement per run of records that locks nothing it does
//! not write, compares each record's base version with the row's version here, decides every
//! conflict by the link's policy, writes the winners, stamps their versions and logs the
//! conflicts.
//!
//! It is put together from one function per part, in the order the parts run, each holding its
//! SQL as it is sent, so that the source reads like the statement a DBA finds in the log.
//! `snapshots/checked.sql` holds the whole statement for a sample link under every policy; a
//! test keeps it current, so every change to the statement shows as a change to that file.

use crate::catalog::policy::Policy;
use crate::data::apply::{compared, ApplySpec};
use crate::pg::sql::{ident, join, literal};

/// What the checked apply statement needs beyond the plain upsert's spec.
pub struct CheckedSpec<'a> {
    pub apply: &'a ApplySpec<'a>,
    pub link_id: i32,
    pub peer_name: &'a str,
    pub version_table: &'a str,
    pub policy: &'a Policy,
}

/// Lock the rows a run of records touches before the checked statement reads them: a local
/// writer holding one finishes first, and the statement (with a new snapshot) sees its row
/// and its version together. Each key is looked up by itself, as in [`current_cte`].
pub fn lock_sql(spec: &ApplySpec) -> String {
    format!(
        "SELECT FROM unnest($1::{row}[]) r\n\
         \x20 CROSS JOIN LATERAL (SELECT FROM {table} t WHERE {cond} OFFSET 0 FOR UPDATE OF t) l",
        table = spec.table,
        row = spec.row_type,
        cond = key_match(spec, "t", "r"),
    )
}

/// The statement that applies a run of records ($1 rows, $2 their stamps) as one: per key the
/// last version sent is compared with the row here and the policy decides; winners are
/// upserted (or deleted, for a delete run) and take the incoming version, conflicts are
/// logged. A version this node holds already is the same change delivered again and is
/// skipped. It returns how many rows it expected to insert but found inserted meanwhile by
/// someone else (the caller refuses the run then, so it is delivered again), and the winners
/// it stamped without writing, to be passed on ([`passed_on`]).
pub fn checked_apply_sql(c: &CheckedSpec, delete: bool, single: bool) -> String {
    // Each part reads only the parts above it. The parts that write run whether or not
    // anything reads them, all on the snapshot the statement began with: none sees what
    // another wrote, which is why they take what they need from `w` and `e`, never from the
    // tables they change. Each part's text begins with a line break, so that it stands on
    // lines of its own inside `AS (…)`.
    format!(
        r#"WITH m AS ({records}
), c AS ({current}
), d AS ({decision}
), r AS ({remembered}
), e AS ({applies}
), w AS ({winners}
), written AS ({write}
), versions AS ({stamp}
), superseded AS ({supersede}
), moved_on AS ({moved_on}
), logged AS ({log}
)
{result}"#,
        records = records_cte(c.apply, single),
        current = current_cte(c),
        decision = decision_cte(c.policy, delete),
        remembered = remembered_cte(c, delete),
        applies = applies_cte(c.apply, delete),
        winners = WINNERS_CTE,
        write = if delete {
            delete_cte(c.apply)
        } else {
            upsert_cte(c.apply)
        },
        stamp = stamp_cte(c),
        supersede = supersede_cte(c),
        moved_on = moved_on_cte(c),
        log = log_cte(c, delete),
        result = passed_on(c.apply, delete),
    )
}

/// What the statement returns: how many rows it found inserted meanwhile by someone else
/// (raced), and the winners that change nothing here: an upsert of the
/// values the row has already, a delete of a row that is gone. Their versions are stamped,
/// but no row is written, so this node's capture cannot see them; they come back (the rows as
/// sent, and their stamps with the version here as base) for the caller to pass on to this
/// node's other peers, which would otherwise keep the version they replaced and decide a
/// later conflict on the key otherwise than this node.
///
/// A row the upsert updated though its record found none here (`exists` false) was inserted
/// by another transaction after this statement's snapshot, where the row locks taken first
/// could not reach it: it counts as raced, and the caller refuses the run, which is delivered
/// again and then meets that row as a conflict. (A delivery's REPEATABLE READ transaction
/// fails on such a row before this, 40001; a row inserted meanwhile with the very values sent
/// is caught only there.) Counted rather than matched key by key, so that each part is read
/// once whatever the run's size: rows updated, less the records that found a row and change
/// it. A delete never expects to create a row.
fn passed_on(spec: &ApplySpec, delete: bool) -> String {
    let rest = non_key_columns(spec);
    let differ = || {
        format!(
            "({here}) IS DISTINCT FROM ({incoming})",
            here = join(&rest, ", ", |x| compared(spec, r#"(w."synclink$here")"#, x)),
            incoming = join(&rest, ", ", |x| compared(spec, "w", x)),
        )
    };
    // A table of key columns only updates nothing.
    let changed_count = if rest.is_empty() {
        "0".to_string()
    } else {
        format!(
            r#"(SELECT count(*) FILTER (WHERE NOT "synclink$fresh") FROM written)
         - (SELECT count(*) FROM w WHERE w."synclink$exists" AND {})"#,
            differ()
        )
    };
    let (unchanged, op) = if delete {
        (r#"NOT w."synclink$exists""#.to_string(), 'D')
    } else {
        let same = if rest.is_empty() {
            String::new()
        } else {
            format!("\n         AND NOT {}", differ())
        };
        (format!(r#"w."synclink$exists"{same}"#), 'U')
    };
    format!(
        r#"-- {said}
SELECT {raced},
       array_agg({row}),
       array_agg(ROW(w."synclink$at", w."synclink$node", w."synclink$here_at", w."synclink$here_node", '{op}', w."synclink$gen")::synclink.stamp)
  FROM w WHERE {unchanged}"#,
        row = incoming_row(spec, "w."),
        raced = if delete { "0" } else { &changed_count },
        said = if delete {
            "the deletes that found no row here, to pass on"
        } else {
            "rows found inserted meanwhile; the rows that already were as sent, to pass on"
        },
    )
}

/// `m`: the records, one row per key, since everything after decides per key. A run of
/// records may change a key several times: the row becomes what the last change sent, but
/// whether the run meets a change made here is judged by the base of its first change (the
/// version the sender's row had before the run), and the first change's operation names the
/// conflict (an insert meeting a row here). A single record comes from one statement, which
/// changes each key once, so it is spared the sort.
fn records_cte(spec: &ApplySpec, single: bool) -> String {
    let source = records_source(spec);
    if single {
        format!(
            r#"
  SELECT x.*,
         x."synclink$base_at" AS "synclink$first_at",
         x."synclink$base_node" AS "synclink$first_node",
         x."synclink$op" AS "synclink$first_op"
    FROM {source}"#
        )
    } else {
        format!(
            r#"
  -- per key: the last version sent, and the base of the first change in this run
  SELECT DISTINCT ON ({keys}) x.*,
         first_value(x."synclink$base_at") OVER w AS "synclink$first_at",
         first_value(x."synclink$base_node") OVER w AS "synclink$first_node",
         first_value(x."synclink$op") OVER w AS "synclink$first_op"
    FROM {source}
  WINDOW w AS (PARTITION BY {keys} ORDER BY x."synclink$ord")
   ORDER BY {keys}, x."synclink$ord" DESC"#,
            keys = key_list(spec, "x."),
        )
    }
}

/// The rows and their stamps travel as two arrays side by side; WITH ORDINALITY keeps the
/// order the sender made them in, which tells each key's first change from its last and
/// orders the writes. The second line is indented for its place after FROM in `m`.
fn records_source(spec: &ApplySpec) -> String {
    format!(
        r#"unnest($1::{row}[], $2::synclink.stamp[])
         WITH ORDINALITY AS x({columns}, "synclink$at", "synclink$node", "synclink$base_at", "synclink$base_node", "synclink$op", "synclink$gen", "synclink$ord")"#,
        row = spec.row_type,
        columns = join(spec.columns, ", ", |x| ident(x)),
    )
}

/// `c`: what this node holds for each key, the row and its version, since both are what a
/// record is judged against. Key columns are never NULL in a row, so a NULL one after the
/// outer join means there is no row here; a deleted row keeps its version, so a change to it
/// still meets the deletion. `seen`: the version here is the one sent, or the one the version
/// here replaced, so this is a change applied here already, delivered again or (among several
/// nodes) by another path after the row had moved on. `conflict`: the version here is none of
/// those nor the one the sender's first change started from, so both nodes changed the row.
///
/// The table and its version table are read through `LATERAL (… OFFSET 0)`, so each key is
/// looked up by itself through the key's index whatever the statistics say. With a plain join
/// the planner, for a table analyzed while empty, may scan the whole index once per key and
/// filter (for one row that costs the same), and the plan kept for the session
/// (crate::pg::plan) would go on doing so as the table fills: quadratic. OFFSET 0 keeps the
/// subquery from being pulled up into a plain join again.
fn current_cte(c: &CheckedSpec) -> String {
    let spec = c.apply;
    format!(
        r#"
  SELECT m.*,
         t.{first_key} IS NOT NULL AS "synclink$exists",
         CASE WHEN t.{first_key} IS NOT NULL THEN ROW({row_here})::{row} END AS "synclink$here",
         v."synclink$at" AS "synclink$here_at",
         v."synclink$node" AS "synclink$here_node",
         v."synclink$gen" AS "synclink$here_gen",
         (v."synclink$at", v."synclink$node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
         OR (v."synclink$base_at", v."synclink$base_node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$seen",
         (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$first_at", m."synclink$first_node")
         AND (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
         AND (v."synclink$base_at", v."synclink$base_node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$conflict"
    FROM m
    LEFT JOIN LATERAL (SELECT * FROM {table} t WHERE {row_match} OFFSET 0) t ON true
    LEFT JOIN LATERAL (SELECT * FROM {versions} v WHERE {version_match} OFFSET 0) v ON true"#,
        first_key = ident(&spec.key[0]),
        row_here = join(spec.columns, ", ", |x| format!("t.{}", ident(x))),
        row = spec.row_type,
        table = spec.table,
        row_match = key_match(spec, "t", "m"),
        versions = c.version_table,
        version_match = key_match(spec, "v", "m"),
    )
}

/// `d`: whether the record wins. Without a conflict it always does; in a conflict the link's
/// policy decides, and since both nodes hold the same two versions they decide alike. A
/// policy that cannot tell keeps the row here.
fn decision_cte(policy: &Policy, delete: bool) -> String {
    format!(
        r#"
  SELECT c.*,
         NOT c."synclink$conflict" OR coalesce({wins}, false) AS "synclink$wins"
    FROM c"#,
        wins = policy_wins(policy, delete),
    )
}

/// The later version wins: the higher generation (a change made on a preferred node, or
/// after one), then the later stamp, and the node name settles a tie, so the order is total
/// and the same on every node; a row never stamped here counts as older than any change.
const STAMP_ORDER: &str = r#"(coalesce(c."synclink$gen", 0), c."synclink$at", c."synclink$node") > (coalesce(c."synclink$here_gen", -1), coalesce(c."synclink$here_at", -1), coalesce(c."synclink$here_node", ''))"#;

/// The link's policy as a condition that holds when the record in `c` wins its conflict. A
/// version column says which write is newer in the application's own terms, so it goes first
/// when both rows have a value; a delete brings no row to compare. prefer_node needs no rule
/// of its own: the preferred node raises the generation of every row it changes, so its
/// change is later than any made without it and earlier than any made after it, by whichever
/// path each arrives (a mesh), and every link of the table orders them alike; a row never
/// stamped here stays unless the preferred node's change meets it. manual never lets a
/// change win, so the row here stays until sync_resolve. The later lines of the CASE are
/// indented for their place in `d`.
fn policy_wins(policy: &Policy, delete: bool) -> String {
    match policy {
        Policy::LastWriteWins {
            version_column: Some(vc),
        } if !delete => format!(
            r#"CASE
           WHEN c."synclink$exists" AND c.{v} IS NOT NULL AND (c."synclink$here").{v} IS NOT NULL
                AND c.{v} <> (c."synclink$here").{v}
           THEN c.{v} > (c."synclink$here").{v}
           ELSE {STAMP_ORDER}
           END"#,
            v = ident(vc)
        ),
        Policy::LastWriteWins { .. } => STAMP_ORDER.to_string(),
        Policy::PreferNode(node) => format!(
            r#"CASE
           WHEN c."synclink$here_node" IS NULL THEN c."synclink$node" = {n}
           ELSE {STAMP_ORDER}
           END"#,
            n = literal(node)
        ),
        Policy::Manual => "false".into(),
    }
}

/// `r`: for a conflict, the choice sync_resolve made before for the same two rows on this key,
/// by any link of the table (the latest), if any (the hash of the row it kept), so a conflict
/// already settled by hand is not asked about again, whichever path brings it. The pair is
/// sorted so that both nodes name it alike. `met_before`: this node
/// logged the same two versions of the row meeting already, from another peer, under a policy
/// that decides them alike (every policy but manual orders two versions the same way, the
/// generation first; manual leaves them open): in a mesh a change arrives by each path it can
/// take, and a conflict is logged once where it met.
fn remembered_cte(c: &CheckedSpec, delete: bool) -> String {
    let spec = c.apply;
    format!(
        r#"
  SELECT d.*,
         CASE WHEN d."synclink$conflict"
              THEN (SELECT r.kept FROM synclink.resolution r
                     WHERE r.link_id IN ({links})
                       AND r.key = {key}
                       AND r.rows = ARRAY[least({here}, {incoming}),
                                          greatest({here}, {incoming})]
                     ORDER BY r.resolved_at DESC LIMIT 1)
              END AS "synclink$remembered",
         d."synclink$conflict"
         AND EXISTS (SELECT FROM synclink.conflict o
                      WHERE o.relid = {relid}::regclass AND o.key = {key}
                        AND ((o.local_version).at, (o.local_version).node)
                            = (d."synclink$here_at", d."synclink$here_node")
                        AND ((o.peer_version).at, (o.peer_version).node)
                            = (d."synclink$at", d."synclink$node")
                        AND o.policy {same_kind}) AS "synclink$met_before"
    FROM d"#,
        links = table_links(spec),
        key = key_json(spec),
        relid = literal(&spec.table),
        same_kind = if matches!(c.policy, Policy::Manual) {
            "= 'manual'"
        } else {
            "<> 'manual'"
        },
        here = HERE_HASH,
        incoming = incoming_hash(spec, "d.", delete),
    )
}

/// `e`: whether the record is applied. A remembered choice settles the conflict as it was
/// settled before: the record applies when its row is the one that was kept. Otherwise the
/// decision stands.
fn applies_cte(spec: &ApplySpec, delete: bool) -> String {
    format!(
        r#"
  SELECT r.*,
         CASE WHEN r."synclink$remembered" IS NULL THEN r."synclink$wins"
              ELSE r."synclink$remembered" = {incoming} END AS "synclink$applies"
    FROM r"#,
        incoming = incoming_hash(spec, "r.", delete),
    )
}

/// `w`: the records to write. One whose version this node holds already was applied when it
/// first came, so it is not written twice.
const WINNERS_CTE: &str = r#"
  SELECT * FROM e WHERE e."synclink$applies" AND NOT e."synclink$seen""#;

/// `written`, for an upsert run: the winners over the rows here, in the order the sender made
/// them, with the sender's values even for identity columns; a row that would not change is
/// left alone (no trigger of the table's fires for it) and comes back from the statement
/// instead ([`passed_on`]). Each row written says whether it was inserted afresh (a row found
/// and updated has a non-zero xmax), which [`passed_on`] counts.
fn upsert_cte(spec: &ApplySpec) -> String {
    let rest = non_key_columns(spec);
    // A table of key columns only has nothing to update.
    let action = if rest.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!(
            r#"DO UPDATE SET {set}
          WHERE ({here}) IS DISTINCT FROM ({incoming})"#,
            set = join(&rest, ", ", |x| format!("{x} = EXCLUDED.{x}", x = ident(x))),
            here = join(&rest, ", ", |x| compared(spec, "t", x)),
            incoming = join(&rest, ", ", |x| compared(spec, "EXCLUDED", x)),
        )
    };
    format!(
        r#"
  INSERT INTO {table} AS t ({columns}) OVERRIDING SYSTEM VALUE
  SELECT {values} FROM w ORDER BY w."synclink$ord"
  ON CONFLICT ({keys})
  {action}
  RETURNING t.xmax::text = '0' AS "synclink$fresh""#,
        table = spec.table,
        columns = join(spec.columns, ", ", |x| ident(x)),
        values = join(spec.columns, ", ", |x| format!("w.{}", ident(x))),
        keys = key_list(spec, ""),
    )
}

/// `written`, for a delete run: the winners' rows removed here.
fn delete_cte(spec: &ApplySpec) -> String {
    format!(
        r#"
  DELETE FROM {table} t USING w WHERE {key_match}"#,
        table = spec.table,
        key_match = key_match(spec, "t", "w"),
    )
}

/// `versions`: the winners' versions become this node's versions of their rows, since the
/// next record for each key is judged against them; a deleted row's version stays, so a late
/// change to it is recognised. The version each replaces is kept as its base: a change passed
/// on to this node's other peers (capture::statement) goes as the change from that version to
/// the winner's, so a peer that held the same version as this node takes it without a conflict.
fn stamp_cte(c: &CheckedSpec) -> String {
    let spec = c.apply;
    format!(
        r#"
  INSERT INTO {versions} AS v ({keys}, "synclink$at", "synclink$node", "synclink$gen")
  SELECT {winners}, w."synclink$at", w."synclink$node", w."synclink$gen" FROM w
  ON CONFLICT ({keys}) DO UPDATE
     SET "synclink$at" = EXCLUDED."synclink$at", "synclink$node" = EXCLUDED."synclink$node",
         "synclink$gen" = EXCLUDED."synclink$gen",
         "synclink$base_at" = v."synclink$at", "synclink$base_node" = v."synclink$node""#,
        versions = c.version_table,
        keys = key_list(spec, ""),
        winners = key_list(spec, "w."),
    )
}

/// `superseded`: a conflict still open on a key that meets a new conflict is about rows that
/// are gone, so it is closed and the new one, logged below, takes its place. Sharing the
/// statement's snapshot, this cannot touch the conflicts the statement logs itself.
fn supersede_cte(c: &CheckedSpec) -> String {
    format!(
        r#"
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before" AND o.outcome = 'open'
     AND o.link_id = {link_id} AND o.key = {key}"#,
        link_id = c.link_id,
        key = key_json(c.apply),
    )
}

/// `moved_on`: a conflict still open on a key that a change now reaches without a conflict (on
/// any link of the table) is about rows that are gone too: among several nodes, the row a
/// conflict was settled with elsewhere (sync_resolve) arrives here as a change made on top of
/// the row here. Keys other than `superseded`'s, so no conflict is updated twice. Whether the
/// table has an open conflict at all is asked first, once per statement, and the conflicts are
/// found by link through the index of open conflicts: the log of a busy table holds many
/// settled ones, and a table owner's reads of it pass its row security policies, which let no
/// index search by the jsonb key.
fn moved_on_cte(c: &CheckedSpec) -> String {
    format!(
        r#"
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM w d
   WHERE NOT d."synclink$conflict"
     AND EXISTS (SELECT FROM synclink.conflict x WHERE x.link_id IN ({links}) AND x.outcome = 'open')
     AND o.link_id IN ({links})
     AND o.outcome = 'open' AND o.key = {key}"#,
        links = table_links(c.apply),
        key = key_json(c.apply),
    )
}

/// The ids of every link of the table, each node's links of it being where a change, a
/// conflict or a choice about one of its rows may have come by.
fn table_links(spec: &ApplySpec) -> String {
    format!(
        "SELECT l.link_id FROM synclink.link l WHERE l.relid = {}::regclass",
        literal(&spec.table)
    )
}

/// `logged`: every conflict, whatever became of it, is kept for review on the node that met
/// it: both rows, the columns that differ, both versions, the policy and the outcome. The
/// kind says what the sender's change met here, judged by its first change in the run.
fn log_cte(c: &CheckedSpec, delete: bool) -> String {
    let spec = c.apply;
    format!(
        r#"
  INSERT INTO synclink.conflict (link_id, relid, peer_name, key, kind, policy, local_row, peer_row,
                                 columns, local_version, peer_version, outcome)
  SELECT {link_id},
         {relid}::regclass,
         {peer},
         {key},
         CASE WHEN d."synclink$first_op" = 'I' AND d."synclink$exists" THEN 'insert_exists'
              WHEN {delete} AND NOT d."synclink$exists" THEN 'delete_missing'
              WHEN {delete} THEN 'delete_changed'
              WHEN NOT d."synclink$exists" THEN 'update_missing'
              ELSE 'update_changed' END,
         {policy},
         to_jsonb(d."synclink$here"),
         {peer_row},
         {differing},
         ROW(d."synclink$here_at", d."synclink$here_node", NULL, NULL, NULL, d."synclink$here_gen")::synclink.stamp,
         ROW(d."synclink$at", d."synclink$node", d."synclink$first_at", d."synclink$first_node", d."synclink$first_op", d."synclink$gen")::synclink.stamp,
         CASE WHEN d."synclink$remembered" IS NOT NULL THEN 'remembered'
              WHEN {manual} THEN 'open'
              WHEN d."synclink$applies" THEN 'applied'
              ELSE 'kept' END
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before""#,
        link_id = c.link_id,
        relid = literal(&spec.table),
        peer = literal(c.peer_name),
        key = key_json(spec),
        policy = literal(&c.policy.label()),
        peer_row = if delete {
            "NULL::jsonb".to_string()
        } else {
            format!("to_jsonb({})", incoming_row(spec, "d."))
        },
        differing = differing_columns(spec, delete),
        manual = matches!(c.policy, Policy::Manual),
    )
}

/// The columns a conflict is about, for the review. Key columns are equal by the join. With
/// no row here, or for a delete, which leaves none, every column differs. The later lines are
/// indented for their place in `logged`.
fn differing_columns(spec: &ApplySpec, delete: bool) -> String {
    let all = join(spec.columns, ", ", |x| literal(x));
    if delete {
        return format!("ARRAY[{all}]");
    }
    // One column to a line, each under the first, which stands at column 38 in `logged`.
    let next = format!(",\n{}", " ".repeat(38));
    format!(
        r#"CASE WHEN NOT d."synclink$exists" THEN ARRAY[{all}]::text[]
              ELSE array_remove(ARRAY[{each}]::text[], NULL) END"#,
        each = join(&non_key_columns(spec), &next, |x| {
            let (here, incoming) = (
                compared(spec, r#"(d."synclink$here")"#, x),
                compared(spec, "d", x),
            );
            format!(
                "CASE WHEN {here} IS DISTINCT FROM {incoming} THEN {} END",
                literal(x)
            )
        }),
    )
}

/// The key columns, each after `prefix` ("x.", "w.", or "" for the bare names).
fn key_list(spec: &ApplySpec, prefix: &str) -> String {
    join(spec.key, ", ", |k| format!("{prefix}{}", ident(k)))
}

/// Rows of aliases `a` and `b` with the same key.
fn key_match(spec: &ApplySpec, a: &str, b: &str) -> String {
    let pair = |k: &String| format!("{a}.{k} = {b}.{k}", k = ident(k));
    join(spec.key, " AND ", pair)
}

/// The key of a record in `d` as the conflict log and the remembered choices name it: a json
/// object, readable whatever the key's types.
fn key_json(spec: &ApplySpec) -> String {
    let pair = |k: &String| format!("{}, d.{}", literal(k), ident(k));
    format!("jsonb_build_object({})", join(spec.key, ", ", pair))
}

/// The row a record sends, from its columns after `prefix`, as the row type both nodes share.
fn incoming_row(spec: &ApplySpec, prefix: &str) -> String {
    format!(
        "ROW({})::{}",
        join(spec.columns, ", ", |x| format!("{prefix}{}", ident(x))),
        spec.row_type
    )
}

/// A remembered choice names rows by a hash of their values; 'absent' stands for no row.
const HERE_HASH: &str = r#"coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent')"#;

/// The hash of the row a record sends; a delete sends none.
fn incoming_hash(spec: &ApplySpec, prefix: &str, delete: bool) -> String {
    if delete {
        "'absent'".to_string()
    } else {
        format!("md5(to_jsonb({})::text)", incoming_row(spec, prefix))
    }
}

/// The columns a write may change: the key is what finds the row.
fn non_key_columns<'a>(spec: &'a ApplySpec) -> Vec<&'a String> {
    spec.columns
        .iter()
        .filter(|x| !spec.key.contains(x))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn checked(policy: Policy, delete: bool) -> String {
        checked_as(policy, delete, false)
    }

    fn checked_as(policy: Policy, delete: bool, single: bool) -> String {
        let cols = strings(&["id", "name", "updated_at"]);
        let key = strings(&["id"]);
        let spec = ApplySpec {
            table: "\"public\".\"p\"".into(),
            row_type: "synclink.\"p_b_row\"",
            columns: &cols,
            key: &key,
            text_compare: &[],
        };
        checked_apply_sql(
            &CheckedSpec {
                apply: &spec,
                link_id: 3,
                peer_name: "b",
                version_table: "synclink.\"p_b_version\"",
                policy: &policy,
            },
            delete,
            single,
        )
    }

    #[test]
    fn only_a_run_of_records_is_reduced_to_each_keys_last_version() {
        let run = checked_as(Policy::Manual, false, false);
        assert!(run.contains("SELECT DISTINCT ON (x.\"id\") x.*"), "{run}");
        assert!(
            run.contains("first_value(x.\"synclink$base_at\") OVER w"),
            "{run}"
        );
        let one = checked_as(Policy::Manual, false, true);
        assert!(!one.contains("DISTINCT ON"), "{one}");
        assert!(
            one.contains("x.\"synclink$base_at\" AS \"synclink$first_at\""),
            "{one}"
        );
        // Everything after the records' CTE is the same statement.
        let tail = |sql: &str| sql[sql.find("), c AS (").unwrap()..].to_string();
        assert_eq!(tail(&run), tail(&one));
    }

    #[test]
    fn a_conflict_is_a_version_here_other_than_the_base_sent() {
        let sql = checked(Policy::Manual, false);
        assert!(sql.contains("(v.\"synclink$at\", v.\"synclink$node\") IS DISTINCT FROM (m.\"synclink$first_at\", m.\"synclink$first_node\")"), "{sql}");
        assert!(
            sql.contains("NOT c.\"synclink$conflict\" OR coalesce(false, false)"),
            "{sql}"
        );
        assert!(sql.contains("WHEN true THEN 'open'"), "{sql}");
        assert!(
            sql.contains("INSERT INTO \"public\".\"p\" AS t (\"id\", \"name\", \"updated_at\")"),
            "{sql}"
        );
    }

    #[test]
    fn last_write_wins_compares_the_version_column_then_the_stamp() {
        let sql = checked(
            Policy::LastWriteWins {
                version_column: Some("updated_at".into()),
            },
            false,
        );
        assert!(
            sql.contains("THEN c.\"updated_at\" > (c.\"synclink$here\").\"updated_at\""),
            "{sql}"
        );
        assert!(sql.contains("ELSE (coalesce(c.\"synclink$gen\", 0), c.\"synclink$at\", c.\"synclink$node\") > (coalesce(c.\"synclink$here_gen\", -1), coalesce(c.\"synclink$here_at\", -1), coalesce(c.\"synclink$here_node\", ''))"), "{sql}");
    }

    #[test]
    fn prefer_node_orders_by_generation_and_asks_only_about_rows_never_stamped() {
        let sql = checked(Policy::PreferNode("shop_a".into()), true);
        assert!(
            sql.contains(
                "WHEN c.\"synclink$here_node\" IS NULL THEN c.\"synclink$node\" = 'shop_a'"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("ELSE (coalesce(c.\"synclink$gen\", 0), c.\"synclink$at\""),
            "{sql}"
        );
        assert!(
            sql.contains("DELETE FROM \"public\".\"p\" t USING w WHERE t.\"id\" = w.\"id\""),
            "{sql}"
        );
        assert!(sql.contains("'prefer_node:shop_a'"), "{sql}");
    }

    /// Where the whole statement for the sample link is kept, case by case.
    const SNAPSHOT: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/data/apply/snapshots/checked.sql"
    );

    /// A policy as the snapshot's headers name it.
    fn described(policy: &Policy) -> String {
        match policy {
            Policy::LastWriteWins {
                version_column: Some(v),
            } => format!("{}, version column {v}", policy.label()),
            Policy::LastWriteWins {
                version_column: None,
            } => format!("{}, no version column", policy.label()),
            _ => policy.label(),
        }
    }

    /// The statement for the sample link under each policy, for an upsert and a delete, as a
    /// run of records and, where that is all that changes, as a single record. A case whose
    /// statement is the same as an earlier one's says so instead of repeating it.
    fn snapshot() -> String {
        let with_version = Policy::LastWriteWins {
            version_column: Some("updated_at".into()),
        };
        let stamps_only = Policy::LastWriteWins {
            version_column: None,
        };
        let prefer = Policy::PreferNode("shop_a".into());
        // (delete, single, policy). A single record changes only the records' part, whatever
        // the policy.
        let cases = [
            (false, false, &with_version),
            (false, false, &stamps_only),
            (false, false, &prefer),
            (false, false, &Policy::Manual),
            (true, false, &with_version),
            (true, false, &stamps_only),
            (true, false, &prefer),
            (true, false, &Policy::Manual),
            (false, true, &with_version),
            (true, true, &stamps_only),
        ];
        let mut out = String::from(
            "-- The checked apply statement for a sample link: table \"public\".\"p\" (\"id\", \"name\",\n\
             -- \"updated_at\"), key \"id\", peer b, link 3. Written by the test\n\
             -- data::apply::checked::tests::the_statement_is_as_in_its_snapshot; after a change to the\n\
             -- statement, SNAPSHOT_UPDATE=1 cargo test --features pg15 --lib checked writes it anew.\n",
        );
        let rule = "=".repeat(90);
        let mut shown: Vec<(String, String)> = Vec::new();
        for (delete, single, policy) in cases {
            let op = if delete { "delete" } else { "upsert" };
            let shape = if single {
                "single record"
            } else {
                "run of records"
            };
            let header = format!("{op}, {shape}, {}", described(policy));
            let sql = checked_as(policy.clone(), delete, single);
            out += &format!("\n-- {rule}\n-- {header}\n-- {rule}\n");
            match shown.iter().find(|(_, earlier)| *earlier == sql) {
                Some((same, _)) => out += &format!("-- the same statement as: {same}\n"),
                None => {
                    out += &format!("{sql};\n");
                    shown.push((header, sql));
                }
            }
        }
        out
    }

    /// The lines that differ between `old` and `new`, marked - and + as in a unified diff, with
    /// two lines of context and the line number in `old` where each stretch begins.
    fn line_diff(old: &str, new: &str) -> String {
        let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
        // common[i][j]: how many lines a[i..] and b[j..] have in common, in order.
        let mut common = vec![vec![0u32; b.len() + 1]; a.len() + 1];
        for i in (0..a.len()).rev() {
            for j in (0..b.len()).rev() {
                common[i][j] = if a[i] == b[j] {
                    common[i + 1][j + 1] + 1
                } else {
                    common[i + 1][j].max(common[i][j + 1])
                };
            }
        }
        let mut ops = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            if i < a.len() && j < b.len() && a[i] == b[j] {
                ops.push((' ', a[i], i));
                (i, j) = (i + 1, j + 1);
            } else if i < a.len() && (j == b.len() || common[i + 1][j] >= common[i][j + 1]) {
                ops.push(('-', a[i], i));
                i += 1;
            } else {
                ops.push(('+', b[j], i));
                j += 1;
            }
        }
        let shown = |k: usize| {
            ops[k.saturating_sub(2)..(k + 3).min(ops.len())]
                .iter()
                .any(|(tag, _, _)| *tag != ' ')
        };
        let mut out = String::new();
        let mut in_stretch = false;
        for (k, (tag, line, at)) in ops.iter().enumerate() {
            if !shown(k) {
                in_stretch = false;
                continue;
            }
            if !in_stretch {
                out += &format!("@@ line {} @@\n", at + 1);
                in_stretch = true;
            }
            out += &format!("{tag} {line}\n");
        }
        out
    }

    /// Every change to the statement shows as a change to the snapshot file, for review.
    #[test]
    fn the_statement_is_as_in_its_snapshot() {
        let now = snapshot();
        if std::env::var("SNAPSHOT_UPDATE").as_deref() == Ok("1") {
            std::fs::create_dir_all(std::path::Path::new(SNAPSHOT).parent().unwrap()).unwrap();
            std::fs::write(SNAPSHOT, &now).unwrap();
            return;
        }
        let kept = std::fs::read_to_string(SNAPSHOT).unwrap_or_default();
        if kept != now {
            panic!(
                "the checked apply statement is not the one in {SNAPSHOT} (- there, + now); \
                 if the change is meant, run the test again with SNAPSHOT_UPDATE=1 and commit \
                 the file:\n{}",
                line_diff(&kept, &now)
            );
        }
    }
}
