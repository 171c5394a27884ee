//! Comparing a table with its copy on a peer, set-based, whether or not it is linked.
//!
//! Both nodes hash their rows into buckets by key (count and XOR of row hashes per bucket);
//! only the buckets whose summaries differ are compared row by row, with a hash per column,
//! so a million-row table with a handful of differences moves a few kilobytes, not the table.
//! Rows are hashed in their text form under fixed settings — the ones postgres_fdw gives the
//! peer's session — so equal values hash alike on both nodes.

use crate::catalog::peer::{self, Peer, PeerError};
use crate::pg::error::{Result, SqlError};
use crate::pg::spi::need;
use crate::pg::sql::{ident, join, literal, qualified};
use crate::rpc::{DiffRequest, Repair, Shape};
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use pgrx::JsonB;

#[derive(thiserror::Error, Debug)]
pub enum DiffError {
    #[error("table {0} has no primary key to match rows by")]
    NoKey(String),
    #[error("table {table} does not exist on node \"{node}\"")]
    MissingTable { table: String, node: String },
    #[error("table {table} on node \"{node}\" lacks column(s) {columns}")]
    MissingColumns {
        table: String,
        node: String,
        columns: String,
    },
    #[error("malformed diff request")]
    BadRequest,
    #[error("prefer => {} names neither this node nor the peer", crate::pg::args::shown(.0))]
    BadPrefer(String),
    #[error("table {table} on node \"{node}\" takes no rows from this peer: its link only sends")]
    AgainstDirection { table: String, node: String },
}

impl SqlError for DiffError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            DiffError::NoKey(_) => ERRCODE_INVALID_TABLE_DEFINITION,
            DiffError::MissingTable { .. } => ERRCODE_UNDEFINED_TABLE,
            DiffError::MissingColumns { .. } => ERRCODE_UNDEFINED_COLUMN,
            DiffError::BadRequest => ERRCODE_PROTOCOL_VIOLATION,
            DiffError::BadPrefer(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            DiffError::AgainstDirection { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            DiffError::NoKey(t) => format!("Rows are compared by key: ALTER TABLE {t} ADD PRIMARY KEY (...), or link the table with key => first."),
            DiffError::MissingTable { .. } => "Create the table on that node first.".into(),
            DiffError::MissingColumns { .. } => "Both tables need the compared columns; sync_diff compares the columns of the table on this node (the link's columns when it is linked).".into(),
            DiffError::BadRequest => "The nodes run incompatible synclink versions.".into(),
            DiffError::BadPrefer(_) => "Use prefer => 'local' (make the peer like this node), prefer => 'peer', or either node's name (sync_node_name()).".into(),
            DiffError::AgainstDirection { .. } => "A one-way link is repaired the way it carries changes: run sync_reconcile on the node that sends, preferring its own rows.".into(),
        })
    }
}

crate::pg::error::reported_as_sql_error!(DiffError);

