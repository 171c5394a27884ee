//! Capture: a statement on a linked table becomes change records in the outbox.
//!
//! A link's triggers run either the generated PL/pgSQL function ([`statement`], for sync
//! links and every statement shape) or, for async links, the native one-row capture
//! ([`one_row`]). The one-row capture offers each statement to its [`CapturePath`]s in order:
//! the heap writer ([`writer`]: the version upsert and the outbox record through the access
//! methods, READ COMMITTED only), the same writes as one prepared statement (any isolation
//! level), and last the generated function, which takes every statement. A new way of
//! capturing is one more implementation of the trait, placed in that list.

pub mod one_row;
pub mod statement;
pub mod writer;

use pgrx::pg_sys;

/// One statement's single changed row, as the one-row paths read it from the transition
/// tables.
pub struct OneRow<'a> {
    /// b'I', b'U' or b'D'
    pub op: u8,
    /// the new row (insert, update) or the old one (delete)
    pub row: pg_sys::Datum,
    /// the old row of an update
    pub old: Option<pg_sys::Datum>,
    pub desc: pg_sys::TupleDesc,
    /// the node where the change was first made
    pub origin: &'a str,
    /// the change's version: microseconds since 1970
    pub at: i64,
}

/// A way of queueing a statement's changes for a link.
pub trait CapturePath {
    /// Queue the statement's change; false when this path does not take this statement (and
    /// wrote nothing), so the next path is offered it.
    // SAFETY: callers pass in `data` the TriggerData of the link's AFTER … FOR EACH STATEMENT
    // trigger, with its transition tables, for the current call; `row` was read from them.
    unsafe fn capture(
        &self,
        data: *mut pg_sys::TriggerData,
        row: Option<&OneRow>,
    ) -> crate::pg::error::Result<bool>;
}
