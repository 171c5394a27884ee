//! Registering other databases: the postgres_fdw server, the user mapping holding the
//! credentials, and the foreign tables synclink talks to the peer's synclink through.

use crate::pg::error::SqlError;
use crate::pg::remote::RemoteFailure;
use crate::pg::sql::qualified;
use pgrx::prelude::*;

#[derive(thiserror::Error, Debug)]
pub enum PeerError {
    #[error("invalid peer name {}", crate::pg::args::shown(.0))]
    InvalidName(String),
    #[error("peer \"{0}\" already exists with a different connection string")]
    Exists(String),
    #[error("foreign server \"{0}\" already exists and was not made by synclink")]
    ServerTaken(String),
    #[error("peer {} does not exist", crate::pg::args::shown(.0))]
    Unknown(String),
    #[error("node {} is not registered as a peer here", crate::pg::args::shown(.0))]
    UnknownNode(String),
    #[error("no peer is registered")]
    NoPeers,
    #[error("more than one peer is registered; name the one to use")]
    Ambiguous(Vec<String>),
    #[error("could not connect to peer \"{peer}\"")]
    Unreachable { peer: String, reason: String },
    #[error("malformed reply from peer \"{0}\"")]
    BadReply(String),
    #[error("synclink's objects for peer \"{peer}\" are damaged: {missing} is missing")]
    Damaged { peer: String, missing: String },
    #[error("peer \"{peer}\" reaches this node as role \"{bound}\", not as \"{actual}\"")]
    WrongRole {
        peer: String,
        bound: String,
        actual: String,
    },
    #[error("peer \"{0}\" does not run synclink")]
    NoSynclink(String),
    #[error("peer \"{peer}\" is this same node (\"{node}\")")]
    SameNode { peer: String, node: String },
    #[error("peer \"{peer}\" still has {count} linked table(s)")]
    HasLinks { peer: String, count: i64 },
    #[error("{count} changes are still queued for peer \"{peer}\"")]
    HasQueued { peer: String, count: i64 },
    /// Anything else that stopped a request to the peer or a lookup of it: the peer's own
    /// error, passed on as the peer raised it, or a failed read of synclink's catalog here.
    #[error("{0}")]
    Failed(crate::pg::error::Error),
}

impl From<crate::pg::error::Error> for PeerError {
    fn from(err: crate::pg::error::Error) -> Self {
        PeerError::Failed(err)
    }
}

impl From<pgrx::spi::SpiError> for PeerError {
    fn from(err: pgrx::spi::SpiError) -> Self {
        PeerError::Failed(err.into())
    }
}