impl Shape {
    fn table_sql(&self) -> String {
        qualified(&self.schema, &self.table)
    }
    /// Run `f`, which reads or writes the table's values, as the table's owner: casts of its
    /// types to text or json, domain checks and triggers are the owner's code
    /// (crate::pg::privilege).
    fn as_owner<T>(&self, f: impl FnOnce() -> T) -> Result<T, SpiError> {
        match crate::catalog::link::lookup(&self.schema, &self.table)? {
            Some(relid) => crate::pg::privilege::as_owner_of(relid, f),
            None => Ok(f()),
        }
    }
    fn bucket(&self, mask: i64) -> String {
        format!(
            "(hashtextextended(ROW({})::text, 0) & {mask})::int",
            join(&self.key, ", ", |k| format!("t.{}", ident(k)))
        )
    }
    fn key_json(&self) -> String {
        format!(
            "jsonb_build_object({})",
            join(&self.key, ", ", |k| format!(
                "{}, t.{}",
                literal(k),
                ident(k)
            ))
        )
    }
    /// bucket → [rows, XOR of row hashes]
    fn summary_sql(&self, mask: i64) -> String {
        format!(
            "SELECT coalesce(jsonb_object_agg(b, jsonb_build_array(n, h)), '{{}}') FROM \
             (SELECT {bucket} AS b, count(*) AS n, bit_xor(hashtextextended(ROW({cols})::text, 1)) AS h \
                FROM {table} t GROUP BY 1) s",
            bucket = self.bucket(mask),
            cols = join(&self.columns, ", ", |c| format!("t.{}", ident(c))),
            table = self.table_sql(),
        )
    }
    /// The rows with the given keys ($1, a jsonb array of key objects), as jsonb objects.
    fn fetch_sql(&self) -> String {
        format!(
            "SELECT coalesce(jsonb_agg(jsonb_build_object({cols})), '[]') \
               FROM {table} t JOIN jsonb_populate_recordset(NULL::{table}, $1) k ON {matched}",
            cols = join(&self.columns, ", ", |c| format!(
                "{}, t.{}",
                literal(c),
                ident(c)
            )),
            table = self.table_sql(),
            matched = self.key_match("k"),
        )
    }
    fn key_match(&self, alias: &str) -> String {
        join(&self.key, " AND ", |k| {
            format!("t.{k} = {alias}.{k}", k = ident(k))
        })
    }
    /// Every column is compared as text: json and other types without '=' may be among them.
    fn upsert_sql(&self) -> String {
        let table = self.table_sql();
        crate::data::apply::upsert_from(
            &crate::data::apply::ApplySpec {
                table: table.clone(),
                row_type: "",
                columns: &self.columns,
                key: &self.key,
                text_compare: &self.columns,
            },
            &format!("jsonb_populate_recordset(NULL::{table}, $1) r"),
        )
    }
    /// Delete from `table` the rows with the keys in $1 (a jsonb array of key objects, read
    /// as `row_type`).
    fn delete_keys_sql(&self, table: &str, row_type: &str) -> String {
        format!(
            "DELETE FROM {table} t USING jsonb_populate_recordset(NULL::{row_type}, $1) k WHERE {matched}",
            matched = self.key_match("k"),
        )
    }
    /// Forget the history of the rows with the keys in $1 in the version table `versions`: each
    /// keeps its row, with the version no change is made on (time 0, no node) and no base, so
    /// that the next change to it, made on either node, is made on that version and is no
    /// conflict on the other. The generation stays: a node a link prefers still wins with its
    /// next change wherever a newer generation was seen, and a change made elsewhere does not
    /// start below it.
    fn forget_keys_sql(&self, versions: &str, row_type: &str) -> String {
        format!(
            "UPDATE {versions} t SET \"synclink$at\" = 0, \"synclink$node\" = '', \
                    \"synclink$base_at\" = NULL, \"synclink$base_node\" = NULL \
               FROM jsonb_populate_recordset(NULL::{row_type}, $1) k WHERE {matched}",
            matched = self.key_match("k"),
        )
    }
    /// Write `upsert` rows and delete `delete` keys here, marked as coming from `from` so a
    /// link's capture does not send them back. Returns the rows touched.
    fn repair_here(
        &self,
        upsert: serde_json::Value,
        delete: serde_json::Value,
        from: &str,
    ) -> Result<i64, SpiError> {
        let run = |sql: String, rows: serde_json::Value| -> Result<i64, SpiError> {
            Spi::connect_mut(|c| Ok(c.update(&sql, None, &[JsonB(rows).into()])?.len() as i64))
        };
        let table = self.table_sql();
        let (upsert_sql, delete_sql) = (self.upsert_sql(), self.delete_keys_sql(&table, &table));
        let work = std::panic::AssertUnwindSafe(move || {
            crate::data::wire::compared(|| {
                self.as_owner(|| Ok(run(delete_sql, delete)? + run(upsert_sql, upsert)?))
            })
        });
        crate::data::apply::marked(from, from, move || {
            let w = work;
            (w.0)()
        })?
    }

