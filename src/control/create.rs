//! Making a table on the peer before linking it (`sync_link_table(…, create => true)`).
//!
//! This node sends its table's definition ([`crate::catalog::definition`]); the peer, when it
//! has no table of that name, runs the statements in order as the role the request arrives as
//! — the role its administrator lets this node connect as, so a peer never makes for another
//! node what that role could not make itself — and the link then checks the new table as it
//! checks any. A type or sequence the peer has already is used as it is (the link's column
//! check compares what matters). Foreign keys are left out: they name tables the peer may not
//! have. Everything happens in the link's transaction, so a statement the peer refuses undoes
//! the whole link on both nodes, and the error names the statement.

use crate::catalog::definition::{self, Ddl, Kind};
use crate::catalog::peer::Peer;
use crate::pg::error::{notice, Result, SqlError};
use crate::rpc::{CreateReply, CreateRequest};
use pgrx::prelude::*;

#[derive(thiserror::Error, Debug)]
pub enum CreateError {
    #[error("schema \"{schema}\" does not exist on node \"{node}\"")]
    NoSchema { schema: String, node: String },
    #[error("node \"{node}\" could not create {kind} {name}: {message}")]
    Refused {
        node: String,
        kind: &'static str,
        name: String,
        statement: String,
        sqlstate: PgSqlErrorCode,
        message: String,
    },
}

impl SqlError for CreateError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            CreateError::NoSchema { .. } => PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
            CreateError::Refused { sqlstate, .. } => *sqlstate,
        }
    }
    fn detail(&self) -> Option<String> {
        match self {
            CreateError::Refused { statement, .. } => {
                Some(format!("The statement was: {statement}"))
            }
            CreateError::NoSchema { .. } => None,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            CreateError::NoSchema { schema, .. } => format!(
                "Create the schema on that node (CREATE SCHEMA \"{schema}\"), owned by or granted to the role this node connects as, then link again."
            ),
            CreateError::Refused { .. } => {
                "Nothing was made on either node. Make what the statement needs on that node (or give the role this node connects as the right to), or create the table there yourself, then link again.".into()
            }
        })
    }
}

crate::pg::error::reported_as_sql_error!(CreateError);

/// Have `peer` make `relid`'s table (under the same schema and name) if it has none. Says in
/// a NOTICE what the peer made, and which foreign keys it was not given.
pub fn on_peer(peer: &Peer, relid: pg_sys::Oid, schema: &str, table: &str) -> Result<()> {
    let (objects, foreign_keys): (Vec<Ddl>, Vec<Ddl>) = definition::of_table(relid)?
        .into_iter()
        .partition(|d| d.kind != Kind::ForeignKey);
    let body = CreateRequest {
        schema: schema.into(),
        table: table.into(),
        objects,
    };
    let reply: CreateReply = crate::rpc::call_for(peer, &body)?;
    if reply.existed {
        return Ok(());
    }
    notice(&format!(
        "peer \"{}\" made {}",
        peer.name,
        reply.made.join(", ")
    ));
    if !foreign_keys.is_empty() {
        notice(&format!(
            "the foreign keys of table {} were not made on peer \"{}\": {}",
            crate::pg::sql::qualified(schema, table),
            peer.name,
            foreign_keys
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// The peer's half: make the table from `req`'s statements unless a table of that name is
/// here already.
pub fn handle(req: CreateRequest) -> Result<CreateReply> {
    let name = crate::pg::sql::qualified(&req.schema, &req.table);
    let exists = |kind: Kind, name: &str| -> Result<bool> {
        let lookup = match kind {
            Kind::Type => "to_regtype",
            _ => "to_regclass",
        };
        Ok(crate::pg::spi::maybe_one::<bool>(
            &format!("SELECT pg_catalog.{lookup}($1) IS NOT NULL"),
            &[name.into()],
        )?
        .unwrap_or(false))
    };
    if exists(Kind::Table, &name)? {
        return Ok(CreateReply {
            existed: true,
            made: Vec::new(),
        });
    }
    let node = crate::catalog::node::local_name()?;
    let schema_here = crate::pg::spi::maybe_one::<bool>(
        "SELECT true FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) $1::pg_catalog.name",
        &[req.schema.as_str().into()],
    )?
    .is_some();
    if !schema_here {
        return Err(CreateError::NoSchema {
            schema: req.schema,
            node,
        }
        .into());
    }
    let mut made = Vec::new();
    for object in req.objects {
        // Types and sequences may be shared with tables the peer has; the table and what
        // belongs to it are new with it.
        let shared = matches!(object.kind, Kind::Type | Kind::Sequence);
        if matches!(object.kind, Kind::ForeignKey | Kind::SequenceValue)
            || shared && exists(object.kind, &object.name)?
        {
            continue;
        }
        if let Err(refusal) = crate::control::clone::target::run_as_session_role(&object.sql) {
            return Err(CreateError::Refused {
                node,
                kind: object.kind.label(),
                name: object.name,
                statement: object.sql,
                sqlstate: refusal.sqlstate,
                message: refusal.message,
            }
            .into());
        }
        if object.kind != Kind::SequenceOwner {
            made.push(format!("{} {}", object.kind.label(), object.name));
        }
    }
    Ok(CreateReply {
        existed: false,
        made,
    })
}
