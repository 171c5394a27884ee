//! PostgreSQL helpers: the layer every other folder stands on, knowing nothing of links or
//! peers.
//!
//! SPI calls and cached plans ([`spi`], [`plan`]), subtransactions ([`subxact`]), calls that
//! reach another server and the deadline that bounds them ([`remote`]), acting as another role
//! with a pinned search path ([`privilege`]), quoting ([`sql`]), argument checks ([`args`]),
//! connection strings ([`conninfo`]), error reports ([`error`]) and the few FFI wrappers several
//! modules need ([`ffi`]). Nothing here uses another folder of the crate.

pub mod args;
pub mod conninfo;
pub mod copy;
pub mod error;
pub mod ffi;
pub mod plan;
pub mod privilege;
pub mod remote;
pub mod spi;
pub mod sql;
pub mod subxact;
