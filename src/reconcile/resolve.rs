//! Settling a logged conflict by hand: `sync_resolve` keeps one node's current row on both
//! nodes, gives it one new version on both, closes the conflict on both and remembers the
//! choice for these two rows, so that the same pair meeting again is settled the same way.
//! Each node passes the kept row on to its other peers of the table, as it passes on any
//! change it applies. The peer's half arrives as a `ResolveRequest` ([`answer`]).

use crate::data::apply::ApplySpec;
use crate::pg::error::{Result, SqlError};
use crate::pg::spi::need;
use crate::pg::sql::{ident, join};
use crate::rpc::{Decision, ResolveRequest};
use pgrx::prelude::*;
use pgrx::spi::SpiError;

#[derive(thiserror::Error, Debug)]
pub enum ConflictError {
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
}

impl SqlError for ConflictError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            ConflictError::BadKeep { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
            ConflictError::NoSuchConflict(_) => ERRCODE_UNDEFINED_OBJECT,
            ConflictError::NotOpen { .. } | ConflictError::LinkGone(_) => {
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
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
        })
    }
}

crate::pg::error::reported_as_sql_error!(ConflictError);

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
    fn load(link_id: i32) -> Result<RowTarget> {
        Spi::connect(|c| {
            let r = c
                .select(
                    "SELECT format('%I.%I', n.nspname, cl.relname), l.row_type, l.columns, \
                            l.key_columns, l.version_table, l.peer_schema, l.peer_table, cl.oid \
                       FROM synclink.link l JOIN pg_class cl ON cl.oid = l.relid \
                       JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE l.link_id = $1",
                    None,
                    &[link_id.into()],
                )?
                .next()
                .ok_or(crate::pg::spi::Missing("link of the conflict"))?;
            Ok(RowTarget {
                link_id,
                table: need(&r, 1, "name of the link's table")?,
                row_type: need(&r, 2, "synclink.link.row_type")?,
                columns: need(&r, 3, "synclink.link.columns")?,
                key: need(&r, 4, "synclink.link.key_columns")?,
                version_table: need(&r, 5, "synclink.link.version_table")?,
                peer_schema: need(&r, 6, "synclink.link.peer_schema")?,
                peer_table: need(&r, 7, "synclink.link.peer_table")?,
                relid: need(&r, 8, "synclink.link.relid")?,
            })
        })
    }

    fn key_match(&self, a: &str, b: &str) -> String {
        join(&self.key, " AND ", |k| {
            format!("{a}.{k} = {b}.{k}", k = ident(k))
        })
    }

    /// The version a decision on this key gives the kept row, at least `decided` (at, gen):
    /// past the version here (a clock behind still orders it after), and of the highest
    /// generation among it, the version here and, on the node that decides, the two versions
    /// that met in the conflict (`conflict_id`), so that the kept row is later than each of them
    /// wherever it travels.
    fn version_after(
        &self,
        key: &serde_json::Value,
        decided: (i64, i64),
        conflict_id: Option<i64>,
    ) -> Result<(i64, i64), SpiError> {
        let met = match conflict_id {
            Some(id) => crate::pg::spi::maybe_one::<i64>(
                "SELECT greatest(coalesce((local_version).gen, 0), coalesce((peer_version).gen, 0)) \
                   FROM synclink.conflict WHERE conflict_id = $1",
                &[id.into()],
            )?
            .unwrap_or(0),
            None => 0,
        };
        let sql = format!(
            "SELECT ARRAY[v.\"synclink$at\" + 1, v.\"synclink$gen\"] \
               FROM {vt} v, jsonb_populate_record(NULL::{row}, $1) k WHERE {cond}",
            vt = self.version_table,
            row = self.row_type,
            cond = self.key_match("v", "k"),
        );
        // As the owner: the key is read as the row type (its domains' checks).
        let here = crate::pg::privilege::as_owner_of(self.relid, || {
            crate::pg::spi::maybe_one::<Vec<i64>>(&sql, &[pgrx::JsonB(key.clone()).into()])
        })??;
        let (after, gen) = match here.as_deref() {
            Some([after, gen]) => (*after, *gen),
            _ => (0, 0),
        };
        Ok((decided.0.max(after), decided.1.max(met).max(gen)))
    }

    /// The row with this key here now, as jsonb (None: no such row).
    fn current(&self, key: &serde_json::Value) -> Result<Option<serde_json::Value>, SpiError> {
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
        let row = crate::pg::privilege::as_owner_of(self.relid, || {
            crate::data::wire::compared(|| {
                crate::pg::spi::maybe_one::<pgrx::JsonB>(&sql, &[pgrx::JsonB(key.clone()).into()])
            })
        })??;
        Ok(row.map(|j| j.0))
    }

    /// Make the row with `key` be `row` (None: no row), with version (at, node, gen), as if the
    /// change came from `from`: no capture sends it back there, and this node passes it on to
    /// its other peers of the table with that version (written first, the one it replaces kept
    /// as base, so the capture keeps it), so that every node the table reaches through this
    /// one settles on the row kept. A row that has the kept values already is not written (no
    /// trigger of the table's fires for it) and is passed on by itself, as the apply does.
    fn settle(
        &self,
        key: &serde_json::Value,
        row: Option<&serde_json::Value>,
        version: (i64, &str, i64),
        from: &str,
    ) -> Result<()> {
        let spec = ApplySpec {
            table: self.table.clone(),
            row_type: &self.row_type,
            columns: &self.columns,
            key: &self.key,
            text_compare: &[],
        };
        let record = format!("jsonb_populate_record(NULL::{}, $1) r", self.row_type);
        let keys = join(&self.key, ", ", |k| ident(k));
        let version_sql = format!(
            "INSERT INTO {vt} AS v ({keys}, \"synclink$at\", \"synclink$node\", \"synclink$gen\") \
             SELECT {r_keys}, $2, $3, $4 FROM {record} \
             ON CONFLICT ({keys}) DO UPDATE SET \"synclink$at\" = EXCLUDED.\"synclink$at\", \
                 \"synclink$node\" = EXCLUDED.\"synclink$node\", \"synclink$gen\" = EXCLUDED.\"synclink$gen\", \
                 \"synclink$base_at\" = v.\"synclink$at\", \"synclink$base_node\" = v.\"synclink$node\"",
            vt = self.version_table,
            r_keys = join(&self.key, ", ", |k| format!("r.{}", ident(k))),
        );
        let (write, op) = match row {
            Some(_) => (crate::data::apply::upsert_from(&spec, &record), 'U'),
            None => (
                format!(
                    "DELETE FROM {} t USING {record} WHERE {}",
                    self.table,
                    self.key_match("t", "r")
                ),
                'D',
            ),
        };
        // The write, and when it wrote nothing the record to pass on instead (the row as the
        // row type, and its stamp), as the capture would have written it.
        let settle_sql = format!(
            "WITH u AS ({write} RETURNING 1) \
             SELECT ARRAY[r]::text, \
                    ARRAY[ROW(v.\"synclink$at\", v.\"synclink$node\", v.\"synclink$base_at\", \
                              v.\"synclink$base_node\", '{op}', v.\"synclink$gen\")::synclink.stamp]::text \
               FROM {record} JOIN {vt} v ON {versioned} \
              WHERE NOT EXISTS (SELECT FROM u)",
            vt = self.version_table,
            versioned = self.key_match("v", "r"),
        );
        let value = pgrx::JsonB(row.unwrap_or(key).clone());
        // As the owner: the row is the owner's table's, and the key is read as its row type
        // (its domains' checks).
        let unchanged = crate::pg::privilege::as_owner_of(self.relid, || {
            Spi::run_with_args(
                &version_sql,
                &[
                    pgrx::JsonB(key.clone()).into(),
                    version.0.into(),
                    version.1.into(),
                    version.2.into(),
                ],
            )?;
            crate::data::apply::marked(from, from, || {
                crate::data::wire::compared(|| {
                    Spi::connect_mut(|c| {
                        let found = c.update(&settle_sql, None, &[value.into()])?.next();
                        found
                            .map(|r| -> Result<_, SpiError> {
                                Ok((r.get::<String>(1)?, r.get::<String>(2)?))
                            })
                            .transpose()
                            .map(|r| r.and_then(|(a, b)| Some((a?, b?))))
                    })
                })
            })
        })??;
        if let Some((rows, stamps)) = unchanged {
            crate::data::apply::marked(from, from, || {
                crate::data::apply::pass_on(self.relid, row.is_none(), &rows, &stamps)
            })?;
        }
        Ok(())
    }

    /// Close the open conflicts on this key and remember the choice. Among several nodes the
    /// same two rows may have met here by another link of the table (a change is logged once,
    /// by the first path that brings it): such a conflict, about the same two rows, is closed
    /// too; one about other rows stays open. The choice is remembered for the link, and found
    /// by every link of the table (apply::checked).
    fn close(
        &self,
        key: &serde_json::Value,
        decision: &Decision,
        by: &str,
    ) -> Result<(), SpiError> {
        let json = || pgrx::JsonB(key.clone());
        Spi::run_with_args(
            "UPDATE synclink.conflict c SET outcome = 'resolved', resolved_at = clock_timestamp(), \
                    resolved_by = $3, kept = $4 \
              WHERE c.key = $2 AND c.outcome = 'open' \
                AND (c.link_id = $1 \
                     OR c.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = $5::regclass) \
                        AND ARRAY[least(coalesce(md5(c.local_row::text), 'absent'), \
                                        coalesce(md5(c.peer_row::text), 'absent')), \
                                  greatest(coalesce(md5(c.local_row::text), 'absent'), \
                                           coalesce(md5(c.peer_row::text), 'absent'))] = $6)",
            &[
                self.link_id.into(),
                json().into(),
                by.into(),
                decision.node.as_str().into(),
                self.relid.into(),
                decision.rows.to_vec().into(),
            ],
        )?;
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
    }
}

