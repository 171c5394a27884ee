//! Linking and unlinking tables.

use crate::pg::args::{names, relation, required, RegClass};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Mirror a table with a peer. Returns false when it was already linked the same way.
/// `key`: match rows by these columns instead of the primary key; `exclude`: columns neither
/// sent nor overwritten, each node keeping its own (a primary key that differs between the
/// nodes, say); `copy`: bring the rows already there together first; `conflict`: what happens
/// when both nodes change a row before either change arrives, with `version_column` as the
/// first thing last_write_wins compares; `direction`: `both`, `push` (this node's changes go
/// to the peer, the peer's stay there) or `pull` (the reverse); `create_missing`: make the
/// table on the peer first when it has none of that name (`create` itself is a reserved word
/// in SQL, which a call could not name without quotes).
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)]
fn sync_link_table(
    tbl: Option<RegClass>,
    peer: default!(Option<&str>, "NULL"),
    mode: default!(Option<&str>, "'sync'"),
    key: default!(Option<Vec<Option<String>>>, "NULL"),
    exclude: default!(Option<Vec<Option<String>>>, "NULL"),
    copy: default!(Option<&str>, "'none'"),
    conflict: default!(Option<&str>, "'last_write_wins'"),
    version_column: default!(Option<&str>, "NULL"),
    direction: default!(Option<&str>, "'both'"),
    create_missing: default!(Option<bool>, false),
) -> Result<bool, ErrorReport> {
    const F: &str = "sync_link_table";
    Ok(crate::control::link::link_table(
        relation(tbl, F, "tbl")?,
        peer,
        crate::control::link::Options {
            mode: required(mode, F, "mode")?,
            direction: required(direction, F, "direction")?,
            key: names(key, F, "key")?,
            exclude: names(exclude, F, "exclude")?.unwrap_or_default(),
            copy: required(copy, F, "copy")?,
            conflict: (required(conflict, F, "conflict")?, version_column),
            create_missing: required(create_missing, F, "create_missing")?,
        },
    )?)
}

/// Stop mirroring a table with a peer, on both nodes. The table and its rows stay as they are.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_unlink_table(
    tbl: Option<RegClass>,
    peer: default!(Option<&str>, "NULL"),
    discard_queued: default!(Option<bool>, false),
) -> Result<bool, ErrorReport> {
    const F: &str = "sync_unlink_table";
    Ok(crate::control::link::unlink_table(
        relation(tbl, F, "tbl")?,
        peer,
        required(discard_queued, F, "discard_queued")?,
    )?)
}

/// Make a linked table's capture function, triggers and version-table rules anew with the
/// code installed now — after `ALTER EXTENSION synclink UPDATE`, or after they were changed by
/// hand — without unlinking: rows, row versions and queued changes stay. With `peer` NULL,
/// every link of the table. Returns how many links were made anew.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_refresh_link(
    tbl: Option<RegClass>,
    peer: default!(Option<&str>, "NULL"),
) -> Result<i32, ErrorReport> {
    let relid = relation(tbl, "sync_refresh_link", "tbl")?;
    Ok(crate::control::link::refresh_table(relid, peer)?)
}
