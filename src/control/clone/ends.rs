//! The two ends of a clone: the node whose objects and rows are read (the source) and the
//! node that makes them (the target). sync_clone runs on either: `to_peer`, this node is the
//! source and the peer the target; `from_peer`, the other way round. Either way the target
//! makes everything as the role the source reaches it as — the role this node connects to
//! the peer as, or the one the peer connects to this node as — so that a clone lets the
//! source do at the target no more than its own connection could. This node reads as the
//! caller; the peer reads as the role this node connects to it as.

use super::plan::Plan;
use super::rows::{self, Choice};
use super::target;
use crate::catalog::definition::Ddl;
use crate::catalog::peer::Peer;
use crate::pg::error::Result;
use crate::rpc::{
    CloneChooseRequest, CloneObjectsRequest, ClonePlanRequest, CloneReadRequest, CloneRowsReply,
    CopyRowsReply, ObjectOutcome, Outgoing,
};
use pgrx::prelude::*;

/// What became of one batch of rows at the target.
pub struct Taken {
    pub inserted: i64,
    pub present: i64,
    /// each refused row's key (or place) and the error
    pub refused: Vec<(String, String)>,
    pub skipped: Option<String>,
}

/// The rows of one table chosen at the source: its name there, whether they were chosen into
/// a temporary table (max_rows), and how many are there because other copied rows
/// reference them.
pub struct Chosen {
    pub table: String,
    pub limited: bool,
    pub by_reference: i64,
}

/// Which end is where. From the peer, objects and rows are made here as a role: the one the
/// peer reaches this node as.
pub enum Ends<'a> {
    ToPeer(&'a Peer),
    FromPeer(&'a Peer, pg_sys::Oid),
}

impl Ends<'_> {
    /// The source's objects, for `tables` (NULL: every table of the schemas `schemas`).
    pub fn plan(&self, tables: Option<&[String]>, schemas: &[pg_sys::Oid]) -> Result<Plan> {
        match self {
            Ends::ToPeer(_) => super::plan::plan(tables, schemas),
            Ends::FromPeer(peer, _) => {
                let names = crate::pg::spi::column::<String>(
                    "SELECT n.nspname::pg_catalog.text FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY s(oid, i) \
                       JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) s.oid ORDER BY s.i",
                    &[schemas.to_vec().into()],
                )?;
                Ok(crate::rpc::call_for(
                    peer,
                    &ClonePlanRequest {
                        tables: tables.map(<[String]>::to_vec),
                        schemas: names,
                    },
                )?)
            }
        }
    }

    /// Make `objects` at the target: what became of each.
    pub fn make(&self, objects: Vec<Ddl>) -> Result<Vec<(Ddl, ObjectOutcome)>> {
        if objects.is_empty() {
            return Ok(Vec::new());
        }
        let outcomes: Vec<ObjectOutcome> = match self {
            Ends::ToPeer(peer) => crate::rpc::call_for(
                peer,
                &CloneObjectsRequest {
                    objects: objects.clone(),
                },
            )?,
            Ends::FromPeer(_, role) => target::make_objects(objects.clone(), *role)?,
        };
        Ok(objects.into_iter().zip(outcomes).collect())
    }

    /// Choose the rows of `tables` at the source.
    pub fn choose(&self, tables: &[String], max_rows: Option<i64>) -> Result<Vec<Chosen>> {
        match self {
            Ends::ToPeer(_) => Ok(chosen(rows::choose(&oids(tables)?, max_rows)?)),
            Ends::FromPeer(peer, _) => {
                let reply: Vec<(String, bool, i64)> = crate::rpc::call_for(
                    peer,
                    &CloneChooseRequest {
                        tables: tables.to_vec(),
                        max_rows,
                    },
                )?;
                Ok(reply
                    .into_iter()
                    .map(|(table, limited, by_reference)| Chosen {
                        table,
                        limited,
                        by_reference,
                    })
                    .collect())
            }
        }
    }

    /// The next batch of `table`'s chosen rows at the source (`first`: from the start).
    pub fn read(
        &self,
        chosen: &Chosen,
        bulk: bool,
        limit: i64,
        first: bool,
    ) -> Result<Option<(Outgoing, Vec<u8>)>> {
        match self {
            Ends::ToPeer(_) => rows::read(&chosen.table, chosen.limited, bulk, limit, first),
            Ends::FromPeer(peer, _) => {
                let (reply, data): (Option<Outgoing>, Option<Vec<u8>>) = crate::rpc::call_bulk(
                    peer,
                    &CloneReadRequest {
                        table: chosen.table.clone(),
                        limited: chosen.limited,
                        bulk,
                        limit,
                        first,
                    },
                    None,
                    true,
                )?;
                // rows only for the table asked for
                let table = match &reply {
                    Some(Outgoing::Copy(req)) => Some(&req.table),
                    Some(Outgoing::Rows(req, _)) => Some(&req.table),
                    None => None,
                };
                if table.is_some_and(|t| *t != chosen.table) {
                    return Err(crate::rpc::RpcError::BadReply(peer.name.clone()).into());
                }
                Ok(reply.map(|out| (out, data.unwrap_or_default())))
            }
        }
    }

    /// Have the target take a batch of rows; in bulk only into a table this clone made
    /// (`made`).
    pub fn take(&self, out: Outgoing, data: Vec<u8>, made: bool) -> Result<Taken> {
        match out {
            Outgoing::Copy(_) if !made => Err(crate::rpc::RpcError::BadReply(match self {
                Ends::ToPeer(p) | Ends::FromPeer(p, _) => p.name.clone(),
            })
            .into()),
            Outgoing::Copy(req) => {
                let reply: CopyRowsReply = match self {
                    Ends::ToPeer(peer) => crate::rpc::call_bulk(peer, &req, Some(&data), false)?.0,
                    Ends::FromPeer(_, role) => target::take_copy(req, &data, *role)?,
                };
                Ok(Taken {
                    inserted: reply.inserted,
                    present: reply.present,
                    refused: reply.refused,
                    skipped: reply.skipped,
                })
            }
            Outgoing::Rows(req, keys) => {
                let reply: CloneRowsReply = match self {
                    Ends::ToPeer(peer) => crate::rpc::call_for(peer, &req)?,
                    Ends::FromPeer(_, role) => target::take_rows(req, *role)?,
                };
                let refused = reply
                    .refused
                    .into_iter()
                    .map(|(at, error)| {
                        let key = usize::try_from(at - 1)
                            .ok()
                            .and_then(|i| keys.get(i).cloned().flatten())
                            .unwrap_or_else(|| format!("row {at} of a batch"));
                        (key, error)
                    })
                    .collect();
                Ok(Taken {
                    inserted: reply.inserted,
                    present: reply.present,
                    refused,
                    skipped: reply.skipped,
                })
            }
        }
    }
}