    /// On a linked table, forget the row versions of these keys (a jsonb array of key objects):
    /// a repaired row was written without a change record, so both nodes start its history
    /// afresh ([`Self::forget_keys_sql`]), and the next change to it is not taken for a
    /// conflict.
    /// Open conflicts on those keys are closed as resolved in favour of `kept`.
    fn forget_versions(
        &self,
        peer_name: &str,
        keys: &serde_json::Value,
        kept: Option<&str>,
    ) -> Result<()> {
        let link = match crate::catalog::link::lookup(&self.schema, &self.table)? {
            Some(oid) => crate::catalog::link::find(oid, peer_name)?,
            None => None,
        };
        let (Some(link), Some(list)) = (link, keys.as_array()) else {
            return Ok(());
        };
        if list.is_empty() {
            return Ok(());
        }
        // The keys are read as the table's row type (its domains' checks): as the owner.
        self.as_owner(|| {
            Spi::run_with_args(
                &self.forget_keys_sql(&link.version_table, &link.row_type),
                &[JsonB(keys.clone()).into()],
            )
        })??;
        Spi::run_with_args(
            "UPDATE synclink.conflict SET outcome = 'resolved', resolved_at = clock_timestamp(), kept = $3 \
              WHERE link_id = $1 AND outcome = 'open' AND key IN (SELECT jsonb_array_elements($2))",
            &[link.id.into(), JsonB(keys.clone()).into(), kept.into()],
        )?;
        Ok(())
    }

    /// [key, [hash of each column's text]] for every row in the given buckets ($1)
    fn rows_sql(&self, mask: i64) -> String {
        format!(
            "SELECT coalesce(jsonb_agg(jsonb_build_array({key}, ARRAY[{hashes}])), '[]') \
               FROM {table} t WHERE {bucket} = ANY($1)",
            key = self.key_json(),
            hashes = join(&self.columns, ", ", |c| format!(
                "hashtextextended(t.{}::text, 0)",
                ident(c)
            )),
            table = self.table_sql(),
            bucket = self.bucket(mask),
        )
    }
}

fn query_json(sql: &str, buckets: Option<Vec<i32>>) -> Result<serde_json::Value, SpiError> {
    let args: Vec<pgrx::datum::DatumWithOid> = buckets.into_iter().map(|b| b.into()).collect();
    Ok(Spi::get_one_with_args::<JsonB>(sql, &args)?.map_or(serde_json::Value::Null, |j| j.0))
}

fn shape_of(relid: pg_sys::Oid, peer: &Peer) -> Result<Shape> {
    let info = crate::catalog::link::describe(relid)?;
    if let Some((columns, key)) = crate::catalog::link::columns_and_key(relid, &peer.name)? {
        return Ok(Shape {
            schema: info.schema,
            table: info.name,
            columns,
            key,
        });
    }
    let key = info
        .primary_key
        .clone()
        .ok_or_else(|| DiffError::NoKey(info.display()))?;
    let columns = info.wire_columns(&[]).into_iter().map(|w| w.name).collect();
    Ok(Shape {
        schema: info.schema,
        table: info.name,
        columns,
        key,
    })
}

/// A bucket count that keeps each bucket a few hundred rows. Counted, not estimated: a table
/// loaded a moment ago has no statistics yet, and one bucket would mean fetching every row.
fn mask_for(shape: &Shape) -> Result<i64, SpiError> {
    let rows = shape
        .as_owner(|| Spi::get_one::<i64>(&format!("SELECT count(*) FROM {}", shape.table_sql())))??
        .unwrap_or(0);
    let buckets = (rows / 256).clamp(1, 1 << 16) as u64;
    Ok(buckets.next_power_of_two() as i64 - 1)
}

fn ask(peer: &Peer, req: &DiffRequest) -> Result<serde_json::Value, PeerError> {
    crate::rpc::call(peer, req)
}

type DiffRow = (JsonB, String, Option<Vec<String>>);

pub fn diff(relid: pg_sys::Oid, peer_name: Option<&str>) -> Result<Vec<DiffRow>> {
    let peer = peer::resolve(peer_name)?;
    let shape = shape_of(relid, &peer)?;
    diff_with(&peer, &shape)
}

