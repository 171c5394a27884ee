//! Registering and forgetting peers.

use crate::control::peer::HideStatementFromLog;
use crate::pg::args::required;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Register another database as a peer. Returns the peer's node name.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_add_peer(name: Option<&str>, conninfo: Option<&str>) -> Result<String, ErrorReport> {
    let hide = HideStatementFromLog::new()?;
    let name = required(name, "sync_add_peer", "name")?;
    let conninfo = required(conninfo, "sync_add_peer", "conninfo")?;
    let node = crate::control::peer::add(name, conninfo)?;
    hide.restore()?;
    Ok(node)
}

/// Forget a peer: its server, user mapping and foreign tables. With cascade, unlink its tables.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_drop_peer(
    name: Option<&str>,
    cascade: default!(Option<bool>, false),
) -> Result<bool, ErrorReport> {
    const F: &str = "sync_drop_peer";
    let name = required(name, F, "name")?;
    Ok(crate::control::peer::drop(
        name,
        required(cascade, F, "cascade")?,
    )?)
}

/// Make the foreign table through which requests carry rows in bulk for each peer registered
/// before synclink had one (run by ALTER EXTENSION synclink UPDATE).
#[pg_extern(schema = "synclink")]
#[search_path(pg_catalog, pg_temp)]
fn add_bulk_tables() -> Result<(), ErrorReport> {
    Ok(crate::control::peer::add_bulk_tables()?)
}
