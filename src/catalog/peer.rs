//! Registering other databases: the postgres_fdw server, the user mapping holding the
//! credentials, and the foreign tables synclink talks to the peer's synclink through.

use crate::pg::conninfo::{Conninfo, ConninfoError};
use crate::pg::error::{notice, raise, OrRaise, SqlError};
use crate::pg::remote::{catching, RemoteFailure};
use crate::pg::sql::{ident, literal, qualified};
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
            PeerError::Damaged { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            PeerError::WrongRole { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            PeerError::SameNode { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
            PeerError::HasLinks { .. } | PeerError::HasQueued { .. } => {
                ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST
            }
        }
    }
    fn detail(&self) -> Option<String> {
        match self {
            PeerError::Unreachable { reason, .. } => Some(reason.clone()),
            PeerError::Ambiguous(names) => Some(format!("Registered peers: {}.", names.join(", "))),
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
            PeerError::NoSynclink(_) => "Run CREATE EXTENSION synclink CASCADE on the peer database, and grant the connecting role access to it.".into(),
            PeerError::SameNode { .. } => "The connection string points back at this database, or both are physical copies: give one a new name with sync_set_node_name().".into(),
            PeerError::HasLinks { peer, .. } => format!("Unlink the tables first, or run SELECT sync_drop_peer('{peer}', cascade => true)."),
            PeerError::HasQueued { peer, .. } => format!("Deliver them with SELECT sync_flush('{peer}'), or unlink its tables with discard_queued => true to throw them away."),
        })
    }
}

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
        )
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
                );
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

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 40
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub fn find(name: &str) -> Option<Peer> {
    crate::pg::spi::prepared_read(
        "SELECT peer_name, server_name::text, node_name, inbound_role FROM synclink.peer WHERE peer_name = $1",
        &[pgrx::PgOid::from(pg_sys::TEXTOID)],
        &[name.into()],
        |t| t.into_iter().next().map(|r| peer_of(&r)),
    )
}

pub fn find_by_node(node: &str) -> Option<Peer> {
    // Planned once per backend: a peer's every delivering transaction asks.
    crate::pg::spi::prepared_read(
        "SELECT peer_name, server_name::text, node_name, inbound_role FROM synclink.peer WHERE node_name = $1",
        &[pgrx::PgOid::from(pg_sys::TEXTOID)],
        &[node.into()],
        |t| t.into_iter().next().map(|r| peer_of(&r)),
    )
}

/// A row of synclink.peer: peer_name, server_name, node_name, inbound_role.
fn peer_of(r: &pgrx::spi::SpiHeapTupleData) -> Peer {
    Peer {
        name: r.get::<String>(1).unwrap().unwrap_or_default(),
        server: r.get::<String>(2).unwrap().unwrap_or_default(),
        node_name: r.get::<String>(3).unwrap().unwrap_or_default(),
        inbound_role: r.get::<pg_sys::Oid>(4).unwrap(),
    }
}

/// The peer a call means: the one named, or the only one there is.
pub fn resolve(name: Option<&str>) -> Result<Peer, PeerError> {
    if let Some(n) = name {
        return find(n).ok_or_else(|| PeerError::Unknown(n.into()));
    }
    let names =
        crate::pg::spi::column::<String>("SELECT peer_name FROM synclink.peer ORDER BY 1", &[]);
    match names.len() {
        0 => Err(PeerError::NoPeers),
        1 => Ok(find(&names[0]).unwrap()),
        _ => Err(PeerError::Ambiguous(names)),
    }
}

fn options(pairs: &[(String, String)]) -> String {
    crate::pg::sql::join(pairs, ", ", |(k, v)| format!("{} {}", ident(k), literal(v)))
}

/// The connection string holds a password and the statement that called us is logged with
/// any ERROR; keep it out of the server log while this call runs (superusers only may).
struct HideStatementFromLog {
    previous: Option<String>,
}

impl HideStatementFromLog {
    fn new() -> Self {
        let allowed = Spi::get_one::<bool>(
            "SELECT has_parameter_privilege('log_min_error_statement', 'SET')",
        )
        .unwrap()
        .unwrap_or(false);
        if !allowed {
            return HideStatementFromLog { previous: None };
        }
        let previous =
            Spi::get_one::<String>("SELECT current_setting('log_min_error_statement')").unwrap();
        Spi::run("SELECT set_config('log_min_error_statement', 'panic', true)").unwrap();
        HideStatementFromLog { previous }
    }

    /// Called on success only: on error the transaction's abort restores the setting.
    fn restore(self) {
        if let Some(p) = self.previous {
            Spi::run_with_args(
                "SELECT set_config('log_min_error_statement', $1, true)",
                &[p.as_str().into()],
            )
            .unwrap();
        }
    }
}

/// Read the peer's node name through its foreign table, which also proves the connection.
fn probe(peer: &Peer) -> Result<String, PeerError> {
    let sql = format!("SELECT node_name FROM {}", peer.foreign("node"));
    match catching(|| Spi::get_one::<String>(&sql)) {
        Ok(Ok(Some(node))) => Ok(node),
        Ok(_) => Err(PeerError::NoSynclink(peer.name.clone())),
        Err(f) if f.is_undefined_table() => Err(PeerError::NoSynclink(peer.name.clone())),
        Err(f) => Err(unreachable(&peer.name, f)),
    }
}

pub fn unreachable(peer: &str, f: RemoteFailure) -> PeerError {
    PeerError::Unreachable {
        peer: peer.into(),
        reason: f.summary(),
    }
}