fn diff_with(peer: &Peer, shape: &Shape) -> Result<Vec<DiffRow>> {
    let mask = mask_for(shape)?;
    let mut req = DiffRequest {
        shape: shape.clone(),
        mask,
        buckets: None,
        repair: None,
    };
    let theirs = ask(peer, &req)?;
    let mine = shape.as_owner(|| {
        crate::data::wire::compared(|| query_json(&shape.summary_sql(mask), None))
    })??;
    let (theirs, mine) = match (theirs, mine) {
        (serde_json::Value::Object(t), serde_json::Value::Object(m)) => (t, m),
        _ => return Err(DiffError::BadRequest.into()),
    };
    let mut differing: Vec<i32> = theirs
        .iter()
        .filter(|(b, v)| mine.get(*b) != Some(*v))
        .chain(mine.iter().filter(|(b, _)| !theirs.contains_key(*b)))
        .filter_map(|(b, _)| b.parse().ok())
        .collect();
    differing.sort_unstable();
    differing.dedup();
    if differing.is_empty() {
        return Ok(Vec::new());
    }
    req.buckets = Some(differing.clone());
    let their_rows = ask(peer, &req)?;
    let my_rows = shape.as_owner(|| {
        crate::data::wire::compared(|| query_json(&shape.rows_sql(mask), Some(differing)))
    })??;
    Spi::connect(|c| {
        c.select(
            "WITH peer AS (SELECT e->0 AS key, ARRAY(SELECT jsonb_array_elements_text(e->1))::numeric[] AS h \
                             FROM jsonb_array_elements($1) e), \
                  mine AS (SELECT e->0 AS key, ARRAY(SELECT jsonb_array_elements_text(e->1))::numeric[] AS h \
                             FROM jsonb_array_elements($2) e) \
             SELECT coalesce(m.key, p.key), \
                    CASE WHEN p.key IS NULL THEN 'only_local' WHEN m.key IS NULL THEN 'only_peer' ELSE 'differs' END, \
                    CASE WHEN p.key IS NOT NULL AND m.key IS NOT NULL THEN \
                      ARRAY(SELECT x.col FROM unnest($3::text[], m.h, p.h) AS x(col, a, b) \
                             WHERE x.a IS DISTINCT FROM x.b) END \
               FROM mine m FULL JOIN peer p ON m.key = p.key \
              WHERE m.key IS NULL OR p.key IS NULL OR m.h IS DISTINCT FROM p.h \
              ORDER BY 2, 1",
            None,
            &[
                JsonB(their_rows).into(),
                JsonB(my_rows).into(),
                shape.columns.clone().into(),
            ],
        )?
        .map(|r| {
            Ok((
                need::<JsonB>(&r, 1, "key of a differing row")?,
                need::<String>(&r, 2, "kind of a differing row")?,
                r.get::<Vec<String>>(3)?,
            ))
        })
        .collect()
    })
}

/// Answer a peer's diff request: bucket summaries, or the rows of some buckets.
pub fn answer(from: &Peer, req: DiffRequest) -> Result<serde_json::Value> {
    let node = crate::catalog::node::local_name()?;
    let shape = &req.shape;
    let relid = crate::pg::spi::maybe_one::<pg_sys::Oid>(
        "SELECT to_regclass(format('%I.%I', $1::text, $2::text))::oid",
        &[shape.schema.as_str().into(), shape.table.as_str().into()],
    )?
    .ok_or_else(|| DiffError::MissingTable {
        table: shape.table_sql(),
        node: node.clone(),
    })?;
    // A repair writes rows or, fetching, forgets row versions and settles conflicts.
    let (needs, what) = match &req.repair {
        Some(_) => (crate::catalog::access::READ_WRITE, "write"),
        None => (crate::catalog::access::READ, "read"),
    };
    crate::catalog::access::peer_may(relid, needs, what)?;
    let info = crate::catalog::link::describe(relid)?;
    let missing: Vec<String> = shape
        .columns
        .iter()
        .chain(&shape.key)
        .filter(|c| !info.columns.iter().any(|i| &i.wire.name == *c))
        .map(|c| ident(c))
        .collect();
    if !missing.is_empty() {
        return Err(DiffError::MissingColumns {
            table: shape.table_sql(),
            node,
            columns: missing.join(", "),
        }
        .into());
    }
    if let Some(repair) = req.repair {
        // Rows written here against a one-way link's direction would send the receiving
        // node's rows to the node that is their authority.
        if repair.fetch.is_null()
            && crate::catalog::link::find(relid, &from.name)?.map(|l| l.direction)
                == Some(crate::catalog::link::Direction::Push)
        {
            return Err(DiffError::AgainstDirection {
                table: shape.table_sql(),
                node,
            }
            .into());
        }
        shape.forget_versions(&from.name, &repair.forget, repair.kept.as_deref())?;
        if !repair.fetch.is_null() {
            return Ok(
                shape.as_owner(|| crate::data::wire::compared(|| fetch(shape, repair.fetch)))??
            );
        }
        let from = from.node_name.clone();
        return Ok(serde_json::json!(shape.repair_here(
            repair.upsert,
            repair.delete,
            &from
        )?));
    }
    Ok(shape.as_owner(|| {
        crate::data::wire::compared(|| match req.buckets {
            None => query_json(&shape.summary_sql(req.mask), None),
            Some(b) => query_json(&shape.rows_sql(req.mask), Some(b)),
        })
    })??)
}

