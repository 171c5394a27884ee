//! Conflicts: a change from the peer meets a row that changed here since the version the
//! change was made on. Detection compares versions (synclink.stamp), never row contents, so a
//! row changed and changed back still counts as changed. Each node decides by the link's
//! policy with the same rule on the same two versions, so both reach the same row:
//!
//! - last_write_wins: the higher version wins (version column first when both rows exist,
//!   then the stamp: capture time bumped past the previous version, then node name);
//! - prefer_node: the named node's row wins;
//! - manual: each node keeps its row and logs the conflict as open for sync_resolve.
//!
//! Every conflict is logged in synclink.conflict by the statement that applies the change.

use crate::data::apply::{compared, ApplySpec};
use crate::pg::error::{raise, OrRaise, SqlError};
use crate::pg::sql::{ident, join, literal};
use pgrx::prelude::*;

#[derive(thiserror::Error, Debug)]
pub enum ConflictError {
    #[error("unknown conflict policy {}", crate::pg::args::shown(.0))]
    UnknownPolicy(String),
    #[error("version column {} is not a column the link sends", crate::pg::args::shown(.column))]
    NoVersionColumn { column: String },
    #[error("version column \"{column}\" has type {type_name}, which cannot be ordered")]
    VersionNotOrdered { column: String, type_name: String },
    #[error("a version column only applies to the last_write_wins policy")]
    VersionWithoutLww,
    #[error("conflict {0} does not exist")]
    NoSuchConflict(i64),
    #[error("conflict {id} is {outcome}, not open")]
    NotOpen { id: i64, outcome: String },
    #[error("cannot keep {}: conflict {id} is between nodes \"{local}\" and \"{peer}\"", crate::pg::args::shown(.keep))]
    BadKeep {
        id: i64,
        keep: String,
        local: String,
        peer: String,
    },
    #[error("conflict {0} belongs to a link that no longer exists")]
    LinkGone(i64),
    #[error("a row being applied to {table} was inserted here at the same moment")]
    ConcurrentInsert { table: String },
}

impl SqlError for ConflictError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            ConflictError::UnknownPolicy(_)
            | ConflictError::BadKeep { .. }
            | ConflictError::VersionWithoutLww => ERRCODE_INVALID_PARAMETER_VALUE,
            ConflictError::NoVersionColumn { .. } => ERRCODE_UNDEFINED_COLUMN,
            ConflictError::VersionNotOrdered { .. } => ERRCODE_UNDEFINED_FUNCTION,
            ConflictError::NoSuchConflict(_) => ERRCODE_UNDEFINED_OBJECT,
            ConflictError::NotOpen { .. } | ConflictError::LinkGone(_) => {
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            ConflictError::ConcurrentInsert { .. } => ERRCODE_T_R_SERIALIZATION_FAILURE,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            ConflictError::UnknownPolicy(_) => {
                "Use 'last_write_wins', 'prefer_local', 'prefer_peer' or 'manual'.".into()
            }
            ConflictError::NoVersionColumn { .. } => {
                "Name a column of the table that is not excluded, such as updated_at.".into()
            }
            ConflictError::VersionNotOrdered { .. } => {
                "Use a timestamp or integer column that every write sets.".into()
            }
            ConflictError::VersionWithoutLww => {
                "Leave version_column out, or use conflict => 'last_write_wins'.".into()
            }
            ConflictError::NoSuchConflict(_) => {
                "SELECT * FROM sync_conflicts lists the open conflicts of this node.".into()
            }
            ConflictError::NotOpen { .. } => {
                "Only open conflicts (policy manual) wait for a decision.".into()
            }
            ConflictError::LinkGone(_) => {
                "Its table was unlinked; compare the two tables with sync_diff() and repair them with sync_reconcile().".into()
            }
            ConflictError::BadKeep { .. } => {
                "Use keep => 'local', 'peer', or one of the two node names.".into()
            }
            ConflictError::ConcurrentInsert { .. } => {
                "Nothing was applied; the change is delivered again and then meets the new row as a conflict.".into()
            }
        })
    }
}

