//! Cloning a schema and its data into a peer's database.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Make this database's tables (`tables`: names or `schema.*`; NULL: every table of the
/// schemas in the search path), the types, sequences, functions and views of their schemas,
/// their keys, indexes, foreign keys and triggers, and their rows (`max_rows` per table and
/// every row those reference; NULL: all) in the peer's database, each object in its own
/// subtransaction there: one row per object, and per refused row, saying what became of it.
/// `objects`: which kinds to bring (default all).
///
/// The search path is pinned inside, once the caller's has been read (it names the schemas
/// cloned by default), before anything else is looked up.
#[pg_extern]
// pgrx reads the result columns from the return type as written, so it cannot be an alias.
#[allow(clippy::type_complexity)]
fn sync_clone(
    peer: Option<&str>,
    tables: default!(Option<Vec<Option<String>>>, "NULL"),
    objects: default!(Option<Vec<Option<String>>>, "NULL"),
    max_rows: default!(Option<i64>, "NULL"),
    direction: default!(Option<&str>, "'to_peer'"),
) -> Result<
    TableIterator<
        'static,
        (
            name!(object_kind, String),
            name!(object_name, String),
            name!(action, String),
            name!(rows, Option<i64>),
            name!(detail, Option<String>),
        ),
    >,
    ErrorReport,
> {
    const F: &str = "sync_clone";
    let search_path = crate::control::clone::plan::search_path()?;
    let lines = crate::pg::privilege::pinned(|| -> Result<_, ErrorReport> {
        let peer = crate::pg::args::required(peer, F, "peer")?;
        Ok(crate::control::clone::clone(
            Some(peer),
            crate::control::clone::Options {
                search_path,
                tables: crate::pg::args::names(tables, F, "tables")?,
                objects: crate::pg::args::names(objects, F, "objects")?,
                max_rows,
                direction: crate::pg::args::required(direction, F, "direction")?.to_string(),
            },
        )?)
    })?;
    Ok(TableIterator::new(
        lines
            .into_iter()
            .map(|l| (l.kind, l.name, l.action, l.rows, l.detail)),
    ))
}
