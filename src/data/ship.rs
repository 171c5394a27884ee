//! Sending a change record to the peer: one INSERT into the peer's inbox through the
//! link's foreign table, inside the writer's transaction.

use crate::data::queue::{self, Change, Flushed};
use crate::pg::error::{Result, SqlError};
use crate::pg::remote::RemoteFailure;
use crate::pg::spi::{need, Missing};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

#[derive(thiserror::Error, Debug)]
pub enum ShipError {
    #[error("could not send changes to {table} on peer \"{peer}\"")]
    PeerFailed {
        peer: String,
        table: String,
        reason: String,
    },
}

impl SqlError for ShipError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            ShipError::PeerFailed { .. } => PgSqlErrorCode::ERRCODE_FDW_ERROR,
        }
    }
    fn detail(&self) -> Option<String> {
        match self {
            ShipError::PeerFailed { reason, .. } => Some(reason.clone()),
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            ShipError::PeerFailed { .. } => "The statement was rolled back here too, so both databases still agree. The peer's error is in DETAIL and in its server log.".into(),
        })
    }
}

crate::pg::error::reported_as_sql_error!(ShipError);

/// A failure of the peer's that reaches the writer as the peer reported it (the user's own
/// cancel or statement_timeout), with its SQLSTATE, message, detail and hint.
struct AsReported(RemoteFailure);

impl std::fmt::Display for AsReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl SqlError for AsReported {
    fn sqlstate(&self) -> PgSqlErrorCode {
        self.0.sqlstate
    }
    fn hint(&self) -> Option<String> {
        self.0.hint.clone()
    }
    fn detail(&self) -> Option<String> {
        self.0.detail.clone()
    }
}

struct Route {
    peer: String,
    asynchronous: bool,
    /// The INSERT into the peer's inbox, planned once per backend; None when synclink's
    /// foreign table for it is gone (sync_status says what to do).
    insert: Option<OwnedPreparedStatement>,
    /// (anything queued for the peer?, peer known to be down?)
    situation: OwnedPreparedStatement,
    target_schema: String,
    target_table: String,
    node: String,
}

thread_local! {
    // Link ids are never reused, so an entry can only go stale by its link being dropped, and
    // then its capture trigger is gone too.
    static ROUTES: RefCell<HashMap<i32, Rc<Route>>> = RefCell::new(HashMap::new());
}

