//! Delivery on demand.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Deliver what is queued for a peer (or for every peer) now. Returns how many change
/// records were delivered; a peer that cannot take them is reported with a WARNING and
/// keeps its queue.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_flush(peer: default!(Option<&str>, "NULL")) -> Result<i64, ErrorReport> {
    Ok(crate::data::queue::flush_now(peer)?)
}