fn fetch(shape: &Shape, keys: serde_json::Value) -> Result<serde_json::Value, SpiError> {
    Ok(
        Spi::get_one_with_args::<JsonB>(&shape.fetch_sql(), &[JsonB(keys).into()])?
            .map_or(serde_json::Value::Null, |j| j.0),
    )
}

/// Make the two copies equal: the preferred node's rows win, rows only on the other node are
/// removed there. Returns how many rows were written or removed.
pub fn reconcile(relid: pg_sys::Oid, peer_name: Option<&str>, prefer: &str) -> Result<i64> {
    let peer = peer::resolve(peer_name)?;
    let local = crate::catalog::node::local_name()?;
    let local_wins = match prefer {
        "local" => true,
        "peer" => false,
        p if p == local => true,
        p if p == peer.node_name || p == peer.name => false,
        other => return Err(DiffError::BadPrefer(other.into()).into()),
    };
    let shape = shape_of(relid, &peer)?;
    let found = diff_with(&peer, &shape)?;
    let side = if local_wins { Side::Local } else { Side::Peer };
    repair(&peer, &shape, &found, side, side)
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Local,
    Peer,
    /// nobody: such rows stay as they are
    Neither,
}

/// Apply a diff: rows present on one node only are copied to the other when `missing` says
/// so (Local: this node's rows go to the peer, and the peer's own extra rows are removed;
/// Peer: the other way round); differing rows take the `differs` side's values.
fn repair(
    peer: &Peer,
    shape: &Shape,
    found: &[DiffRow],
    missing: Side,
    differs: Side,
) -> Result<i64> {
    if found.is_empty() {
        return Ok(0);
    }
    let keys = |kinds: &[&str]| -> serde_json::Value {
        serde_json::Value::Array(
            found
                .iter()
                .filter(|(_, k, _)| kinds.contains(&k.as_str()))
                .map(|(key, _, _)| key.0.clone())
                .collect(),
        )
    };
    let every_key = keys(&["differs", "only_local", "only_peer"]);
    let kept = match differs {
        Side::Local => Some(crate::catalog::node::local_name()?),
        Side::Peer => Some(peer.node_name.clone()),
        Side::Neither => None,
    };
    shape.forget_versions(&peer.name, &every_key, kept.as_deref())?;
    let ask_repair = |repair: Repair| -> Result<serde_json::Value, PeerError> {
        ask(
            peer,
            &DiffRequest {
                shape: shape.clone(),
                mask: 0,
                buckets: None,
                repair: Some(Repair {
                    forget: every_key.clone(),
                    kept: kept.clone(),
                    ..repair
                }),
            },
        )
    };
    let pick = |side: Side| {
        if differs == side {
            vec!["differs"]
        } else {
            vec![]
        }
    };
    let mut touched = 0;
    // what the peer gets from here
    let mut to_peer = pick(Side::Local);
    let mut peer_deletes = vec![];
    let mut from_peer = pick(Side::Peer);
    let mut local_deletes = vec![];
    match missing {
        Side::Local => {
            to_peer.push("only_local");
            peer_deletes.push("only_peer");
        }
        Side::Peer => {
            from_peer.push("only_peer");
            local_deletes.push("only_local");
        }
        Side::Neither => {
            to_peer.push("only_local");
            from_peer.push("only_peer");
        }
    }
    if !to_peer.is_empty() || !peer_deletes.is_empty() {
        let upsert =
            shape.as_owner(|| crate::data::wire::compared(|| fetch(shape, keys(&to_peer))))??;
        touched += ask_repair(Repair {
            upsert,
            delete: keys(&peer_deletes),
            ..Default::default()
        })?
        .as_i64()
        .unwrap_or(0);
    }
    if !from_peer.is_empty() || !local_deletes.is_empty() {
        let upsert = if from_peer.is_empty() {
            serde_json::json!([])
        } else {
            ask_repair(Repair {
                fetch: keys(&from_peer),
                ..Default::default()
            })?
        };
        touched += shape.repair_here(upsert, keys(&local_deletes), &peer.node_name)?;
    }
    Ok(touched)
}