impl SqlError for PeerError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            PeerError::InvalidName(_) => ERRCODE_INVALID_NAME,
            PeerError::Exists(_) | PeerError::ServerTaken(_) => ERRCODE_DUPLICATE_OBJECT,
            PeerError::Unknown(_) | PeerError::UnknownNode(_) | PeerError::NoPeers => {
                ERRCODE_UNDEFINED_OBJECT
            }
            PeerError::Ambiguous(_) => ERRCODE_AMBIGUOUS_PARAMETER,
            PeerError::Unreachable { .. } => ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            PeerError::NoSynclink(_) => ERRCODE_FEATURE_NOT_SUPPORTED,
            PeerError::BadReply(_) => ERRCODE_PROTOCOL_VIOLATION,
            PeerError::Damaged { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            PeerError::WrongRole { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            PeerError::SameNode { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
            PeerError::HasLinks { .. } | PeerError::HasQueued { .. } => {
                ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST
            }
            PeerError::Failed(e) => e.sqlstate(),
        }
    }
    fn detail(&self) -> Option<String> {
        match self {
            PeerError::Unreachable { reason, .. } => Some(reason.clone()),
            PeerError::Ambiguous(names) => Some(format!("Registered peers: {}.", names.join(", "))),
            PeerError::Failed(e) => e.detail(),
            _ => None,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            PeerError::InvalidName(_) => "Use 1 to 40 lower-case letters, digits or '_', starting with a letter or '_'.".into(),
            PeerError::Exists(p) => format!("To change it, run SELECT sync_drop_peer('{p}') first."),
            PeerError::ServerTaken(_) => "Choose another peer name.".into(),
            PeerError::UnknownNode(_) => "On this database, register the node that sent the request with SELECT sync_add_peer('name', 'conninfo of that node').".into(),
            PeerError::Unknown(_) | PeerError::NoPeers => "Register it with SELECT sync_add_peer('name', 'host=... dbname=... user=... password=...').".into(),
            PeerError::Ambiguous(_) => "Pass the peer name as the second argument.".into(),
            PeerError::Unreachable { .. } => "Check host, port, dbname, user and password, and that the peer's pg_hba.conf admits this server.".into(),
            PeerError::WrongRole { peer, .. } => format!("Another peer's role cannot act for this one. If peer \"{peer}\" now connects as another role on purpose, a superuser here runs UPDATE synclink.peer SET inbound_role = NULL WHERE peer_name = '{peer}'."),
            PeerError::Damaged { peer, .. } => format!("SELECT sync_drop_peer('{peer}', cascade => true) removes the peer and its links on this node (the peer keeps its half: unlink there too); then register it again with sync_add_peer()."),
            PeerError::BadReply(_) => "The nodes run incompatible synclink versions; update both (ALTER EXTENSION synclink UPDATE).".into(),
            PeerError::NoSynclink(_) => "Run CREATE EXTENSION synclink CASCADE on the peer database, and grant the connecting role access to it.".into(),
            PeerError::SameNode { .. } => "The connection string points back at this database, or both are physical copies: give one a new name with sync_set_node_name().".into(),
            PeerError::HasLinks { peer, .. } => format!("Unlink the tables first, or run SELECT sync_drop_peer('{peer}', cascade => true)."),
            PeerError::HasQueued { peer, .. } => format!("Deliver them with SELECT sync_flush('{peer}'), or unlink its tables with discard_queued => true to throw them away."),
            PeerError::Failed(e) => return e.hint(),
        })
    }
}

crate::pg::error::reported_as_sql_error!(PeerError);

#[derive(Debug, Clone)]
pub struct Peer {
    pub name: String,
    pub server: String,
    pub node_name: String,
    /// synclink.peer.inbound_role
    pub inbound_role: Option<pg_sys::Oid>,
}

impl Peer {
    /// The local foreign table that reaches `table` in the peer's synclink schema.
    pub fn foreign(&self, table: &str) -> String {
        Peer::foreign_name(&self.name, table)
    }

    pub fn foreign_name(peer: &str, table: &str) -> String {
        qualified("synclink", &format!("{peer}_{table}"))
    }

    /// The foreign table onto the peer's `table`, if it is still there: nobody but synclink
    /// should drop it, but a superuser can, and then every way to remove the peer must work.
    pub fn check_foreign(&self, table: &str) -> Result<(), PeerError> {
        let name = self.foreign(table);
        let exists = crate::pg::spi::maybe_one::<bool>(
            "SELECT true WHERE pg_catalog.to_regclass($1) IS NOT NULL",
            &[name.as_str().into()],
        )?
        .is_some();
        if exists {
            Ok(())
        } else {
            Err(PeerError::Damaged {
                peer: self.name.clone(),
                missing: format!("foreign table {name}"),
            })
        }
    }

    /// Is this session the peer's? Changes and requests arrive as the role the peer's
    /// connection string names, and the first one ties the peer to that role: from then on a
    /// role another peer connects as cannot act in this peer's name. A superuser may (it can
    /// do anything here anyway), but is tied to a peer all the same when it comes first.
    pub fn check_inbound(&self) -> Result<(), PeerError> {
        let role = crate::pg::privilege::session_role();
        match self.inbound_role {
            Some(bound) if bound == role || crate::pg::privilege::is_superuser(role) => Ok(()),
            Some(bound) => Err(PeerError::WrongRole {
                peer: self.name.clone(),
                bound: crate::pg::privilege::role_name(bound),
                actual: crate::pg::privilege::role_name(role),
            }),
            None => {
                let bound = crate::pg::spi::maybe_one::<pg_sys::Oid>(
                    "UPDATE synclink.peer SET inbound_role = coalesce(inbound_role, $2) \
                      WHERE peer_name = $1 RETURNING inbound_role",
                    &[self.name.as_str().into(), role.into()],
                )?;
                Peer {
                    inbound_role: bound,
                    ..self.clone()
                }
                .check_inbound()
            }
        }
    }