/// A link's policy as stored: `prefer_local`/`prefer_peer` become `prefer_node` with the node's
/// name, so both nodes of the link agree on who is preferred.
#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    LastWriteWins { version_column: Option<String> },
    PreferNode(String),
    Manual,
}

impl Policy {
    /// Parse the `conflict =>` argument of sync_link_table on the node that calls it.
    pub fn parse(
        conflict: &str,
        version_column: Option<&str>,
        local: &str,
        peer: &str,
    ) -> Result<Policy, ConflictError> {
        let policy = match conflict {
            "last_write_wins" => Policy::LastWriteWins {
                version_column: version_column.map(str::to_string),
            },
            "prefer_local" => Policy::PreferNode(local.into()),
            "prefer_peer" => Policy::PreferNode(peer.into()),
            "manual" => Policy::Manual,
            other => return Err(ConflictError::UnknownPolicy(other.into())),
        };
        if version_column.is_some() && !matches!(policy, Policy::LastWriteWins { .. }) {
            return Err(ConflictError::VersionWithoutLww);
        }
        Ok(policy)
    }

    /// (conflict, prefer_node, version_column) as synclink.link keeps them.
    pub fn stored(&self) -> (&'static str, Option<String>, Option<String>) {
        match self {
            Policy::LastWriteWins { version_column } => {
                ("last_write_wins", None, version_column.clone())
            }
            Policy::PreferNode(n) => ("prefer_node", Some(n.clone()), None),
            Policy::Manual => ("manual", None, None),
        }
    }

    pub fn from_stored(conflict: &str, prefer: Option<String>, version: Option<String>) -> Policy {
        match conflict {
            "prefer_node" => Policy::PreferNode(prefer.unwrap_or_default()),
            "manual" => Policy::Manual,
            _ => Policy::LastWriteWins {
                version_column: version,
            },
        }
    }

    fn label(&self) -> String {
        match self {
            Policy::LastWriteWins { .. } => "last_write_wins".into(),
            Policy::PreferNode(n) => format!("prefer_node:{n}"),
            Policy::Manual => "manual".into(),
        }
    }
}

/// Refuse a version column the link does not send or whose type has no ordering.
pub fn check_version_column(
    relid: pg_sys::Oid,
    column: &str,
    sent: &[String],
) -> Result<(), ConflictError> {
    if !sent.iter().any(|c| c == column) {
        return Err(ConflictError::NoVersionColumn {
            column: column.into(),
        });
    }
    let (type_oid, type_name) = Spi::get_two_with_args::<pg_sys::Oid, String>(
        "SELECT atttypid, format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = $1 AND attname = $2",
        &[relid.into(), column.into()],
    )
    .unwrap();
    let ordered = unsafe {
        let tc = pg_sys::lookup_type_cache(type_oid.unwrap(), pg_sys::TYPECACHE_GT_OPR as i32);
        (*tc).gt_opr != pg_sys::InvalidOid
    };
    if !ordered {
        return Err(ConflictError::VersionNotOrdered {
            column: column.into(),
            type_name: type_name.unwrap_or_default(),
        });
    }
    Ok(())
}

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
/// and its version together.
pub fn lock_sql(spec: &ApplySpec) -> String {
    format!(
        "SELECT FROM {table} t JOIN unnest($1::{row}[]) r ON {cond} FOR UPDATE OF t",
        table = spec.table,
        row = spec.row_type,
        cond = join(spec.key, " AND ", |k| format!(
            "t.{k} = r.{k}",
            k = ident(k)
        )),
    )
}

