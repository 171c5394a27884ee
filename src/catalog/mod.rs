//! synclink's catalog: who this node is ([`node`]), the peers it knows ([`peer`]), the links
//! between a local table and a peer's ([`link`]), a link's conflict policy ([`policy`]), what
//! a peer may reach here ([`access`]), the description of a table that decides whether it
//! can be linked ([`link`], [`types`]), and a table's definition as the statements that make
//! it again elsewhere ([`definition`]).
//!
//! The rest of the extension reads `synclink.node`, `synclink.peer` and `synclink.link`
//! through these modules; `control/` writes the rows as it makes and removes what they
//! describe. Uses only [`crate::pg`].

pub mod access;
pub mod definition;
pub mod link;
pub mod node;
pub mod peer;
pub mod policy;
pub mod types;
