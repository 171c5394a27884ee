//! Sending a change record to the peer: one INSERT into the peer's inbox through the
//! link's foreign table, inside the writer's transaction.

use crate::data::queue::{self, Change, Flushed};
use crate::pg::error::{raise, OrRaise, SqlError};
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

fn route(link_id: i32) -> Rc<Route> {
    if let Some(r) = ROUTES.with(|m| m.borrow().get(&link_id).cloned()) {
        return r;
    }
    let (peer, schema, table, asynchronous) = Spi::connect(|c| {
        let row = c
            .select(
                "SELECT peer_name, peer_schema, peer_table, mode = 'async' FROM synclink.link \
                 WHERE link_id = $1",
                None,
                &[link_id.into()],
            )
            .unwrap()
            .first();
        (
            row.get::<String>(1)
                .unwrap()
                .expect("capture trigger of a removed link"),
            row.get::<String>(2).unwrap().unwrap(),
            row.get::<String>(3).unwrap().unwrap(),
            row.get::<bool>(4).unwrap().unwrap_or(false),
        )
    });
    let peer = crate::catalog::peer::find(&peer).or_raise().unwrap();
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
    let usable = peer.check_foreign("inbox").is_ok();
    let (insert, situation) = Spi::connect(|c| {
        (
            usable.then(|| c.prepare_mut(sql.as_str(), &types).unwrap().keep()),
            c.prepare(queue::peer_situation_sql(&peer.name).as_str(), &[])
                .unwrap()
                .keep(),
        )
    });
    let r = Rc::new(Route {
        asynchronous,
        insert,
        situation,
        peer: peer.name,
        target_schema: schema,
        target_table: table,
        node: crate::catalog::node::local_name().or_raise(),
    });
    ROUTES.with(|m| m.borrow_mut().insert(link_id, r.clone()));
    r
}

fn send(insert: &OwnedPreparedStatement, r: &Route, origin: &str, change: &Change) {
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
        )
        .unwrap();
    })
}

/// Send one change record of a link to its peer, or queue it. Called by the generated
/// capture functions.
///
/// async: always queued. sync: sent now when nothing is queued for the peer; otherwise queued
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
) {
    let r = route(link_id);
    let origin = crate::data::apply::current_origin().unwrap_or_else(|| r.node.clone());
    let change = Change {
        op,
        new_rows,
        old_rows,
        stamps,
    };
    let queue = |reason: Option<&str>| queue::enqueue(&r.peer, link_id, &origin, &change, reason);
    if r.asynchronous {
        return queue(None);
    }
    let Some(insert) = &r.insert else {
        return queue(Some(&format!(
            "synclink's foreign table {} is missing: see the problem column of sync_status",
            crate::catalog::peer::Peer::foreign_name(&r.peer, "inbox")
        )));
    };
    let (queued, down) = Spi::connect(|c| {
        let row = c.select(&r.situation, None, &[]).unwrap().first();
        (
            row.get::<bool>(1).unwrap().unwrap_or(false),
            row.get::<bool>(2).unwrap().unwrap_or(false),
        )
    });
    if queued {
        if down {
            return queue(None);
        }
        let peer = crate::catalog::peer::find(&r.peer)
            .or_raise()
            .expect("route of an existing peer");
        match queue::flush_within(&peer, queue::writer_flush_limit(), queue::sync_timeout_ms()) {
            Flushed::Done(_) => {}
            Flushed::Partial(_) | Flushed::Busy => return queue(None),
            Flushed::Failed(_, f) if f.is_cancel() && !crate::pg::remote::deadline_passed() => {
                crate::pg::remote::reraise(f)
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
        Ok(()) => {}
        Err(f) if f.is_connection() => {
            queue::mark_down(&r.peer);
            queue(Some(&f.stored_summary()));
        }
        // Never waited on for longer than the bound, never lost: queued, and writers leave
        // the peer alone for synclink.retry_interval (it may be a lock held there for long).
        Err(f) if f.is_cancel() && crate::pg::remote::deadline_passed() => {
            queue::mark_down(&r.peer);
            queue(Some(&format!(
                "the peer did not take the change within synclink.sync_timeout ({bound} ms)"
            )));
        }
        Err(f) if f.is_contention() => {
            if f.sqlstate == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE {
                queue::mark_down(&r.peer);
            }
            queue(Some(&f.stored_summary()));
        }
        // synclink's foreign table dropped under a live session, or the peer's inbox gone:
        // the change cannot go now, and is kept.
        Err(f) if f.is_undefined_table() => queue(Some(&f.stored_summary())),
        // The user's own cancel or statement_timeout: as PostgreSQL reports it.
        Err(f) if f.is_cancel() => crate::pg::remote::reraise(f),
        Err(f) => raise(ShipError::PeerFailed {
            peer: r.peer.clone(),
            table: format!("{}.{}", r.target_schema, r.target_table),
            reason: f.summary(),
        }),
    }
}
