//! Every function a user calls, and the server side of a peer's requests: thin wrappers that
//! check their arguments, call the module that does the work, and turn its errors into
//! PostgreSQL errors — the one place where errors leave the extension.
//!
//! Each function pins `search_path` (they run as the caller, who may be a superuser with a
//! schema of someone else's first in the path). May use every other folder; nothing uses this
//! one.

// Each function returns pgrx's ErrorReport as it is, unboxed: only then does pgrx raise it
// with its own SQLSTATE, hint and detail (any other error type becomes a generic ERROR).
#![allow(clippy::result_large_err)]

mod link;
mod node;
mod peer;
mod reconcile;
mod sequence;
mod serve;
mod status;
