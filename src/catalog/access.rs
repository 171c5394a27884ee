//! What a peer may reach on this node: exactly the tables this node's administrator granted
//! the role the peer connects as.

use crate::pg::error::SqlError;
use crate::pg::privilege::{pinned, role_name, session_role};
use pgrx::prelude::*;

/// A table privilege, by its ACL bit and its SQL name.
pub const SELECT: (u32, &str) = (pg_sys::ACL_SELECT, "SELECT");
pub const INSERT: (u32, &str) = (pg_sys::ACL_INSERT, "INSERT");
pub const UPDATE: (u32, &str) = (pg_sys::ACL_UPDATE, "UPDATE");
pub const DELETE: (u32, &str) = (pg_sys::ACL_DELETE, "DELETE");
/// What a peer needs to read a table here (diff, copy from it).
pub const READ: &[(u32, &str)] = &[SELECT];
/// What a peer needs to write a table here (its changes applied, a repair).
pub const WRITE: &[(u32, &str)] = &[INSERT, UPDATE, DELETE];
/// What a peer needs to link a table: both.
pub const READ_WRITE: &[(u32, &str)] = &[SELECT, INSERT, UPDATE, DELETE];

#[derive(thiserror::Error, Debug)]
pub enum PrivilegeError {
    #[error("peer role \"{role}\" may not {what} table {table} on node \"{node}\"")]
    PeerNotAllowed {
        role: String,
        what: &'static str,
        table: String,
        node: String,
        missing: Vec<&'static str>,
    },
}

impl SqlError for PrivilegeError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE
    }
    fn detail(&self) -> Option<String> {
        match self {
            PrivilegeError::PeerNotAllowed { missing, role, .. } => Some(format!(
                "A peer reaches this node as role \"{role}\", which lacks {} on it.",
                missing.join(", ")
            )),
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            PrivilegeError::PeerNotAllowed {
                role,
                table,
                missing,
                node,
                ..
            } => Some(format!(
                "On node \"{node}\", the administrator decides what a peer may reach: GRANT {} ON {table} TO \"{role}\" there, if this peer should.",
                missing.join(", ")
            )),
        }
    }
}

crate::pg::error::reported_as_sql_error!(PrivilegeError);

/// Check that the role a peer connects as (the session's) holds `privileges` on `relid`: a
/// peer may link, read and write exactly the tables this node's administrator granted its
/// role. `what` says what it tried ("link", "read", "write").
pub fn peer_may(
    relid: pg_sys::Oid,
    privileges: &[(u32, &'static str)],
    what: &'static str,
) -> crate::pg::error::Result<()> {
    let role = session_role();
    let missing: Vec<&'static str> = privileges
        .iter()
        .filter(|(bit, _)| {
            // SAFETY: pg_class_aclcheck reads the relation's ACL through the syscache; an
            // unknown OID is reported as an ordinary error.
            let result = unsafe { pg_sys::pg_class_aclcheck(relid, role, *bit as pg_sys::AclMode) };
            result != pg_sys::AclResult::ACLCHECK_OK
        })
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(PrivilegeError::PeerNotAllowed {
        role: role_name(role),
        what,
        table: relation_name(relid),
        node: crate::catalog::node::local_name()?,
        missing,
    }
    .into())
}

fn relation_name(relid: pg_sys::Oid) -> String {
    let names = pinned(|| {
        Spi::get_two_with_args::<String, String>(
            "SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text \
               FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
              WHERE c.oid OPERATOR(pg_catalog.=) $1",
            &[relid.into()],
        )
    });
    match names {
        Ok((Some(schema), Some(name))) => crate::pg::sql::qualified(&schema, &name),
        _ => relid.to_u32().to_string(),
    }
}