#[derive(thiserror::Error, Debug)]
pub enum CopyError {
    #[error("unknown copy {}", crate::pg::args::shown(.0))]
    BadCopy(String),
}

crate::pg::error::reported_as_sql_error!(CopyError);

impl SqlError for CopyError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE
    }
    fn hint(&self) -> Option<String> {
        Some("Use copy => 'none' (leave the rows as they are), 'missing' (copy rows missing on either side, report differing ones), 'to_peer' or 'from_peer' (make the other copy equal to this one, or this one to the peer's).".into())
    }
}

pub fn check_copy(copy: &str) -> Result<(), CopyError> {
    match copy {
        "none" | "missing" | "to_peer" | "from_peer" => Ok(()),
        other => Err(CopyError::BadCopy(other.into())),
    }
}

/// Bring existing rows together as a link is made (before either side has its triggers, so
/// nothing of it is captured). Returns the rows written or removed.
pub fn copy_for_link(
    peer: &Peer,
    schema: &str,
    table: &str,
    columns: Vec<String>,
    key: Vec<String>,
    copy: &str,
) -> Result<i64> {
    if copy == "none" {
        return Ok(0);
    }
    let shape = Shape {
        schema: schema.into(),
        table: table.into(),
        columns,
        key,
    };
    let found = diff_with(peer, &shape)?;
    let (missing, differs) = match copy {
        "to_peer" => (Side::Local, Side::Local),
        "from_peer" => (Side::Peer, Side::Peer),
        _ => (Side::Neither, Side::Neither),
    };
    let touched = repair(peer, &shape, &found, missing, differs)?;
    let differing = found.iter().filter(|(_, k, _)| k == "differs").count();
    if differs == Side::Neither && differing > 0 {
        crate::pg::error::warning(
            &format!(
                "{differing} rows of {} differ between this node and peer \"{}\" and were left as they are",
                shape.table_sql(),
                peer.name
            ),
            "SELECT * FROM sync_diff(...) lists them; sync_reconcile(..., prefer => ...) repairs them.",
        );
    }
    Ok(touched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_cover_key_and_columns() {
        let s = Shape {
            schema: "public".into(),
            table: "t".into(),
            columns: vec!["id".into(), "v".into()],
            key: vec!["id".into()],
        };
        let sum = s.summary_sql(1023);
        assert!(
            sum.contains("(hashtextextended(ROW(t.\"id\")::text, 0) & 1023)::int"),
            "{sum}"
        );
        assert!(
            sum.contains("bit_xor(hashtextextended(ROW(t.\"id\", t.\"v\")::text, 1))"),
            "{sum}"
        );
        let rows = s.rows_sql(1023);
        assert!(
            rows.contains("jsonb_build_object('id', t.\"id\")"),
            "{rows}"
        );
        assert!(
            rows.contains(
                "ARRAY[hashtextextended(t.\"id\"::text, 0), hashtextextended(t.\"v\"::text, 0)]"
            ),
            "{rows}"
        );
    }
}