fn add(name: &str, conninfo: &str) -> Result<String, PeerError> {
    if !valid_name(name) {
        return Err(PeerError::InvalidName(name.into()));
    }
    let parsed = Conninfo::parse(conninfo).unwrap_or_else(|e: ConninfoError| raise(e));
    let shown = parsed.display();
    if let Some(existing) = find(name) {
        let same = Spi::get_one_with_args::<bool>(
            "SELECT conninfo = $2 FROM synclink.peer WHERE peer_name = $1",
            &[name.into(), shown.as_str().into()],
        )
        .unwrap()
        .unwrap_or(false);
        if !same {
            return Err(PeerError::Exists(name.into()));
        }
        notice(&format!("peer \"{name}\" is already registered, skipping"));
        return Ok(existing.node_name);
    }
    let server = format!("synclink_{name}");
    let taken = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_foreign_server WHERE srvname = $1)",
        &[server.as_str().into()],
    )
    .unwrap()
    .unwrap_or(false);
    if taken {
        return Err(PeerError::ServerTaken(server));
    }

    let local = crate::catalog::node::local_name();
    let mut server_opts = parsed.server.clone();
    if !server_opts.iter().any(|(k, _)| k == "application_name") {
        server_opts.push(("application_name".into(), format!("synclink from {local}")));
    }
    let peer = Peer {
        name: name.into(),
        server: server.clone(),
        node_name: String::new(),
        inbound_role: None,
    };
    let srv = ident(&server);
    let mut ddl = vec![
        format!("CREATE SERVER {srv} FOREIGN DATA WRAPPER synclink OPTIONS ({})", options(&server_opts)),
        format!(
            "CREATE FOREIGN TABLE {} (node_name text) SERVER {srv} OPTIONS (schema_name 'synclink', table_name 'node')",
            peer.foreign("node")
        ),
        format!(
            "CREATE FOREIGN TABLE {} (origin text, sender text, target_schema text, target_table text, \
             op \"char\", new_rows text, old_rows text, stamps text, seq bigint, floor_seq bigint) SERVER {srv} \
             OPTIONS (schema_name 'synclink', table_name 'inbox', batch_size '100')",
            peer.foreign("inbox")
        ),
        format!("CREATE SEQUENCE {} MINVALUE 0 START 0", crate::data::queue::retry_register(name)),
        format!(
            "CREATE FOREIGN TABLE {} (from_node text, action text, body jsonb, reply jsonb) SERVER {srv} \
             OPTIONS (schema_name 'synclink', table_name 'request')",
            peer.foreign("request")
        ),
    ];
    if !parsed.mapping.is_empty() {
        ddl.push(format!(
            "CREATE USER MAPPING FOR PUBLIC SERVER {srv} OPTIONS ({})",
            options(&parsed.mapping)
        ));
    } else {
        ddl.push(format!("CREATE USER MAPPING FOR PUBLIC SERVER {srv}"));
    }
    for stmt in &ddl {
        Spi::run(stmt).unwrap();
    }
    let node = probe(&peer)?;
    if node == local {
        return Err(PeerError::SameNode {
            peer: name.into(),
            node,
        });
    }
    Spi::run_with_args(
        "INSERT INTO synclink.peer (peer_name, server_name, node_name, conninfo) VALUES ($1, $2, $3, $4)",
        &[name.into(), server.as_str().into(), node.as_str().into(), shown.as_str().into()],
    )
    .unwrap();
    Spi::run_with_args(
        "INSERT INTO synclink.peer_state (peer_name) VALUES ($1)",
        &[name.into()],
    )
    .unwrap();
    Ok(node)
}

/// Register another database as a peer. Returns the peer's node name.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_add_peer(name: Option<&str>, conninfo: Option<&str>) -> String {
    let hide = HideStatementFromLog::new();
    let name = crate::pg::args::required(name, "sync_add_peer", "name");
    let conninfo = crate::pg::args::required(conninfo, "sync_add_peer", "conninfo");
    let node = add(name, conninfo).or_raise();
    hide.restore();
    node
}

pub fn drop_objects(peer: &Peer) {
    crate::control::removal::removing(|| drop_peer_objects(peer))
}

fn drop_peer_objects(peer: &Peer) {
    Spi::run(&format!(
        "DROP SERVER IF EXISTS {} CASCADE",
        ident(&peer.server)
    ))
    .unwrap();
    Spi::run(&format!(
        "DROP SEQUENCE IF EXISTS {}",
        crate::data::queue::retry_register(&peer.name)
    ))
    .unwrap();
    Spi::run_with_args(
        "DELETE FROM synclink.peer WHERE peer_name = $1",
        &[peer.name.as_str().into()],
    )
    .unwrap();
}

fn drop(name: &str, cascade: bool) -> Result<bool, PeerError> {
    let peer = find(name).ok_or_else(|| PeerError::Unknown(name.into()))?;
    let links = crate::pg::spi::column::<i32>(
        "SELECT link_id FROM synclink.link WHERE peer_name = $1 ORDER BY link_id",
        &[name.into()],
    );
    if !links.is_empty() && !cascade {
        return Err(PeerError::HasLinks {
            peer: name.into(),
            count: links.len() as i64,
        });
    }
    let count = crate::data::queue::queued(name);
    if count > 0 {
        return Err(PeerError::HasQueued {
            peer: name.into(),
            count,
        });
    }
    for id in links {
        crate::catalog::link::unlink_by_id(id, true, false);
    }
    drop_objects(&peer);
    Ok(true)
}

/// Forget a peer: its server, user mapping and foreign tables. With cascade, unlink its tables.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_drop_peer(name: Option<&str>, cascade: default!(Option<bool>, false)) -> bool {
    const F: &str = "sync_drop_peer";
    let name = crate::pg::args::required(name, F, "name");
    drop(name, crate::pg::args::required(cascade, F, "cascade")).or_raise()
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
}
