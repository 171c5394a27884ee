//! This database's name among synclink nodes.

use crate::pg::args::required;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// The name this database is known by among synclink nodes.
#[pg_extern(stable)]
fn sync_node_name() -> Result<String, ErrorReport> {
    Ok(crate::catalog::node::local_name()?)
}

/// Rename this node, e.g. after a physical copy that kept the system identifier.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_set_node_name(name: Option<&str>) -> Result<String, ErrorReport> {
    let name = required(name, "sync_set_node_name", "name")?;
    Ok(crate::catalog::node::rename(name)?)
}
