//! Sequences shared between two nodes.

use crate::pg::args::{relation, required, RegClass};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Make a linked table's id column draw from a sequence both nodes share, so inserts on
/// either side never collide. Called on the node that owns the sequence.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_share_sequence(
    seq: Option<RegClass>,
    peer: default!(Option<&str>, "NULL"),
    strategy: default!(Option<&str>, "'shared'"),
) -> Result<bool, ErrorReport> {
    const F: &str = "sync_share_sequence";
    Ok(crate::control::sequence::share(
        relation(seq, F, "seq")?,
        peer,
        required(strategy, F, "strategy")?,
    )?)
}

/// Undo sync_share_sequence on both nodes: the column defaults and sequence settings as they
/// were, each sequence past every id either node handed out.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_unshare_sequence(
    seq: Option<RegClass>,
    peer: default!(Option<&str>, "NULL"),
) -> Result<bool, ErrorReport> {
    let seq = relation(seq, "sync_unshare_sequence", "seq")?;
    Ok(crate::control::sequence::unshare(seq, peer)?)
}