/// The statement that applies a run of records ($1 rows, $2 their stamps) as one: per key the
/// last version sent is compared with the row here and the policy decides; winners are
/// upserted (or deleted, for a delete run) and take the incoming version, conflicts are
/// logged. A version this node holds already is the same change delivered again and is
/// skipped. It returns how many rows it expected to insert but found inserted meanwhile by
/// someone else (the caller refuses the run then, so it is delivered again).
pub fn checked_apply_sql(c: &CheckedSpec, delete: bool, single: bool) -> String {
    let spec = c.apply;
    let key = spec.key;
    let rest: Vec<&String> = spec.columns.iter().filter(|x| !key.contains(x)).collect();
    let keys = |alias: &str| join(key, ", ", |k| format!("{alias}{}", ident(k)));
    let on = |a: &str, b: &str| join(key, " AND ", |k| format!("{a}.{k} = {b}.{k}", k = ident(k)));
    let meta = "\"synclink$at\", \"synclink$node\", \"synclink$base_at\", \"synclink$base_node\", \"synclink$op\", \"synclink$ord\"";
    let cols = join(spec.columns, ", ", |x| ident(x));
    let incoming_row = |alias: &str| {
        format!(
            "ROW({})::{}",
            join(spec.columns, ", ", |x| format!("{alias}{}", ident(x))),
            spec.row_type
        )
    };
    let key_json = format!(
        "jsonb_build_object({})",
        join(key, ", ", |k| format!("{}, d.{}", literal(k), ident(k)))
    );
    let here_hash = "coalesce(md5(to_jsonb(d.\"synclink$here\")::text), 'absent')".to_string();
    let incoming_hash = |alias: &str| {
        if delete {
            "'absent'".to_string()
        } else {
            format!("md5(to_jsonb({})::text)", incoming_row(alias))
        }
    };
    let differing = if delete {
        format!("ARRAY[{}]", join(spec.columns, ", ", |x| literal(x)))
    } else {
        format!(
            "CASE WHEN NOT d.\"synclink$exists\" THEN ARRAY[{all}]::text[]\n\
             \x20                ELSE array_remove(ARRAY[{each}]::text[], NULL) END",
            all = join(spec.columns, ", ", |x| literal(x)),
            each = join(&rest, ", ", |x| {
                let (h, i) = (
                    compared(spec, "(d.\"synclink$here\")", x),
                    compared(spec, "d", x),
                );
                format!("CASE WHEN {h} IS DISTINCT FROM {i} THEN {} END", literal(x))
            }),
        )
    };
    let stamp_order = "(c.\"synclink$at\", c.\"synclink$node\") > \
                       (coalesce(c.\"synclink$here_at\", -1), coalesce(c.\"synclink$here_node\", ''))";
    let remembered = format!(
        "(SELECT r.kept FROM synclink.resolution r\n\
         \x20          WHERE r.link_id = {id} AND r.key = {key_json}\n\
         \x20            AND r.rows = ARRAY[least({here_hash}, {incoming}), greatest({here_hash}, {incoming})])",
        id = c.link_id,
        incoming = incoming_hash("d."),
    );
    let wins = match c.policy {
        Policy::LastWriteWins {
            version_column: Some(vc),
        } if !delete => format!(
            "CASE WHEN c.\"synclink$exists\" AND c.{v} IS NOT NULL AND (c.\"synclink$here\").{v} IS NOT NULL\n\
             \x20                      AND c.{v} <> (c.\"synclink$here\").{v}\n\
             \x20                 THEN c.{v} > (c.\"synclink$here\").{v}\n\
             \x20                 ELSE {stamp_order} END",
            v = ident(vc)
        ),
        Policy::LastWriteWins { .. } => stamp_order.to_string(),
        Policy::PreferNode(node) => format!("c.\"synclink$node\" = {}", literal(node)),
        Policy::Manual => "false".into(),
    };
    let write = if delete {
        format!(
            "DELETE FROM {table} t USING w WHERE {cond}\n\
             \x20   RETURNING false AS \"synclink$raced\"",
            table = spec.table,
            cond = on("t", "w"),
        )
    } else {
        let action = if rest.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!(
                "DO UPDATE SET {}\n\
                 \x20    WHERE ({}) IS DISTINCT FROM ({})",
                join(&rest, ", ", |x| format!("{x} = EXCLUDED.{x}", x = ident(x))),
                join(&rest, ", ", |x| compared(spec, "t", x)),
                join(&rest, ", ", |x| compared(spec, "EXCLUDED", x)),
            )
        };
        format!(
            "INSERT INTO {table} AS t ({cols}) OVERRIDING SYSTEM VALUE\n\
             \x20   SELECT {w_cols} FROM w ORDER BY w.\"synclink$ord\"\n\
             \x20   ON CONFLICT ({keys}) {action}\n\
             \x20   RETURNING t.xmax::text <> '0' AND NOT EXISTS (SELECT FROM w WHERE {w_match} AND w.\"synclink$exists\") AS \"synclink$raced\"",
            table = spec.table,
            w_cols = join(spec.columns, ", ", |x| format!("w.{}", ident(x))),
            keys = keys(""),
            w_match = on("w", "t"),
        )
    };
    let records = format!(
        "unnest($1::{row}[], $2::synclink.stamp[]) WITH ORDINALITY AS x({cols}, {meta})",
        row = spec.row_type
    );
    // A single record holds each key once (it comes from one statement); a run of records
    // may change a key several times.
    let m = if single {
        format!(
            "\x20 SELECT x.*, x.\"synclink$base_at\" AS \"synclink$first_at\",\n\
             \x20        x.\"synclink$base_node\" AS \"synclink$first_node\", x.\"synclink$op\" AS \"synclink$first_op\"\n\
             \x20   FROM {records}"
        )
    } else {
        format!(
            "\x20 -- per key: the last version sent, and the base of the first change in this run\n\
             \x20 SELECT DISTINCT ON ({m_keys}) x.*,\n\
             \x20        first_value(x.\"synclink$base_at\") OVER w AS \"synclink$first_at\",\n\
             \x20        first_value(x.\"synclink$base_node\") OVER w AS \"synclink$first_node\",\n\
             \x20        first_value(x.\"synclink$op\") OVER w AS \"synclink$first_op\"\n\
             \x20   FROM {records}\n\
             \x20 WINDOW w AS (PARTITION BY {m_keys} ORDER BY x.\"synclink$ord\")\n\
             \x20  ORDER BY {m_keys}, x.\"synclink$ord\" DESC",
            m_keys = keys("x."),
        )
    };
    format!(
        "WITH m AS (\n\
         {m}\n\
         ), c AS (\n\
         \x20 SELECT m.*, t.{k0} IS NOT NULL AS \"synclink$exists\",\n\
         \x20        CASE WHEN t.{k0} IS NOT NULL THEN ROW({t_cols})::{row} END AS \"synclink$here\",\n\
         \x20        v.\"synclink$at\" AS \"synclink$here_at\", v.\"synclink$node\" AS \"synclink$here_node\",\n\
         \x20        (v.\"synclink$at\", v.\"synclink$node\") IS NOT DISTINCT FROM (m.\"synclink$at\", m.\"synclink$node\")\n\
         \x20            AS \"synclink$seen\",\n\
         \x20        (v.\"synclink$at\", v.\"synclink$node\") IS DISTINCT FROM (m.\"synclink$first_at\", m.\"synclink$first_node\")\n\
         \x20        AND (v.\"synclink$at\", v.\"synclink$node\") IS DISTINCT FROM (m.\"synclink$at\", m.\"synclink$node\")\n\
         \x20            AS \"synclink$conflict\"\n\
         \x20   FROM m LEFT JOIN {table} t ON {t_on} LEFT JOIN {vt} v ON {v_on}\n\
         ), d AS (\n\
         \x20 SELECT c.*, NOT c.\"synclink$conflict\" OR coalesce({wins}, false) AS \"synclink$wins\"\n\
         \x20   FROM c\n\
         ), r AS (\n\
         \x20 SELECT d.*, CASE WHEN d.\"synclink$conflict\" THEN {remembered} END AS \"synclink$remembered\"\n\
         \x20   FROM d\n\
         ), e AS (\n\
         \x20 SELECT r.*, CASE WHEN r.\"synclink$remembered\" IS NULL THEN r.\"synclink$wins\"\n\
         \x20                  ELSE r.\"synclink$remembered\" = {incoming_hash_r} END AS \"synclink$applies\"\n\
         \x20   FROM r\n\
         ), w AS (\n\
         \x20 SELECT * FROM e WHERE e.\"synclink$applies\" AND NOT e.\"synclink$seen\"\n\
         ), written AS (\n\
         \x20 {write}\n\
         ), versions AS (\n\
         \x20 INSERT INTO {vt} AS v ({vt_keys}, \"synclink$at\", \"synclink$node\")\n\
         \x20 SELECT {w_keys}, w.\"synclink$at\", w.\"synclink$node\" FROM w\n\
         \x20 ON CONFLICT ({vt_keys}) DO UPDATE\n\
         \x20    SET \"synclink$at\" = EXCLUDED.\"synclink$at\", \"synclink$node\" = EXCLUDED.\"synclink$node\"\n\
         ), superseded AS (\n\
         \x20 UPDATE synclink.conflict o SET outcome = 'superseded'\n\
         \x20   FROM e d WHERE d.\"synclink$conflict\" AND o.outcome = 'open'\n\
         \x20    AND o.link_id = {id} AND o.key = {key_json}\n\
         ), logged AS (\n\
         \x20 INSERT INTO synclink.conflict (link_id, relid, peer_name, key, kind, policy, local_row, peer_row,\n\
         \x20                               columns, local_version, peer_version, outcome)\n\
         \x20 SELECT {id}, {relid}::regclass, {peer}, {key_json},\n\
         \x20        CASE WHEN d.\"synclink$first_op\" = 'I' AND d.\"synclink$exists\" THEN 'insert_exists'\n\
         \x20             WHEN {delete} AND NOT d.\"synclink$exists\" THEN 'delete_missing'\n\
         \x20             WHEN {delete} THEN 'delete_changed'\n\
         \x20             WHEN NOT d.\"synclink$exists\" THEN 'update_missing'\n\
         \x20             ELSE 'update_changed' END,\n\
         \x20        {policy}, to_jsonb(d.\"synclink$here\"), {peer_row},\n\
         \x20        {differing},\n\
         \x20        ROW(d.\"synclink$here_at\", d.\"synclink$here_node\", NULL, NULL, NULL)::synclink.stamp,\n\
         \x20        ROW(d.\"synclink$at\", d.\"synclink$node\", d.\"synclink$first_at\", d.\"synclink$first_node\", d.\"synclink$first_op\")::synclink.stamp,\n\
         \x20        CASE WHEN d.\"synclink$remembered\" IS NOT NULL THEN 'remembered'\n\
         \x20             WHEN {manual} THEN 'open'\n\
         \x20             WHEN d.\"synclink$applies\" THEN 'applied' ELSE 'kept' END\n\
         \x20   FROM e d WHERE d.\"synclink$conflict\"\n\
         )\n\
         SELECT count(*) FILTER (WHERE \"synclink$raced\") FROM written",
        row = spec.row_type,
        k0 = ident(&key[0]),
        t_cols = join(spec.columns, ", ", |x| format!("t.{}", ident(x))),
        table = spec.table,
        t_on = on("t", "m"),
        vt = c.version_table,
        v_on = on("v", "m"),
        incoming_hash_r = incoming_hash("r."),
        remembered = remembered,
        vt_keys = keys(""),
        w_keys = keys("w."),
        id = c.link_id,
        relid = literal(&spec.table),
        peer = literal(c.peer_name),
        delete = delete,
        policy = literal(&c.policy.label()),
        peer_row = if delete {
            "NULL::jsonb".to_string()
        } else {
            format!("to_jsonb({})", incoming_row("d."))
        },
        manual = matches!(c.policy, Policy::Manual),
    )
}

