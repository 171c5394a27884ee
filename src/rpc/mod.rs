//! The peer-request protocol: how one node asks another to do its half of something (link or
//! unlink a table, compare or repair rows, settle a conflict, share a sequence).
//!
//! The client is [`call`]: it inserts the request into the peer's `synclink.request` through
//! the peer's foreign table and reads the reply back through RETURNING, all inside the caller's
//! transaction, so the peer's half commits or rolls back with the caller's. The server side is
//! the trigger on `synclink.request`: it parses the row into a [`Request`] here and hands it to
//! the module that owns the action (`api::serve`), which keeps this folder below every
//! feature. Adding a request: a body in [`messages`] with its [`Body::ACTION`], a variant of
//! [`Request`], and the handler's arm in `api::serve`.
//!
//! Uses the catalog (peers) and [`crate::pg`].

pub mod messages;

use crate::catalog::peer::{self, Peer, PeerError};
use crate::pg::error::SqlError;
use pgrx::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use messages::*;

#[derive(thiserror::Error, Debug)]
pub enum RpcError {
    #[error("unknown request {} from a peer", crate::pg::args::shown(.0))]
    UnknownAction(String),
    #[error("malformed {} request from a peer", crate::pg::args::shown(.0))]
    BadRequest(String),
    #[error("malformed reply from peer \"{0}\"")]
    BadReply(String),
    #[error("peer \"{0}\" cannot take rows in bulk")]
    NoPayload(String),
    #[error("this node may not read rows back from peer \"{0}\"")]
    NoRowsBack(String),
}

impl SqlError for RpcError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            RpcError::NoRowsBack(_) => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            _ => PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            RpcError::UnknownAction(_) => {
                "The node that received the request runs an older synclink than the node that sent it: update the older one (ALTER EXTENSION synclink UPDATE).".into()
            }
            RpcError::NoRowsBack(_) => {
                "On the peer, let the role this node connects as read them: GRANT SELECT (reply, payload) ON synclink.request TO that role.".into()
            }
            RpcError::NoPayload(_) => {
                "The peer runs a synclink older than 0.7.0: update it (ALTER EXTENSION synclink UPDATE) and run sync_clone again.".into()
            }
            RpcError::BadRequest(_) | RpcError::BadReply(_) => {
                "The two nodes run different synclink versions: update the older one (ALTER EXTENSION synclink UPDATE).".into()
            }
        })
    }
}

crate::pg::error::reported_as_sql_error!(RpcError);

/// A request body: what travels in `synclink.request.body` under its action name.
pub trait Body: Serialize {
    const ACTION: &'static str;
}

/// Every request a node understands, as the peer's trigger receives it.
#[derive(serde::Deserialize)]
#[serde(tag = "action", content = "body", rename_all = "snake_case")]
pub enum Request {
    Link(LinkRequest),
    Unlink(UnlinkRequest),
    Diff(DiffRequest),
    Resolve(ResolveRequest),
    ShareSequence(ShareRequest),
    UnshareSequence(UnshareRequest),
    CreateTable(CreateRequest),
    CloneObjects(CloneObjectsRequest),
    CloneRows(CloneRowsRequest),
    CopyRows(CopyRowsRequest),
    ClonePlan(ClonePlanRequest),
    CloneChoose(CloneChooseRequest),
    CloneRead(CloneReadRequest),
}

const ACTIONS: [&str; 13] = [
    LinkRequest::ACTION,
    UnlinkRequest::ACTION,
    DiffRequest::ACTION,
    ResolveRequest::ACTION,
    ShareRequest::ACTION,
    UnshareRequest::ACTION,
    CreateRequest::ACTION,
    CloneObjectsRequest::ACTION,
    CloneRowsRequest::ACTION,
    CopyRowsRequest::ACTION,
    ClonePlanRequest::ACTION,
    CloneChooseRequest::ACTION,
    CloneReadRequest::ACTION,
];

impl Request {
    /// The request a `synclink.request` row carries: an action this node does not know is
    /// refused as such (the sender is newer), a body that does not fit as malformed.
    pub fn parse(action: &str, body: serde_json::Value) -> Result<Request, RpcError> {
        if !ACTIONS.contains(&action) {
            return Err(RpcError::UnknownAction(action.into()));
        }
        serde_json::from_value(serde_json::json!({ "action": action, "body": body }))
            .map_err(|_| RpcError::BadRequest(action.into()))
    }
}

/// Ask the peer to act on its half. A connection failure becomes a clear error; an error the
/// peer raises (its table is missing, its columns differ…) reaches the user unchanged
/// ([`PeerError::Failed`]).
/// The peer's handler may answer; its reply comes back through RETURNING (NULL when it has
/// nothing to say).
pub fn call<B: Body>(peer: &Peer, body: &B) -> Result<serde_json::Value, PeerError> {
    match send(peer, "request", body, None, false)? {
        Ok((reply, _)) => Ok(reply),
        Err(_) => Err(peer::malformed(&peer.name)),
    }
}

