//! Reconciliation: resolving logged conflicts ([`resolve`]) and comparing or repairing a
//! linked table against its peer's copy ([`diff`], also the initial copy of a new link).
//!
//! Uses the data path's apply statements, the peer protocol, the catalog and [`crate::pg`].

pub mod diff;
pub mod resolve;