pub fn concurrent_insert(table: &str) -> ! {
    raise(ConflictError::ConcurrentInsert {
        table: table.into(),
    })
}

/// What both nodes need to settle one row by hand: the link's table as this node names it,
/// and as the peer does.
struct RowTarget {
    link_id: i32,
    relid: pg_sys::Oid,
    table: String,
    peer_schema: String,
    peer_table: String,
    row_type: String,
    columns: Vec<String>,
    key: Vec<String>,
    version_table: String,
}

impl RowTarget {
    fn load(link_id: i32) -> RowTarget {
        Spi::connect(|c| {
            let r = c
                .select(
                    "SELECT format('%I.%I', n.nspname, cl.relname), l.row_type, l.columns, \
                            l.key_columns, l.version_table, l.peer_schema, l.peer_table, cl.oid \
                       FROM synclink.link l JOIN pg_class cl ON cl.oid = l.relid \
                       JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE l.link_id = $1",
                    None,
                    &[link_id.into()],
                )
                .unwrap()
                .first();
            RowTarget {
                link_id,
                table: r.get(1).unwrap().unwrap(),
                row_type: r.get(2).unwrap().unwrap(),
                columns: r.get(3).unwrap().unwrap(),
                key: r.get(4).unwrap().unwrap(),
                version_table: r.get(5).unwrap().unwrap(),
                peer_schema: r.get(6).unwrap().unwrap(),
                peer_table: r.get(7).unwrap().unwrap(),
                relid: r.get(8).unwrap().unwrap(),
            }
        })
    }

