//! Conflicts and differences: settling a logged conflict, comparing and repairing a table.

use crate::pg::args::{relation, required, RegClass};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Settle an open conflict: keep one node's current row on both nodes, close the conflict on
/// both, and remember the choice for these two rows.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_resolve(conflict_id: Option<i64>, keep: Option<&str>) -> Result<bool, ErrorReport> {
    let conflict_id = required(conflict_id, "sync_resolve", "conflict_id")?;
    let keep = required(keep, "sync_resolve", "keep")?;
    Ok(crate::reconcile::resolve::resolve(conflict_id, keep)?)
}

/// Repair the differences sync_diff finds, so both copies hold the preferred node's rows:
/// prefer => 'local' (default), 'peer', or a node name. Returns the rows written or removed.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_reconcile(
    tbl: Option<RegClass>,
    peer: default!(Option<&str>, "NULL"),
    prefer: default!(Option<&str>, "'local'"),
) -> Result<i64, ErrorReport> {
    const F: &str = "sync_reconcile";
    Ok(crate::reconcile::diff::reconcile(
        relation(tbl, F, "tbl")?,
        peer,
        required(prefer, F, "prefer")?,
    )?)
}

/// The rows that differ between this node's table and the peer's copy right now, one per key:
/// `only_local`, `only_peer`, or `differs` with the columns that differ. Works before linking,
/// to check two databases, and after.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
// pgrx reads the result columns from the return type as written, so it cannot be an alias.
#[allow(clippy::type_complexity)]
fn sync_diff(
    tbl: Option<RegClass>,
    peer: default!(Option<&str>, "NULL"),
) -> Result<
    TableIterator<
        'static,
        (
            name!(key, pgrx::JsonB),
            name!(kind, String),
            name!(columns, Option<Vec<String>>),
        ),
    >,
    ErrorReport,
> {
    let relid = relation(tbl, "sync_diff", "tbl")?;
    Ok(TableIterator::new(crate::reconcile::diff::diff(
        relid, peer,
    )?))
}