/// [`call`] with rows in bulk beside the body (`payload`, which the peer reads and never
/// keeps), reading the reply as `R`, and (`rows_back`) the rows in bulk that come back beside
/// it — which the role this node connects as may read only with `SELECT (payload)` on the
/// peer's synclink.request. A peer older than the payload says so.
pub fn call_bulk<B: Body, R: DeserializeOwned>(
    peer: &Peer,
    body: &B,
    payload: Option<&[u8]>,
    rows_back: bool,
) -> crate::pg::error::Result<(R, Option<Vec<u8>>)> {
    let sent = match send(peer, "bulk", body, Some(payload), rows_back) {
        Ok(sent) => sent,
        Err(PeerError::Failed(f))
            if f.sqlstate() == PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN
                && f.to_string().contains("payload") =>
        {
            return Err(RpcError::NoPayload(peer.name.clone()).into())
        }
        Err(PeerError::Failed(f))
            if rows_back
                && f.sqlstate() == PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE
                && f.to_string().contains("table request") =>
        {
            return Err(RpcError::NoRowsBack(peer.name.clone()).into())
        }
        Err(e) => return Err(e.into()),
    };
    let (reply, rows) = sent.map_err(|_| peer::malformed(&peer.name))?;
    let reply = serde_json::from_value(reply).map_err(|_| peer::malformed(&peer.name))?;
    Ok((reply, rows))
}

/// Insert `body` as a request into the peer's synclink.request through this node's foreign
/// table `table` onto it (`payload`: through one with the payload column, carrying these
/// rows), and read back the reply and (`rows_back`) the rows beside it. In a subtransaction:
/// callers that step over an unreachable peer carry on with SQL. The inner error is a reply
/// that cannot be read.
#[allow(clippy::type_complexity)]
fn send<B: Body>(
    peer: &Peer,
    table: &str,
    body: &B,
    payload: Option<Option<&[u8]>>,
    rows_back: bool,
) -> Result<Result<(serde_json::Value, Option<Vec<u8>>), pgrx::spi::SpiError>, PeerError> {
    peer.check_foreign(table)?;
    let sql = format!(
        "INSERT INTO {} (from_node, action, body{}) VALUES ($1, $2, $3{}) RETURNING reply, {}",
        peer.foreign(table),
        if payload.is_some() { ", payload" } else { "" },
        if payload.is_some() { ", $4" } else { "" },
        if rows_back {
            "payload"
        } else {
            "NULL::pg_catalog.bytea"
        }
    );
    let local = crate::catalog::node::local_name()?;
    let body = pgrx::JsonB(serde_json::to_value(body).map_err(|_| peer::malformed(&peer.name))?);
    let mut args = vec![local.as_str().into(), B::ACTION.into(), body.into()];
    if let Some(rows) = payload {
        args.push(rows.into());
    }
    match crate::pg::subxact::run(|| {
        Spi::connect_mut(|c| {
            let t = c.update(sql.as_str(), None, &args)?;
            let row = t.first();
            Ok::<_, pgrx::spi::SpiError>((
                row.get::<pgrx::JsonB>(1)?
                    .map_or(serde_json::Value::Null, |j| j.0),
                row.get::<Vec<u8>>(2)?,
            ))
        })
    }) {
        Ok(sent) => Ok(sent),
        Err(f) if f.is_connection() => Err(peer::unreachable(&peer.name, f)),
        // The subtransaction is rolled back; the peer's error goes on up as the peer raised it.
        Err(f) => Err(PeerError::Failed(f.into())),
    }
}

/// [`call`], reading the reply as `R`.
pub fn call_for<B: Body, R: DeserializeOwned>(peer: &Peer, body: &B) -> Result<R, PeerError> {
    let reply = call(peer, body)?;
    serde_json::from_value(reply).map_err(|_| peer::malformed(&peer.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_parses_to_its_own_variant() {
        let unlink = serde_json::json!({"schema": "s", "table": "t"});
        assert!(matches!(
            Request::parse(UnlinkRequest::ACTION, unlink),
            Ok(Request::Unlink(_))
        ));
        let unshare = serde_json::json!({"schema": "s", "table": "t", "column": "c", "high": 1});
        assert!(matches!(
            Request::parse(UnshareRequest::ACTION, unshare),
            Ok(Request::UnshareSequence(_))
        ));
        for action in ACTIONS {
            // Every known action gets past the action check; an empty body does not fit any.
            assert!(
                matches!(Request::parse(action, serde_json::json!({})), Err(RpcError::BadRequest(a)) if a == action),
                "{action}"
            );
        }
        assert!(matches!(
            Request::parse("clone", serde_json::json!({})),
            Err(RpcError::UnknownAction(_))
        ));
    }
}