    fn key_match(&self, a: &str, b: &str) -> String {
        join(&self.key, " AND ", |k| {
            format!("{a}.{k} = {b}.{k}", k = ident(k))
        })
    }

    /// The row with this key here now, as jsonb (None: no such row).
    fn current(&self, key: &serde_json::Value) -> Option<serde_json::Value> {
        let sql = format!(
            "SELECT to_jsonb(ROW({cols})::{row}) FROM {table} t, jsonb_populate_record(NULL::{row}, $1) k \
             WHERE {cond}",
            cols = join(&self.columns, ", ", |c| format!("t.{}", ident(c))),
            row = self.row_type,
            table = self.table,
            cond = self.key_match("t", "k"),
        );
        // As the owner: to_jsonb uses casts of its types to json, and reading the key as the
        // row type checks its domains.
        crate::pg::privilege::as_owner_of(self.relid, || {
            crate::reconcile::diff::with_wire_settings(|| {
                crate::pg::spi::maybe_one::<pgrx::JsonB>(&sql, &[pgrx::JsonB(key.clone()).into()])
            })
        })
        .map(|j| j.0)
    }

    /// Make the row with `key` be `row` (None: no row), with version (at, node), as if the
    /// change came from `from`: no capture sends it back there.
    fn settle(
        &self,
        key: &serde_json::Value,
        row: Option<&serde_json::Value>,
        version: (i64, &str),
        from: &str,
    ) {
        let spec = ApplySpec {
            table: self.table.clone(),
            row_type: &self.row_type,
            columns: &self.columns,
            key: &self.key,
            text_compare: &[],
        };
        let write = match row {
            Some(_) => crate::data::apply::upsert_from(
                &spec,
                &format!("jsonb_populate_record(NULL::{}, $1) r", self.row_type),
            ),
            None => format!(
                "DELETE FROM {} t USING jsonb_populate_record(NULL::{}, $1) r WHERE {}",
                self.table,
                self.row_type,
                self.key_match("t", "r")
            ),
        };
        let value = pgrx::JsonB(row.unwrap_or(key).clone());
        let keys = join(&self.key, ", ", |k| ident(k));
        let version_sql = format!(
            "INSERT INTO {vt} AS v ({keys}, \"synclink$at\", \"synclink$node\") \
             SELECT {r_keys}, $2, $3 FROM jsonb_populate_record(NULL::{row}, $1) r \
             ON CONFLICT ({keys}) DO UPDATE SET \"synclink$at\" = EXCLUDED.\"synclink$at\", \
                 \"synclink$node\" = EXCLUDED.\"synclink$node\"",
            vt = self.version_table,
            r_keys = join(&self.key, ", ", |k| format!("r.{}", ident(k))),
            row = self.row_type,
        );
        // Both as the owner: the row is the owner's table's, and the key is read as its row
        // type (its domains' checks).
        crate::pg::privilege::as_owner_of(self.relid, || {
            crate::data::apply::marked(from, from, || {
                crate::reconcile::diff::with_wire_settings(|| {
                    Spi::run_with_args(&write, &[value.into()]).unwrap();
                })
            });
            Spi::run_with_args(
                &version_sql,
                &[
                    pgrx::JsonB(key.clone()).into(),
                    version.0.into(),
                    version.1.into(),
                ],
            )
            .unwrap()
        });
    }