fn oids(tables: &[String]) -> Result<Vec<pg_sys::Oid>> {
    tables.iter().map(|t| rows::named(t)).collect()
}

fn chosen(choices: Vec<Choice>) -> Vec<Chosen> {
    choices
        .into_iter()
        .map(|c| Chosen {
            limited: c.source != c.table,
            table: c.table,
            by_reference: c.by_reference,
        })
        .collect()
}

/// The source's half of a clone run on the other node, as the role that node connects as.
pub mod serve {
    use super::*;

    pub fn plan(req: ClonePlanRequest) -> Result<Plan> {
        crate::pg::privilege::as_role(crate::pg::privilege::session_role(), || {
            let schemas = crate::pg::spi::column::<pg_sys::Oid>(
                "SELECT n.oid FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY s(name, i) \
                   JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) s.name ORDER BY s.i",
                &[req.schemas.into()],
            )?;
            super::super::plan::plan(req.tables.as_deref(), &schemas)
        })
    }

    pub fn choose(req: CloneChooseRequest) -> Result<Vec<(String, bool, i64)>> {
        crate::pg::privilege::as_role(crate::pg::privilege::session_role(), || {
            Ok(chosen(rows::choose(&oids(&req.tables)?, req.max_rows)?)
                .into_iter()
                .map(|c| (c.table, c.limited, c.by_reference))
                .collect())
        })
    }

    pub fn read(req: CloneReadRequest) -> Result<(Option<Outgoing>, Option<Vec<u8>>)> {
        crate::pg::privilege::as_role(crate::pg::privilege::session_role(), || {
            Ok(
                match rows::read(&req.table, req.limited, req.bulk, req.limit, req.first)? {
                    Some((out, data)) => (Some(out), Some(data)),
                    None => (None, None),
                },
            )
        })
    }
}
