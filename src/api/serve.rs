//! The server side of the peer-request protocol: a request row arriving in
//! `synclink.request` is carried out by the module that owns its action.

use crate::catalog::peer::{self, PeerError};
use crate::rpc::Request;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Carry out a peer's request; called by the trigger on synclink.request. The reply (NULL for
/// requests that have nothing to say) goes back to the requester through RETURNING, and so
/// does a reply's rows in bulk (`payload`); a request's own rows in bulk come in `payload`.
#[pg_extern(schema = "synclink")]
#[search_path(pg_catalog, pg_temp)]
// pgrx reads the result columns from the return type as written, so it cannot be an alias.
#[allow(clippy::type_complexity)]
fn handle_request(
    from_node: &str,
    action: &str,
    body: pgrx::JsonB,
    payload: Option<&[u8]>,
) -> Result<
    TableIterator<
        'static,
        (
            name!(reply, Option<pgrx::JsonB>),
            name!(reply_payload, Option<Vec<u8>>),
        ),
    >,
    ErrorReport,
> {
    let from =
        peer::find_by_node(from_node)?.ok_or_else(|| PeerError::UnknownNode(from_node.into()))?;
    from.check_inbound()?;
    let reply = match Request::parse(action, body.0)? {
        Request::Link(req) => Some(json(crate::control::link::handle_link(&from, req)?)),
        Request::Unlink(req) => {
            crate::control::link::handle_unlink(&from, req)?;
            None
        }
        Request::Diff(req) => Some(crate::reconcile::diff::answer(&from, req)?),
        Request::Resolve(req) => Some(crate::reconcile::resolve::answer(&from, req)?),
        Request::ShareSequence(req) => {
            Some(json(crate::control::sequence::handle_share(&from, req)?))
        }
        Request::UnshareSequence(req) => {
            Some(json(crate::control::sequence::handle_unshare(&from, req)?))
        }
        Request::CreateTable(req) => Some(json(crate::control::create::handle(req)?)),
        Request::CloneObjects(req) => Some(json(crate::control::clone::target::make_objects(
            req.objects,
            crate::pg::privilege::session_role(),
        )?)),
        Request::CloneRows(req) => Some(json(crate::control::clone::target::take_rows(
            req,
            crate::pg::privilege::session_role(),
        )?)),
        Request::CopyRows(req) => Some(json(crate::control::clone::target::take_copy(
            req,
            payload.unwrap_or_default(),
            crate::pg::privilege::session_role(),
        )?)),
        Request::ClonePlan(req) => Some(json(crate::control::clone::ends::serve::plan(req)?)),
        Request::CloneChoose(req) => Some(json(crate::control::clone::ends::serve::choose(req)?)),
        Request::CloneRead(req) => {
            let (batch, rows) = crate::control::clone::ends::serve::read(req)?;
            return Ok(TableIterator::once((Some(pgrx::JsonB(json(batch))), rows)));
        }
    };
    Ok(TableIterator::once((reply.map(pgrx::JsonB), None)))
}

fn json<T: serde::Serialize>(reply: T) -> serde_json::Value {
    // A reply is plain numbers and strings; one that cannot be written answers NULL, which
    // the requester reports as a malformed reply.
    serde_json::to_value(reply).unwrap_or(serde_json::Value::Null)
}