    /// Close the open conflicts on this key and remember the choice.
    fn close(&self, key: &serde_json::Value, decision: &Decision, by: &str) {
        let json = || pgrx::JsonB(key.clone());
        Spi::run_with_args(
            "UPDATE synclink.conflict SET outcome = 'resolved', resolved_at = clock_timestamp(), \
                    resolved_by = $3, kept = $4 \
              WHERE link_id = $1 AND key = $2 AND outcome = 'open'",
            &[
                self.link_id.into(),
                json().into(),
                by.into(),
                decision.node.as_str().into(),
            ],
        )
        .unwrap();
        Spi::run_with_args(
            "INSERT INTO synclink.resolution (link_id, key, rows, kept) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (link_id, key, rows) DO UPDATE SET kept = EXCLUDED.kept, resolved_at = now()",
            &[
                self.link_id.into(),
                json().into(),
                decision.rows.to_vec().into(),
                decision.kept.as_str().into(),
            ],
        )
        .unwrap();
    }
}

/// A choice made with sync_resolve, as both nodes record it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Decision {
    /// the node whose row is kept
    node: String,
    /// the version the kept row gets on both nodes
    at: i64,
    /// hashes of the two rows in conflict (sorted) and of the kept one
    rows: [String; 2],
    kept: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ResolveRequest {
    schema: String,
    table: String,
    key: serde_json::Value,
    decision: Decision,
    /// the resolving node's row, when it is the one kept
    row: Option<serde_json::Value>,
    take: bool,
}