/// Settle an open conflict: keep one node's current row on both nodes, close the conflict on
/// both, and remember the choice for these two rows. `keep`: 'local', 'peer' or a node name.
pub fn resolve(conflict_id: i64, keep: &str) -> Result<bool> {
    let found = Spi::connect(|c| {
        c.select(
            "SELECT link_id, key, outcome, peer_name, \
                    coalesce(md5(local_row::text), 'absent'), coalesce(md5(peer_row::text), 'absent') \
               FROM synclink.conflict WHERE conflict_id = $1",
            None,
            &[conflict_id.into()],
        )?
        .next()
        .map(|r| -> Result<_> {
            Ok((
                need::<i32>(&r, 1, "synclink.conflict.link_id")?,
                need::<pgrx::JsonB>(&r, 2, "synclink.conflict.key")?.0,
                need::<String>(&r, 3, "synclink.conflict.outcome")?,
                need::<String>(&r, 4, "synclink.conflict.peer_name")?,
                need::<String>(&r, 5, "hash of the conflict's local row")?,
                need::<String>(&r, 6, "hash of the conflict's peer row")?,
            ))
        })
        .transpose()
    })?;
    let (link_id, key, outcome, peer_name, local_hash, peer_hash) =
        found.ok_or(ConflictError::NoSuchConflict(conflict_id))?;
    if outcome != "open" {
        return Err(ConflictError::NotOpen {
            id: conflict_id,
            outcome,
        }
        .into());
    }
    // The link the conflict names, for the same table and peer: a table's owner may log
    // conflicts (row-level security checks that too), and the row settled is the link's.
    let link_exists = crate::pg::spi::maybe_one::<bool>(
        "SELECT true FROM synclink.link l JOIN synclink.conflict c USING (link_id) \
          WHERE c.conflict_id = $1 AND l.relid = c.relid AND l.peer_name = c.peer_name",
        &[conflict_id.into()],
    )?
    .is_some();
    let peer = crate::catalog::peer::find(&peer_name)?
        .filter(|_| link_exists)
        .ok_or(ConflictError::LinkGone(conflict_id))?;
    let local = crate::catalog::node::local_name()?;
    let keep_local = match keep {
        "local" => true,
        "peer" => false,
        n if n == local => true,
        n if n == peer.node_name => false,
        other => {
            return Err(ConflictError::BadKeep {
                id: conflict_id,
                keep: other.into(),
                local,
                peer: peer.node_name.clone(),
            }
            .into())
        }
    };
    let target = RowTarget::load(link_id)?;
    let mut rows = [local_hash.clone(), peer_hash.clone()];
    rows.sort();
    let mut decision = Decision {
        node: if keep_local {
            local.clone()
        } else {
            peer.node_name.clone()
        },
        at: Spi::get_one::<i64>(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint",
        )?
        .ok_or(crate::pg::spi::Missing("clock reading"))?,
        gen: 0,
        rows,
        kept: if keep_local { local_hash } else { peer_hash },
    };
    (decision.at, decision.gen) =
        target.version_after(&key, (decision.at, decision.gen), Some(conflict_id))?;
    let mine = target.current(&key)?;
    let body = ResolveRequest {
        schema: target.peer_schema.clone(),
        table: target.peer_table.clone(),
        key: key.clone(),
        row: if keep_local { mine.clone() } else { None },
        take: keep_local,
        decision,
    };
    let reply = crate::rpc::call(&peer, &body)?;
    let mut decision = body.decision;
    // The peer may have moved the version on past its own (a node before 0.6.0 says nothing).
    let said = |field: &str| reply.get(field).and_then(serde_json::Value::as_i64);
    decision.at = said("at").unwrap_or(decision.at);
    decision.gen = said("gen").unwrap_or(decision.gen);
    let version = (decision.at, decision.node.as_str(), decision.gen);
    if keep_local {
        target.settle(&key, mine.as_ref(), version, &peer.node_name)?;
    } else {
        let theirs = reply.get("row").filter(|r| !r.is_null());
        target.settle(&key, theirs, version, &peer.node_name)?;
    }
    target.close(&key, &decision, &local)?;
    Ok(true)
}

/// The peer's half of sync_resolve.
pub fn answer(from: &crate::catalog::peer::Peer, req: ResolveRequest) -> Result<serde_json::Value> {
    let link = match crate::catalog::link::lookup(&req.schema, &req.table)? {
        Some(oid) => crate::catalog::link::find(oid, &from.name)?,
        None => None,
    };
    let link = link.ok_or_else(|| crate::catalog::link::LinkError::NotLinked {
        table: format!("{}.{}", ident(&req.schema), ident(&req.table)),
        peer: from.name.clone(),
    })?;
    crate::catalog::access::peer_may(link.relid, crate::catalog::access::READ_WRITE, "write")?;
    let target = RowTarget::load(link.id)?;
    let mine = target.current(&req.key)?;
    let (at, gen) = target.version_after(&req.key, (req.decision.at, req.decision.gen), None)?;
    let version = (at, req.decision.node.as_str(), gen);
    let row = if req.take {
        req.row.as_ref()
    } else {
        mine.as_ref()
    };
    target.settle(&req.key, row, version, &from.node_name)?;
    target.close(&req.key, &req.decision, &from.node_name)?;
    Ok(serde_json::json!({ "row": mine, "at": at, "gen": gen }))
}
