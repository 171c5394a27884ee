//! synclink's catalog: who this node is ([`node`]), the peers it knows ([`peer`]), the links
//! between a local table and a peer's ([`link`]), a link's conflict policy ([`policy`]), and
//! the description of a table that decides whether it can be linked ([`link`], [`types`]).
//!
//! Reading and writing `synclink.node`, `synclink.peer` and `synclink.link` happens here and
//! nowhere else. Uses only [`crate::pg`].

pub mod access;
pub mod link;
pub mod node;
pub mod peer;
pub mod policy;
pub mod types;