    /// Is this a failure to reach the peer that a removal may step over with a warning?
    pub fn tolerable(e: &PeerError) -> bool {
        matches!(e, PeerError::Unreachable { .. } | PeerError::Damaged { .. })
    }
}

pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 40
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub fn find(name: &str) -> crate::pg::error::Result<Option<Peer>> {
    crate::pg::spi::prepared_read(
        "SELECT peer_name, server_name::text, node_name, inbound_role FROM synclink.peer WHERE peer_name = $1",
        &[pgrx::PgOid::from(pg_sys::TEXTOID)],
        &[name.into()],
        |t| t.into_iter().next().map(|r| peer_of(&r)).transpose(),
    )?
}

pub fn find_by_node(node: &str) -> crate::pg::error::Result<Option<Peer>> {
    // Planned once per backend: a peer's every delivering transaction asks.
    crate::pg::spi::prepared_read(
        "SELECT peer_name, server_name::text, node_name, inbound_role FROM synclink.peer WHERE node_name = $1",
        &[pgrx::PgOid::from(pg_sys::TEXTOID)],
        &[node.into()],
        |t| t.into_iter().next().map(|r| peer_of(&r)).transpose(),
    )?
}

/// A row of synclink.peer: peer_name, server_name, node_name, inbound_role.
fn peer_of(r: &pgrx::spi::SpiHeapTupleData) -> crate::pg::error::Result<Peer> {
    use crate::pg::spi::need;
    Ok(Peer {
        name: need(r, 1, "synclink.peer.peer_name")?,
        server: need(r, 2, "synclink.peer.server_name")?,
        node_name: need(r, 3, "synclink.peer.node_name")?,
        inbound_role: r.get::<pg_sys::Oid>(4)?,
    })
}

/// The peer a call means: the one named, or the only one there is.
pub fn resolve(name: Option<&str>) -> Result<Peer, PeerError> {
    if let Some(n) = name {
        return find(n)?.ok_or_else(|| PeerError::Unknown(n.into()));
    }
    let names =
        crate::pg::spi::column::<String>("SELECT peer_name FROM synclink.peer ORDER BY 1", &[])?;
    match names.len() {
        0 => Err(PeerError::NoPeers),
        // The one peer listed is gone only if a concurrent sync_drop_peer committed between
        // the two statements: then it does not exist.
        1 => find(&names[0])?.ok_or_else(|| PeerError::Unknown(names[0].clone())),
        _ => Err(PeerError::Ambiguous(names)),
    }
}

/// The peer answered, but not in a form this node reads (the nodes' versions disagree).
pub fn malformed(peer: &str) -> PeerError {
    PeerError::BadReply(peer.into())
}

pub fn unreachable(peer: &str, f: RemoteFailure) -> PeerError {
    PeerError::Unreachable {
        peer: peer.into(),
        reason: f.summary(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn peer_names() {
        for ok in ["b", "legacy", "_x", "eu_west_2"] {
            assert!(super::valid_name(ok), "{ok}");
        }
        for bad in ["", "B", "1a", "a-b", "a b", "x\"y", &"a".repeat(41)] {
            assert!(!super::valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_peers_own_error_passes_through_unchanged() {
        use crate::pg::error::SqlError;
        use pgrx::prelude::PgSqlErrorCode;
        let failure = crate::pg::remote::RemoteFailure {
            sqlstate: PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            message: "relation \"public.t\" does not exist".into(),
            detail: Some("on the peer".into()),
            hint: Some("create it".into()),
        };
        let e = super::PeerError::Failed(failure.into());
        assert_eq!(e.sqlstate(), PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE);
        assert_eq!(e.to_string(), "relation \"public.t\" does not exist");
        assert_eq!(e.detail().as_deref(), Some("on the peer"));
        assert_eq!(e.hint().as_deref(), Some("create it"));
        assert!(!super::Peer::tolerable(&e));
    }
}
