//! Every function a user (or a peer's request trigger) calls: thin, checking arguments and
//! turning errors into PostgreSQL errors at the one place they leave the extension.
//!
//! May use every other folder; nothing uses this one.

mod serve;
