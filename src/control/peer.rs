//! Registering and forgetting a peer: its foreign server, user mapping and foreign tables
//! (through which every request and change reaches it), checked by reading the peer's node
//! name before anything is kept.

use crate::catalog::peer::{find, unreachable, valid_name, Peer, PeerError};
use crate::pg::conninfo::Conninfo;
use crate::pg::error::{notice, Result};
use crate::pg::remote::catching;
use crate::pg::sql::{ident, literal};
use pgrx::prelude::*;

fn options(pairs: &[(String, String)]) -> String {
    crate::pg::sql::join(pairs, ", ", |(k, v)| format!("{} {}", ident(k), literal(v)))
}

/// The connection string holds a password and the statement that called us is logged with
/// any ERROR; keep it out of the server log while this call runs (superusers only may).
pub struct HideStatementFromLog {
    previous: Option<String>,
}

impl HideStatementFromLog {
    pub fn new() -> Result<Self> {
        let allowed = Spi::get_one::<bool>(
            "SELECT has_parameter_privilege('log_min_error_statement', 'SET')",
        )?
        .unwrap_or(false);
        if !allowed {
            return Ok(HideStatementFromLog { previous: None });
        }
        let previous = Spi::get_one::<String>("SELECT current_setting('log_min_error_statement')")?;
        Spi::run("SELECT set_config('log_min_error_statement', 'panic', true)")?;
        Ok(HideStatementFromLog { previous })
    }

    /// Called on success only: on error the transaction's abort restores the setting.
    pub fn restore(self) -> Result<()> {
        if let Some(p) = self.previous {
            Spi::run_with_args(
                "SELECT set_config('log_min_error_statement', $1, true)",
                &[p.as_str().into()],
            )?;
        }
        Ok(())
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

pub fn add(name: &str, conninfo: &str) -> Result<String> {
    if !valid_name(name) {
        return Err(PeerError::InvalidName(name.into()).into());
    }
    let parsed = Conninfo::parse(conninfo)?;
    let shown = parsed.display();
    if let Some(existing) = find(name)? {
        let same = Spi::get_one_with_args::<bool>(
            "SELECT conninfo = $2 FROM synclink.peer WHERE peer_name = $1",
            &[name.into(), shown.as_str().into()],
        )?
        .unwrap_or(false);
        if !same {
            return Err(PeerError::Exists(name.into()).into());
        }
        notice(&format!("peer \"{name}\" is already registered, skipping"));
        return Ok(existing.node_name);
    }
    let server = format!("synclink_{name}");
    let taken = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_foreign_server WHERE srvname = $1)",
        &[server.as_str().into()],
    )?
    .unwrap_or(false);
    if taken {
        return Err(PeerError::ServerTaken(server).into());
    }

    let local = crate::catalog::node::local_name()?;
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
        bulk_table(&peer),
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
        Spi::run(stmt)?;
    }
    let node = probe(&peer)?;
    if node == local {
        return Err(PeerError::SameNode {
            peer: name.into(),
            node,
        }
        .into());
    }
    Spi::run_with_args(
        "INSERT INTO synclink.peer (peer_name, server_name, node_name, conninfo) VALUES ($1, $2, $3, $4)",
        &[name.into(), server.as_str().into(), node.as_str().into(), shown.as_str().into()],
    )?;
    Spi::run_with_args(
        "INSERT INTO synclink.peer_state (peer_name) VALUES ($1)",
        &[name.into()],
    )?;
    Ok(node)
}

pub fn drop_objects(peer: &Peer) -> Result<()> {
    crate::control::removal::removing(|| drop_peer_objects(peer))
}

fn drop_peer_objects(peer: &Peer) -> Result<()> {
    Spi::run(&format!(
        "DROP SERVER IF EXISTS {} CASCADE",
        ident(&peer.server)
    ))?;
    Spi::run(&format!(
        "DROP SEQUENCE IF EXISTS {}",
        crate::data::queue::retry_register(&peer.name)
    ))?;
    Spi::run_with_args(
        "DELETE FROM synclink.peer WHERE peer_name = $1",
        &[peer.name.as_str().into()],
    )?;
    Ok(())
}

pub fn drop(name: &str, cascade: bool) -> Result<bool> {
    let peer = find(name)?.ok_or_else(|| PeerError::Unknown(name.into()))?;
    let links = crate::pg::spi::column::<i32>(
        "SELECT link_id FROM synclink.link WHERE peer_name = $1 ORDER BY link_id",
        &[name.into()],
    )?;
    if !links.is_empty() && !cascade {
        return Err(PeerError::HasLinks {
            peer: name.into(),
            count: links.len() as i64,
        }
        .into());
    }
    let count = crate::data::queue::queued(name)?;
    if count > 0 {
        return Err(PeerError::HasQueued {
            peer: name.into(),
            count,
        }
        .into());
    }
    for id in links {
        crate::control::link::unlink_by_id(id, true, false)?;
    }
    drop_objects(&peer)?;
    Ok(true)
}

/// The foreign table through which a request carries rows in bulk (sync_clone): the peer's
/// synclink.request with its payload column. Apart from `request`, whose INSERTs send every
/// column it has, so that a peer whose synclink has no payload column yet still takes every
/// other request.
fn bulk_table(peer: &Peer) -> String {
    format!(
        "CREATE FOREIGN TABLE {} (from_node text, action text, body jsonb, reply jsonb, payload bytea) \
         SERVER {} OPTIONS (schema_name 'synclink', table_name 'request')",
        peer.foreign("bulk"),
        ident(&peer.server)
    )
}

/// Make the bulk foreign table of each peer that has none (registered before synclink had
/// one): run by ALTER EXTENSION synclink UPDATE. Like the peer's other objects it is not the
/// extension's (sync_drop_peer drops it with the peer's server).
pub fn add_bulk_tables() -> Result<()> {
    let names = crate::pg::spi::column::<String>(
        "SELECT peer_name FROM synclink.peer ORDER BY peer_name",
        &[],
    )?;
    crate::pg::ffi::outside_extension_script(|| -> Result<()> {
        for name in names {
            let Some(peer) = find(&name)? else { continue };
            if peer.check_foreign("bulk").is_err() {
                Spi::run(&bulk_table(&peer))?;
            }
        }
        Ok(())
    })
}
