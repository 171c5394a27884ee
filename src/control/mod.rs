//! Making and removing objects: a peer's foreign server and tables ([`peer`]), a link's
//! capture functions, triggers and version table ([`link`]), a table made on the peer for a
//! link ([`create`]), a schema and its rows made again in a peer's database ([`clone`]), shared sequences ([`sequence`]),
//! the DDL guards that keep them whole ([`ddl`], [`removal`]) and DROP EXTENSION's cleanup
//! ([`teardown`]).
//!
//! Uses the data path (to generate capture and to settle queues), reconciliation (a link's
//! initial copy), the peer protocol ([`crate::rpc`]), the catalog and [`crate::pg`].

pub mod clone;
pub mod create;
pub mod ddl;
pub mod link;
pub mod peer;
pub mod removal;
pub mod sequence;
pub mod teardown;
