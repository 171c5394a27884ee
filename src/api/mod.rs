//! Every function a user calls, and the server side of a peer's requests: thin wrappers that
//! check their arguments, call the module that does the work, and turn its errors into
//! PostgreSQL errors — the one place where errors leave the extension.
//!
//! Each function pins `search_path` (they run as the caller, who may be a superuser with a
//! schema of someone else's first in the path). May use every other folder; nothing uses this
//! one.

mod clone;
mod link;
mod node;
mod peer;
mod reconcile;
mod sequence;
mod serve;
mod status;