/// Settle an open conflict: keep one node's current row on both nodes, close the conflict on
/// both, and remember the choice for these two rows.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_resolve(conflict_id: Option<i64>, keep: Option<&str>) -> bool {
    let conflict_id = crate::pg::args::required(conflict_id, "sync_resolve", "conflict_id");
    let keep = crate::pg::args::required(keep, "sync_resolve", "keep");
    let found = Spi::connect(|c| {
        c.select(
            "SELECT link_id, key, outcome, peer_name, \
                    coalesce(md5(local_row::text), 'absent'), coalesce(md5(peer_row::text), 'absent') \
               FROM synclink.conflict WHERE conflict_id = $1",
            None,
            &[conflict_id.into()],
        )
        .unwrap()
        .next()
        .map(|r| {
            (
                r.get::<i32>(1).unwrap().unwrap(),
                r.get::<pgrx::JsonB>(2).unwrap().unwrap().0,
                r.get::<String>(3).unwrap().unwrap(),
                r.get::<String>(4).unwrap().unwrap(),
                r.get::<String>(5).unwrap().unwrap(),
                r.get::<String>(6).unwrap().unwrap(),
            )
        })
    });
    let (link_id, key, outcome, peer_name, local_hash, peer_hash) =
        found.unwrap_or_else(|| raise(ConflictError::NoSuchConflict(conflict_id)));
    if outcome != "open" {
        raise(ConflictError::NotOpen {
            id: conflict_id,
            outcome,
        });
    }
    // The link the conflict names, for the same table and peer: a table's owner may log
    // conflicts (row-level security checks that too), and the row settled is the link's.
    let link_exists = crate::pg::spi::maybe_one::<bool>(
        "SELECT true FROM synclink.link l JOIN synclink.conflict c USING (link_id) \
          WHERE c.conflict_id = $1 AND l.relid = c.relid AND l.peer_name = c.peer_name",
        &[conflict_id.into()],
    )
    .is_some();
    let peer = crate::catalog::peer::find(&peer_name)
        .filter(|_| link_exists)
        .unwrap_or_else(|| raise(ConflictError::LinkGone(conflict_id)));
    let local = crate::catalog::node::local_name();
    let keep_local = match keep {
        "local" => true,
        "peer" => false,
        n if n == local => true,
        n if n == peer.node_name => false,
        other => raise(ConflictError::BadKeep {
            id: conflict_id,
            keep: other.into(),
            local,
            peer: peer.node_name.clone(),
        }),
    };
    let target = RowTarget::load(link_id);
    let mut rows = [local_hash.clone(), peer_hash.clone()];
    rows.sort();
    let decision = Decision {
        node: if keep_local {
            local.clone()
        } else {
            peer.node_name.clone()
        },
        at: Spi::get_one::<i64>("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
            .unwrap()
            .unwrap(),
        rows,
        kept: if keep_local { local_hash } else { peer_hash },
    };
    let mine = target.current(&key);
    let body = ResolveRequest {
        schema: target.peer_schema.clone(),
        table: target.peer_table.clone(),
        key: key.clone(),
        row: if keep_local { mine.clone() } else { None },
        take: keep_local,
        decision,
    };
    let reply =
        crate::catalog::link::request(&peer, "resolve", serde_json::to_value(&body).unwrap())
            .or_raise();
    let decision = body.decision;
    let version = (decision.at, decision.node.as_str());
    if keep_local {
        target.settle(&key, mine.as_ref(), version, &peer.node_name);
    } else {
        let theirs = reply.get("row").filter(|r| !r.is_null());
        target.settle(&key, theirs, version, &peer.node_name);
    }
    target.close(&key, &decision, &local);
    true
}