fn route(link_id: i32) -> Result<Rc<Route>> {
    if let Some(r) = ROUTES.with(|m| m.borrow().get(&link_id).cloned()) {
        return Ok(r);
    }
    let (peer, schema, table, asynchronous) = Spi::connect(|c| {
        let row = c
            .select(
                "SELECT peer_name, peer_schema, peer_table, mode = 'async' FROM synclink.link \
                 WHERE link_id = $1",
                None,
                &[link_id.into()],
            )?
            .next()
            .ok_or(Missing("link of this capture trigger"))?;
        Ok::<_, crate::pg::error::Error>((
            need::<String>(&row, 1, "peer of a link")?,
            need::<String>(&row, 2, "peer schema of a link")?,
            need::<String>(&row, 3, "peer table of a link")?,
            row.get::<bool>(4)?.unwrap_or(false),
        ))
    })?;
    let peer = crate::catalog::peer::find(&peer)?.ok_or(Missing("peer of a link"))?;
    let sql = format!(
        "INSERT INTO {} (origin, sender, target_schema, target_table, op, new_rows, old_rows, stamps) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        peer.foreign("inbox")
    );
    let text = PgOid::from(pg_sys::TEXTOID);
    let types = [
        text,
        text,
        text,
        text,
        PgOid::from(pg_sys::CHAROID),
        text,
        text,
        text,
    ];
    // A missing foreign table queues every change (the peer is reported damaged); a failed
    // look-up is an error like any other, not a reason to queue for the rest of the session.
    let usable = match peer.check_foreign("inbox") {
        Ok(()) => true,
        Err(crate::catalog::peer::PeerError::Damaged { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    let (insert, situation) = Spi::connect(|c| {
        let insert = match usable {
            true => Some(c.prepare_mut(sql.as_str(), &types)?.keep()),
            false => None,
        };
        let situation = c
            .prepare(queue::peer_situation_sql(&peer.name).as_str(), &[])?
            .keep();
        Ok::<_, pgrx::spi::SpiError>((insert, situation))
    })?;
    let r = Rc::new(Route {
        asynchronous,
        insert,
        situation,
        peer: peer.name,
        target_schema: schema,
        target_table: table,
        node: crate::catalog::node::local_name()?,
    });
    ROUTES.with(|m| m.borrow_mut().insert(link_id, r.clone()));
    Ok(r)
}

fn send(insert: &OwnedPreparedStatement, r: &Route, origin: &str, change: &Change) -> Result<()> {
    Spi::connect_mut(|c| {
        c.update(
            insert,
            None,
            &[
                origin.into(),
                r.node.as_str().into(),
                r.target_schema.as_str().into(),
                r.target_table.as_str().into(),
                change.op.into(),
                change.new_rows.into(),
                change.old_rows.into(),
                change.stamps.into(),
            ],
        )?;
        Ok(())
    })
}

/// Send one change record of a link to its peer, or queue it. Called by the generated
/// capture functions.
///
/// async, or a change being applied from another peer: always queued. sync: sent now when
/// nothing is queued for the peer; otherwise queued
/// behind the earlier changes, after trying to deliver those first when the peer may be back.
/// A peer that cannot be reached gets the change queued (the failed attempt is rolled back in
/// its subtransaction), and writers leave it alone for synclink.retry_interval.
///
/// No SET search_path here: the capture functions, its only callers, pin it already, and a
/// second GUC save and restore per statement is measurable on single-row writes.
#[pg_extern(schema = "synclink")]
fn ship(
    link_id: i32,
    op: i8,
    new_rows: Option<&str>,
    old_rows: Option<&str>,
    stamps: Option<&str>,
) -> Result<(), ErrorReport> {
    Ok(ship_change(link_id, op, new_rows, old_rows, stamps)?)
}

fn ship_change(
    link_id: i32,
    op: i8,
    new_rows: Option<&str>,
    old_rows: Option<&str>,
    stamps: Option<&str>,
) -> Result<()> {
    let r = route(link_id)?;
    let origin = crate::data::apply::current_origin().unwrap_or_else(|| r.node.clone());
    let change = Change {
        op,
        new_rows,
        old_rows,
        stamps,
    };
    let queue = |reason: Option<&str>| queue::enqueue(&r.peer, link_id, &origin, &change, reason);
    // A change this node is applying from another peer (a hub relaying it) goes out after
    // this transaction commits, through the queue. Sent from inside the delivering
    // transaction, it would hold rows on the next node until the first writer commits, and a
    // node the change reaches by two paths (a mesh) would wait on itself.
    if r.asynchronous || crate::data::apply::current_origin().is_some() {
        return queue(None);
    }
    let Some(insert) = &r.insert else {
        return queue(Some(&format!(
            "synclink's foreign table {} is missing: see the problem column of sync_status",
            crate::catalog::peer::Peer::foreign_name(&r.peer, "inbox")
        )));
    };
    let (queued, down) = Spi::connect(|c| {
        let row = c.select(&r.situation, None, &[])?.first();
        Ok::<_, pgrx::spi::SpiError>((
            row.get::<bool>(1)?.unwrap_or(false),
            row.get::<bool>(2)?.unwrap_or(false),
        ))
    })?;
    if queued {
        if down {
            return queue(None);
        }
        let peer = crate::catalog::peer::find(&r.peer)?.ok_or(Missing("peer of a link"))?;
        match queue::flush_within(&peer, queue::writer_flush_limit(), queue::sync_timeout_ms())? {
            Flushed::Done(_) => {}
            Flushed::Partial(_) | Flushed::Busy => return queue(None),
            Flushed::Failed(_, f) if f.is_cancel() && !crate::pg::remote::deadline_passed() => {
                return Err(AsReported(f).into())
            }
            Flushed::Failed(..) if crate::pg::remote::deadline_passed() => {
                return queue(Some(&format!(
                    "the peer did not take the changes queued before this one within synclink.sync_timeout ({} ms)",
                    queue::sync_timeout_ms()
                )))
            }
            Flushed::Failed(_, f) => return queue(Some(&f.stored_summary())),
        }
    } else if down {
        return queue(None);
    }
    let bound = queue::sync_timeout_ms();
    match crate::pg::subxact::run(|| {
        crate::pg::remote::within(bound, || send(insert, &r, &origin, &change))
    }) {
        Ok(Ok(())) => Ok(()),
        // The INSERT did not run (SPI refused it without an ERROR), so the released
        // subtransaction holds nothing; the error aborts the writer's statement.
        Ok(Err(e)) => Err(e),
        Err(f) if f.is_connection() => {
            queue::mark_down(&r.peer)?;
            queue(Some(&f.stored_summary()))
        }
        // Never waited on for longer than the bound, never lost: queued, and writers leave
        // the peer alone for synclink.retry_interval (it may be a lock held there for long).
        Err(f) if f.is_cancel() && crate::pg::remote::deadline_passed() => {
            queue::mark_down(&r.peer)?;
            queue(Some(&format!(
                "the peer did not take the change within synclink.sync_timeout ({bound} ms)"
            )))
        }
        Err(f) if f.is_contention() => {
            if f.sqlstate == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE {
                queue::mark_down(&r.peer)?;
            }
            queue(Some(&f.stored_summary()))
        }
        // synclink's foreign table dropped under a live session, or the peer's inbox gone:
        // the change cannot go now, and is kept.
        Err(f) if f.is_undefined_table() => queue(Some(&f.stored_summary())),
        // The user's own cancel or statement_timeout: as PostgreSQL reports it.
        Err(f) if f.is_cancel() => Err(AsReported(f).into()),
        Err(f) => Err(ShipError::PeerFailed {
            peer: r.peer.clone(),
            table: format!("{}.{}", r.target_schema, r.target_table),
            reason: f.summary(),
        }
        .into()),
    }
}
