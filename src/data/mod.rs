//! The data path, in the order a change travels:
//!
//! 1. [`capture`] — a statement on a linked table becomes change records (generated statement
//!    triggers, or the native one-row capture) written to the outbox by the heap writer;
//! 2. [`queue`] — the outbox, its sequence and horizon, backlog and retry bookkeeping;
//! 3. [`ship`] — one INSERT per chunk into the peer's inbox through postgres_fdw, in the
//!    writer's transaction (sync mode) or from [`worker`] (async mode, and retries);
//! 4. [`apply`] — on the receiving node, the inbox trigger applies each record set-based,
//!    idempotently, deciding conflicts by row version.
//!
//! Uses the catalog and [`crate::pg`]; never control, reconciliation or the API.

pub mod apply;
pub mod capture;
pub mod queue;
pub mod ship;
pub mod wire;
pub mod worker;