/// The peer's half of sync_resolve.
pub fn handle_request(
    from: &crate::catalog::peer::Peer,
    body: serde_json::Value,
) -> serde_json::Value {
    let req: ResolveRequest = serde_json::from_value(body).unwrap_or_else(|_| {
        raise(crate::catalog::link::LinkError::BadRequest(
            "resolve".into(),
        ))
    });
    let oid = crate::catalog::link::lookup(&req.schema, &req.table);
    let link = oid
        .and_then(|oid| crate::catalog::link::find(oid, &from.name))
        .unwrap_or_else(|| {
            raise(crate::catalog::link::LinkError::NotLinked {
                table: format!("{}.{}", ident(&req.schema), ident(&req.table)),
                peer: from.name.clone(),
            })
        });
    crate::pg::privilege::peer_may(link.relid, crate::pg::privilege::READ_WRITE, "write")
        .or_raise();
    let target = RowTarget::load(link.id);
    let mine = target.current(&req.key);
    let version = (req.decision.at, req.decision.node.as_str());
    let row = if req.take {
        req.row.as_ref()
    } else {
        mine.as_ref()
    };
    target.settle(&req.key, row, version, &from.node_name);
    target.close(&req.key, &req.decision, &from.node_name);
    serde_json::json!({ "row": mine })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn policies_are_stored_by_node_name() {
        let p = Policy::parse("prefer_local", None, "a", "b").unwrap();
        assert_eq!(p.stored(), ("prefer_node", Some("a".into()), None));
        let p = Policy::parse("prefer_peer", None, "a", "b").unwrap();
        assert_eq!(p, Policy::PreferNode("b".into()));
        let p = Policy::parse("last_write_wins", Some("updated_at"), "a", "b").unwrap();
        assert_eq!(
            Policy::from_stored(p.stored().0, p.stored().1, p.stored().2),
            p
        );
        assert!(matches!(
            Policy::parse("newest", None, "a", "b"),
            Err(ConflictError::UnknownPolicy(_))
        ));
        assert!(matches!(
            Policy::parse("manual", Some("updated_at"), "a", "b"),
            Err(ConflictError::VersionWithoutLww)
        ));
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
        assert!(sql.contains("ELSE (c.\"synclink$at\", c.\"synclink$node\") > (coalesce(c.\"synclink$here_at\", -1), coalesce(c.\"synclink$here_node\", ''))"), "{sql}");
    }

    #[test]
    fn prefer_node_asks_where_the_change_was_made() {
        let sql = checked(Policy::PreferNode("shop_a".into()), true);
        assert!(sql.contains("c.\"synclink$node\" = 'shop_a'"), "{sql}");
        assert!(
            sql.contains("DELETE FROM \"public\".\"p\" t USING w WHERE t.\"id\" = w.\"id\""),
            "{sql}"
        );
        assert!(sql.contains("'prefer_node:shop_a'"), "{sql}");
    }
}
