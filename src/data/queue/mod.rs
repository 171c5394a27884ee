//! The durable outbox: changes that could not, or should not, go to the peer at once.
//!
//! Order is kept per peer: a sync-mode change goes straight to the peer only while nothing is
//! queued for it, otherwise it queues behind what is there. Flushing delivers queued records
//! in seq order, one flusher per peer at a time (an advisory lock), and deletes them in the
//! transaction that delivered them. The peer commits first, so a record can arrive twice; the
//! peer recognises it by (sender, seq).
//!
//! Whether a peer is known to be down is kept in a per-peer sequence used as a register:
//! setval is not transactional and takes no row lock, so a writer that finds the peer down
//! tells every other writer at once without waiting for anyone's commit.

pub mod horizon;

use crate::catalog::peer::{self, Peer};
use crate::pg::error::{warning, Result, SqlError};
use crate::pg::remote::RemoteFailure;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgOid;
use std::cell::RefCell;

thread_local! {
    static ENQUEUE: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

static RETRY_INTERVAL_MS: pgrx::GucSetting<i32> = pgrx::GucSetting::<i32>::new(5000);
static WRITER_FLUSH_LIMIT: pgrx::GucSetting<i32> = pgrx::GucSetting::<i32>::new(100);
static BACKLOG_WARNING: pgrx::GucSetting<i32> = pgrx::GucSetting::<i32>::new(100_000);
static SYNC_TIMEOUT_MS: pgrx::GucSetting<i32> = pgrx::GucSetting::<i32>::new(30_000);
static APPLY_LOCK_TIMEOUT_MS: pgrx::GucSetting<i32> = pgrx::GucSetting::<i32>::new(1000);

const BACKLOG_CHECK_EVERY: i64 = 1000;

pub fn init_gucs() {
    pgrx::GucRegistry::define_int_guc(
        c"synclink.retry_interval",
        c"How long writers leave a peer alone after it could not be reached.",
        c"Changes queue meanwhile; the background worker and sync_flush() keep trying.",
        &RETRY_INTERVAL_MS,
        0,
        3_600_000,
        pgrx::GucContext::Userset,
        pgrx::GucFlags::UNIT_MS,
    );
    pgrx::GucRegistry::define_int_guc(
        c"synclink.writer_flush_limit",
        c"Queued changes a sync-mode write delivers ahead of its own when the peer is back.",
        c"Without the background worker, writes drain the queue this many changes at a time.",
        &WRITER_FLUSH_LIMIT,
        0,
        1_000_000,
        pgrx::GucContext::Userset,
        pgrx::GucFlags::default(),
    );
    pgrx::GucRegistry::define_int_guc(
        c"synclink.sync_timeout",
        c"Longest a sync-mode write waits for the peer to take a change; then it is queued.",
        c"0: no limit. PostgreSQL sees the locks of one server only: two writers on two nodes \
          waiting for each other's rows would otherwise wait for ever.",
        &SYNC_TIMEOUT_MS,
        0,
        3_600_000,
        pgrx::GucContext::Userset,
        pgrx::GucFlags::UNIT_MS,
    );
    pgrx::GucRegistry::define_int_guc(
        c"synclink.apply_lock_timeout",
        c"Longest a change arriving from a peer waits for a lock here; then the peer queues it.",
        c"Set on the receiving node (for the role peers connect as, say). 0: no limit.",
        &APPLY_LOCK_TIMEOUT_MS,
        0,
        3_600_000,
        pgrx::GucContext::Userset,
        pgrx::GucFlags::UNIT_MS,
    );
    pgrx::GucRegistry::define_int_guc(
        c"synclink.backlog_warning",
        c"Queued changes for one peer above which queueing raises a WARNING.",
        c"Checked about every 1000th queued change; 0 turns the warning off.",
        &BACKLOG_WARNING,
        0,
        i32::MAX,
        pgrx::GucContext::Userset,
        pgrx::GucFlags::default(),
    );
}

#[derive(thiserror::Error, Debug)]
pub enum QueueError {
    #[error("unknown mode {}", crate::pg::args::shown(.0))]
    BadMode(String),
}

impl SqlError for QueueError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE
    }
    fn hint(&self) -> Option<String> {
        Some("Use mode => 'sync' (ship inside the writer's transaction, queue when the peer is down) or mode => 'async' (always queue; the background worker delivers).".into())
    }
}

crate::pg::error::reported_as_sql_error!(QueueError);

pub fn check_mode(mode: &str) -> Result<(), QueueError> {
    match mode {
        "sync" | "async" => Ok(()),
        other => Err(QueueError::BadMode(other.into())),
    }
}

pub fn writer_flush_limit() -> i64 {
    WRITER_FLUSH_LIMIT.get() as i64
}

pub fn sync_timeout_ms() -> i32 {
    SYNC_TIMEOUT_MS.get()
}

/// Bound this transaction's lock waits by synclink.apply_lock_timeout: it applies a peer's
/// changes, and a writer on the peer may be waiting for them while holding the very rows a
/// local writer here waits for (a distributed deadlock PostgreSQL cannot see). The peer's
/// session is synclink's own, so the setting lasts to the end of its transaction — or of the
/// savepoint it was made in, which the sender rolls back when a delivery fails: so it is
/// compared with the setting in force each time.
pub fn bound_lock_waits() {
    let ms = APPLY_LOCK_TIMEOUT_MS.get();
    // SAFETY: LockTimeout is the lock_timeout setting's variable, read only.
    if ms <= 0 || unsafe { pg_sys::LockTimeout } == ms {
        return;
    }
    // A number and "ms" hold no NUL byte.
    let value = std::ffi::CString::new(format!("{ms}ms")).expect("no NUL in a number");
    crate::pg::plan::set(
        c"lock_timeout",
        &value,
        crate::pg::plan::Lasting::Transaction,
    );
}

pub fn retry_register(peer: &str) -> String {
    crate::pg::sql::qualified("synclink", &format!("{peer}_retry_at"))
}

/// The register holds epoch milliseconds, so it is compared with, and set from, this.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// SQL that is true while writers should not try the peer (it failed less than
/// retry_interval ago).
fn down_sql(peer: &str) -> String {
    format!(
        "(SELECT last_value FROM {}) > {NOW_MS}",
        retry_register(peer)
    )
}

/// What a sync-mode writer needs to know before trying the peer, in one query: is anything
/// queued for it (in its queue, or in a record for several peers not yet handed on), and is it
/// inside its retry interval after a failure.
pub fn peer_situation_sql(peer: &str) -> String {
    let peer_literal = crate::pg::sql::literal(peer);
    let fanout = if fanout_exists() {
        format!(" OR EXISTS (SELECT 1 {})", fanout_for(&peer_literal))
    } else {
        String::new()
    };
    format!(
        "SELECT EXISTS (SELECT 1 FROM synclink.outbox WHERE peer_name = {peer_literal}){fanout}, {}",
        down_sql(peer)
    )
}

/// The order in which synclink's queue tables are locked wherever more than one is: delivery
/// reads a peer, then its queue, the records for several peers, the links. DROP EXTENSION
/// takes them in this order before it drops anything (control/teardown.rs).
pub const LOCK_ORDER: &str = "synclink.peer, synclink.outbox, synclink.fanout, synclink.link";

/// The records for several peers that go to the peer `peer` (an SQL expression) names, as a
/// FROM … WHERE clause with `f` for synclink.fanout.
fn fanout_for(peer: &str) -> String {
    format!(
        "FROM synclink.fanout f JOIN synclink.link l ON l.link_id = ANY (f.link_ids) \
         WHERE l.peer_name = {peer}"
    )
}

/// Whether this database's catalog has synclink.fanout (a catalog of 0.4.0, before ALTER
/// EXTENSION synclink UPDATE, has not; nor has a database without synclink).
pub fn fanout_exists() -> bool {
    // SAFETY: a syscache lookup by a NUL-terminated name; missing_ok: a database where
    // synclink was dropped meanwhile (the worker may look before it notices) has no schema.
    let schema = unsafe { pg_sys::get_namespace_oid(c"synclink".as_ptr(), true) };
    schema != pg_sys::InvalidOid && synclink_relation(c"fanout") != pg_sys::InvalidOid
}

/// Hand on the records for several peers (synclink.fanout) as a record per peer in the outbox,
/// each with its seq, so that every peer's queue holds them in order. Rows another session is
/// handing on are skipped (delivery to their peers stops short of them until it commits);
/// a link gone since is left out. At most `limit` records, oldest first (None: all). Returns
/// how many records were handed on.
pub fn hand_on(limit: Option<i64>) -> Result<i64> {
    // Nothing to hand on (or a catalog not updated to have the table yet): nothing written,
    // so no statement trigger wakes the worker for nothing.
    if !fanout_exists() {
        return Ok(0);
    }
    let waiting = crate::pg::spi::prepared_read(
        "SELECT EXISTS (SELECT 1 FROM synclink.fanout)",
        &[],
        &[],
        |t| t.first().get_one::<bool>(),
    )??;
    if !waiting.unwrap_or(false) {
        return Ok(0);
    }
    // The tables are locked in one order everywhere (crate::data::queue::LOCK_ORDER), so
    // that handing on beside a DROP EXTENSION never deadlocks.
    crate::pg::spi::prepared_read(
        "SELECT FROM synclink.outbox, synclink.fanout, synclink.link LIMIT 0",
        &[],
        &[],
        |_| (),
    )?;
    let moved = crate::pg::spi::prepared(
        "WITH f AS (\n\
         \x20   DELETE FROM synclink.fanout f\n\
         \x20    WHERE f.seq IN (SELECT seq FROM synclink.fanout ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED)\n\
         \x20   RETURNING f.*\n\
         ), moved AS (\n\
         \x20   INSERT INTO synclink.outbox (seq, peer_name, link_id, origin, op, new_rows, old_rows, stamps, queued_at)\n\
         \x20   SELECT f.seq, l.peer_name, l.link_id, f.origin, f.op, f.new_rows, f.old_rows, f.stamps, f.queued_at\n\
         \x20     FROM f JOIN synclink.link l ON l.link_id = ANY (f.link_ids)\n\
         \x20    ORDER BY f.seq\n\
         )\n\
         SELECT count(*) FROM f",
        &[PgOid::from(pg_sys::INT8OID)],
        &[limit.into()],
        |t| t.first().get_one::<i64>(),
    )??;
    Ok(moved.unwrap_or(0))
}

pub fn known_down(peer: &str) -> Result<bool> {
    Ok(Spi::get_one::<bool>(&format!("SELECT {}", down_sql(peer)))?.unwrap_or(false))
}

pub fn mark_down(peer: &str) -> Result<()> {
    Spi::run_with_args(
        &format!(
            "SELECT setval({}, {NOW_MS} + $1)",
            crate::pg::sql::literal(&retry_register(peer))
        ),
        &[(RETRY_INTERVAL_MS.get() as i64).into()],
    )?;
    Ok(())
}

/// Clear the register, if it is set: every delivery comes here, and a setval is written
/// to the WAL even when it changes nothing.
fn mark_up(peer: &str) -> Result<()> {
    let register = retry_register(peer);
    crate::pg::spi::prepared(
        &format!(
            "SELECT setval({}, 1, false) FROM {register} WHERE last_value <> 1 OR is_called",
            crate::pg::sql::literal(&register)
        ),
        &[],
        &[],
        |_| (),
    )?;
    Ok(())
}

/// Is anything queued for `peer` above seq `after` (0: anything at all)?
fn queued_after(peer: &str, after: i64) -> Result<bool> {
    let queued = crate::pg::spi::prepared_read(
        "SELECT EXISTS (SELECT 1 FROM synclink.outbox WHERE peer_name = $1 AND seq > $2)",
        &[PgOid::from(pg_sys::TEXTOID), PgOid::from(pg_sys::INT8OID)],
        &[peer.into(), after.into()],
        |t| t.first().get_one::<bool>(),
    )??;
    Ok(queued.unwrap_or(false))
}

/// Is a record for several peers that goes to `peer` waiting to be handed on (`hand_on`)?
/// Until it is, nothing after it may go to the peer.
fn waiting_to_be_handed_on(peer: &str) -> Result<bool> {
    if !fanout_exists() {
        return Ok(false);
    }
    let waiting = crate::pg::spi::prepared_read(
        &format!("SELECT EXISTS (SELECT 1 {})", fanout_for("$1")),
        &[PgOid::from(pg_sys::TEXTOID)],
        &[peer.into()],
        |t| t.first().get_one::<bool>(),
    )??;
    Ok(waiting.unwrap_or(false))
}

/// What a flush that delivered `delivered` and found no more in the peer's queue reports: done,
/// unless a record for several peers still waits to be handed on to it (another session is
/// handing it on, or no one has yet): then not everything went, and a sync-mode write must
/// queue behind it.
fn finished(peer: &str, delivered: i64) -> Result<Flushed> {
    Ok(match (waiting_to_be_handed_on(peer)?, delivered) {
        (false, _) => Flushed::Done(delivered),
        (true, 0) => Flushed::Busy,
        (true, n) => Flushed::Partial(n),
    })
}

/// Changes queued for `peer`: in its queue, and in records for several peers not handed on.
pub fn queued(peer: &str) -> Result<i64> {
    let fanout = if fanout_exists() {
        format!(" + (SELECT count(*) {})", fanout_for("$1"))
    } else {
        String::new()
    };
    let count = Spi::get_one_with_args::<i64>(
        &format!("SELECT (SELECT count(*) FROM synclink.outbox WHERE peer_name = $1){fanout}"),
        &[peer.into()],
    )?;
    Ok(count.unwrap_or(0))
}

/// Put one change record in the outbox.
/// One change record as the capture function hands it over.
pub struct Change<'a> {
    pub op: i8,
    pub new_rows: Option<&'a str>,
    pub old_rows: Option<&'a str>,
    /// synclink.stamp[] in text form, one per row (NULL for 'T' and 'R')
    pub stamps: Option<&'a str>,
}

pub fn enqueue(
    peer: &str,
    link_id: i32,
    origin: &str,
    change: &Change,
    reason: Option<&str>,
) -> Result<()> {
    // Planned once per backend: while a peer is down, every sync-mode statement on a linked
    // table comes here. (Async capture functions insert into the outbox themselves.)
    ENQUEUE.with(|plan| {
        let mut plan = plan.borrow_mut();
        Spi::connect_mut(|c| {
            let stmt = match &mut *plan {
                Some(stmt) => stmt,
                unprepared => {
                    let text = PgOid::from(pg_sys::TEXTOID);
                    let made = c.prepare_mut(
                        "INSERT INTO synclink.outbox (peer_name, link_id, origin, op, new_rows, old_rows, stamps, reason) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        &[
                            text,
                            PgOid::from(pg_sys::INT4OID),
                            text,
                            PgOid::from(pg_sys::CHAROID),
                            text,
                            text,
                            text,
                            text,
                        ],
                    )?;
                    unprepared.insert(made.keep())
                }
            };
            c.update(
                &*stmt,
                None,
                &[
                    peer.into(),
                    link_id.into(),
                    origin.into(),
                    change.op.into(),
                    change.new_rows.into(),
                    change.old_rows.into(),
                    change.stamps.into(),
                    reason.into(),
                ],
            )?;
            Ok(())
        })
    })
}

thread_local! {
    /// Set when this backend draws an outbox seq that is a multiple of BACKLOG_CHECK_EVERY.
    static CHECK_BACKLOG: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The outbox's seq default (sql/finalize.sql): the sequence's next value, noting every
/// BACKLOG_CHECK_EVERY-th so that the statement that drew it looks at the backlog.
#[pg_extern(schema = "synclink", volatile, parallel_unsafe)]
fn next_outbox_seq() -> i64 {
    next_seq(outbox_sequence())
}

/// The outbox's seq sequence.
pub fn outbox_sequence() -> pg_sys::Oid {
    synclink_relation(c"outbox_seq_seq")
}

/// A relation of synclink's own schema, by name, from the catalog caches (InvalidOid if it
/// is not there).
pub fn synclink_relation(name: &std::ffi::CStr) -> pg_sys::Oid {
    // SAFETY: both lookups go through the syscache with NUL-terminated names; the schema
    // exists while the extension does (missing_ok = false raises a clean error otherwise).
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"synclink".as_ptr(), false);
        pg_sys::get_relname_relid(name.as_ptr(), schema)
    }
}

/// The next outbox seq from `sequence` (outbox_sequence()), as the column's default draws it.
pub fn next_seq(sequence: pg_sys::Oid) -> i64 {
    let seq = crate::data::queue::horizon::drawing(|| {
        // SAFETY: nextval_oid takes the sequence's OID and returns its next value.
        unsafe { pgrx::direct_function_call::<i64>(pg_sys::nextval_oid, &[sequence.into_datum()]) }
            // nextval never returns NULL: it returns a value or raises an ERROR.
            .expect("nextval returns a value")
    });
    if seq % BACKLOG_CHECK_EVERY == 0 {
        CHECK_BACKLOG.with(|c| c.set(true));
    }
    seq
}

/// After every statement that queued changes (the outbox's statement trigger): wake the
/// delivery worker at commit, and now and then say so when a queue grows past
/// synclink.backlog_warning. Counting the queue on every change would cost more than
/// queueing it, so the statement that drew every BACKLOG_CHECK_EVERY-th seq looks, whichever
/// session it runs in: about once per thousand changes, however short-lived the sessions.
pub fn after_queueing() -> Result<()> {
    crate::data::worker::wake::wake_at_commit();
    let due = CHECK_BACKLOG.with(|c| c.replace(false));
    let limit = BACKLOG_WARNING.get() as i64;
    if limit <= 0 || !due {
        return Ok(());
    }
    // Whoever queued the change, the count runs with the search path pinned: the statement
    // that drew the seq may run as a link's owner on an application role's behalf.
    for queue in crate::pg::privilege::pinned(|| over_backlog(limit))? {
        if queue == SHARED {
            warning(
                &format!(
                    "more than {limit} changes for several peers wait to be handed on to each"
                ),
                "The delivery worker hands them on: check that synclink is in \
                 shared_preload_libraries and its worker runs, or call sync_flush(). \
                 synclink.backlog_warning sets this threshold.",
            );
            continue;
        }
        warning(
            &format!("more than {limit} changes are queued for peer \"{queue}\""),
            "Check sync_status for the peer's last error; the queue drains once it is reachable. \
             synclink.backlog_warning sets this threshold.",
        );
    }
    Ok(())
}

/// How [`over_backlog`] names synclink.fanout, the records not yet handed on to each peer's
/// queue: no peer name has a space.
const SHARED: &str = "several peers";

thread_local! {
    /// Per peer: the oldest seq queued when its queue was last counted over a limit, that
    /// limit, and when. Delivery takes a peer's records oldest first, so while that seq is
    /// still the oldest nothing has left the queue and it is still over; it is counted again
    /// for a higher limit, and at the latest after BACKLOG_RECOUNT, for the rare queue that
    /// shrank otherwise (records of one link discarded by sync_unlink_table).
    static OVER_SINCE: RefCell<std::collections::HashMap<String, (i64, i64, std::time::Instant)>> =
        RefCell::new(std::collections::HashMap::new());
}

const BACKLOG_RECOUNT: std::time::Duration = std::time::Duration::from_secs(60);

/// The peers with more than `limit` records queued, and [`SHARED`] when synclink.fanout holds
/// more than `limit` records waiting to be handed on. A queue's seq range (two index probes)
/// bounds its count from above, so a queue that cannot be over the limit is not counted; one
/// that may be is counted up to limit + 1 records, and once found over, not again while its
/// oldest record stays (see OVER_SINCE). A long outage queues millions: counting a hundred
/// thousand of them every thousand changes slowed every writer by a tenth or more while the
/// peer was away.
fn over_backlog(limit: i64) -> Result<Vec<String>> {
    let bigint = PgOid::from(pg_sys::INT8OID);
    let candidates = crate::pg::spi::prepared_read(
        // ORDER BY … LIMIT 1 rather than min()/max(): a generic plan made while the outbox
        // was nearly empty aggregates over all of a peer's records, however many it holds later.
        "SELECT p.peer_name, q.oldest FROM synclink.peer p \
           CROSS JOIN LATERAL \
                (SELECT (SELECT o.seq FROM synclink.outbox o \
                          WHERE o.peer_name OPERATOR(pg_catalog.=) p.peer_name \
                          ORDER BY o.seq LIMIT 1) AS oldest, \
                        (SELECT o.seq FROM synclink.outbox o \
                          WHERE o.peer_name OPERATOR(pg_catalog.=) p.peer_name \
                          ORDER BY o.seq DESC LIMIT 1) AS newest) q \
          WHERE q.newest OPERATOR(pg_catalog.-) q.oldest OPERATOR(pg_catalog.>=) $1",
        &[bigint],
        &[limit.into()],
        |t| {
            let mut candidates = Vec::new();
            for r in t {
                if let (Some(peer), Some(oldest)) = (r.get::<String>(1)?, r.get::<i64>(2)?) {
                    candidates.push((peer, oldest));
                }
            }
            Ok::<_, pgrx::spi::SpiError>(candidates)
        },
    )??;
    let mut candidates = candidates;
    if fanout_exists() {
        let shared = crate::pg::spi::prepared_read(
            "SELECT q.oldest FROM \
                    (SELECT (SELECT f.seq FROM synclink.fanout f ORDER BY f.seq LIMIT 1) AS oldest, \
                            (SELECT f.seq FROM synclink.fanout f ORDER BY f.seq DESC LIMIT 1) AS newest) q \
              WHERE q.newest OPERATOR(pg_catalog.-) q.oldest OPERATOR(pg_catalog.>=) $1",
            &[bigint],
            &[limit.into()],
            // no row while the shared queue is within the limit
            |mut t| t.next().map(|r| r.get::<i64>(1)).transpose(),
        )??;
        if let Some(Some(oldest)) = shared {
            candidates.push((SHARED.to_string(), oldest));
        }
    }
    OVER_SINCE.with(|memo| {
        let mut memo = memo.borrow_mut();
        memo.retain(|peer, _| candidates.iter().any(|(p, _)| p == peer));
        let mut over_limit = Vec::new();
        for (peer, oldest) in candidates {
            if memo.get(&peer).is_some_and(|(o, l, at)| {
                *o == oldest && *l >= limit && at.elapsed() < BACKLOG_RECOUNT
            }) {
                over_limit.push(peer);
                continue;
            }
            let count = if peer == SHARED {
                crate::pg::spi::prepared_read(
                    "SELECT pg_catalog.count(*) FROM (SELECT FROM synclink.fanout LIMIT $1) q",
                    &[bigint],
                    &[(limit + 1).into()],
                    |t| t.first().get_one::<i64>(),
                )??
            } else {
                crate::pg::spi::prepared_read(
                    "SELECT pg_catalog.count(*) FROM (SELECT FROM synclink.outbox \
                      WHERE peer_name OPERATOR(pg_catalog.=) $1 LIMIT $2) q",
                    &[PgOid::from(pg_sys::TEXTOID), bigint],
                    &[peer.as_str().into(), (limit + 1).into()],
                    |t| t.first().get_one::<i64>(),
                )??
            };
            if count.unwrap_or(0) > limit {
                memo.insert(peer.clone(), (oldest, limit, std::time::Instant::now()));
                over_limit.push(peer);
            } else {
                memo.remove(&peer);
            }
        }
        Ok(over_limit)
    })
}

pub enum Flushed {
    /// Records delivered; the queue is empty now (as far as this transaction can see).
    Done(i64),
    /// Records delivered before the limit was reached; more wait.
    Partial(i64),
    /// Someone else is flushing this peer right now.
    Busy,
    /// The peer could not take them; nothing was delivered in the failed batch.
    Failed(i64, RemoteFailure),
}

fn lock_key(peer: &str) -> String {
    format!("synclink flush {peer}")
}

/// Deliver up to `limit` queued records (0: all) to `peer`, in order, in batches.
pub fn flush(peer: &Peer, limit: i64) -> Result<Flushed> {
    flush_after(peer, limit, &mut 0, 0)
}

/// Like `flush`, each batch given at most `bound_ms` (crate::pg::remote::within): for a writer,
/// which must not wait on the peer without a bound.
pub fn flush_within(peer: &Peer, limit: i64, bound_ms: i32) -> Result<Flushed> {
    // A writer hands on what it finds for several peers, as the worker does (a batch at a
    // time): without the worker, nothing else would before sync_flush().
    hand_on(Some(HAND_ON_BATCH))?;
    flush_after(peer, limit, &mut 0, bound_ms)
}

/// Records handed on from synclink.fanout per transaction by the worker and by a writer: the
/// rows stay locked until it commits, and each peer's delivery waits behind them.
pub const HAND_ON_BATCH: i64 = 1000;

/// Records a delivery takes per statement (postgres_fdw sends them 100 to a round trip).
const BATCH: i64 = 1000;

/// Bytes of records a delivery takes per statement, the first record whatever its size:
/// a hundred records of the largest kind (capture::CHUNK_BYTES) in one protocol message
/// would pass PostgreSQL's 1 GB limit.
const BATCH_BYTES: i64 = 64 << 20;

/// Like `flush`, for records above seq `after` only, and moves `after` to the last seq
/// delivered. Never past a record for several peers that goes to this one and is not handed
/// on yet (`hand_on`): it takes its place in this queue with its own seq. The first batch of a transaction starting from 0 begins at the lowest seq
/// visible now: seqs commit out of order, so a change may become visible after a higher
/// one. The two are changes to different rows (a change to the same row waits for the
/// earlier one's row lock, so its seq is drawn after that one commits), so delivering the
/// late one later keeps every row's order. Later batches continue where the last one ended
/// instead of stepping again over the index entries of the records just deleted, which stay
/// visible to this transaction until it commits.
///
/// An `Err` may come after a batch was deleted here and sent (its statement ran, its answer
/// could not be read): the caller must not commit, only let the error abort the transaction,
/// which takes the batch back here and, through postgres_fdw, on the peer.
pub fn flush_after(peer: &Peer, limit: i64, after: &mut i64, bound_ms: i32) -> Result<Flushed> {
    let text = PgOid::from(pg_sys::TEXTOID);
    let bigint = PgOid::from(pg_sys::INT8OID);
    // Nothing to send, nothing to lock, and no remote transaction opened for it.
    if !queued_after(&peer.name, *after)? {
        return finished(&peer.name, 0);
    }
    let locked = crate::pg::spi::prepared_read(
        "SELECT pg_try_advisory_xact_lock(hashtext($1))",
        &[text],
        &[lock_key(&peer.name).as_str().into()],
        |t| t.first().get_one::<bool>(),
    )??;
    if !locked.unwrap_or(false) {
        return Ok(Flushed::Busy);
    }
    // One statement, one snapshot: exactly the records deleted here are the ones sent, and
    // the delete is undone if the peer does not take them. A record is taken while the ones
    // before it in the batch hold less than BATCH_BYTES (octet_length reads a stored value's
    // size without fetching it).
    let fence = if fanout_exists() {
        format!(
            "\n\x20      AND seq < coalesce((SELECT min(f.seq) {}), 9223372036854775807)",
            fanout_for("$1")
        )
    } else {
        String::new()
    };
    let sql = format!(
        "WITH candidates AS (\n\
         \x20   SELECT seq, sum(b.bytes) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - b.bytes AS before\n\
         \x20     FROM synclink.outbox\n\
         \x20    CROSS JOIN LATERAL (SELECT coalesce(octet_length(new_rows), 0) + coalesce(octet_length(old_rows), 0)\n\
         \x20                               + coalesce(octet_length(stamps), 0)) b(bytes)\n\
         \x20    WHERE peer_name = $1 AND seq > $2{fence}\n\
         \x20    ORDER BY seq LIMIT $3\n\
         ), batch AS (\n\
         \x20   DELETE FROM synclink.outbox o\n\
         \x20    WHERE o.peer_name = $1 AND o.seq > $2\n\
         \x20      AND o.seq <= (SELECT max(c.seq) FROM candidates c WHERE c.before < {BATCH_BYTES})\n\
         \x20   RETURNING o.seq, o.link_id, o.origin, o.op, o.new_rows, o.old_rows, o.stamps\n\
         ), sent AS (\n\
         \x20   INSERT INTO {inbox} (origin, sender, target_schema, target_table, op, new_rows, old_rows, stamps, seq, floor_seq)\n\
         \x20   SELECT b.origin, $4, l.peer_schema, l.peer_table, b.op, b.new_rows, b.old_rows, b.stamps, b.seq, min(b.seq) OVER ()\n\
         \x20     FROM batch b JOIN synclink.link l USING (link_id)\n\
         \x20    ORDER BY b.seq\n\
         )\n\
         SELECT count(*), max(seq), EXISTS (SELECT FROM candidates c WHERE c.before >= {BATCH_BYTES}) FROM batch",
        inbox = peer.foreign("inbox")
    );
    let node = crate::catalog::node::local_name()?;
    let mut delivered = 0i64;
    loop {
        let batch_size = if limit > 0 {
            (limit - delivered).min(BATCH)
        } else {
            BATCH
        };
        if batch_size <= 0 {
            mark_up(&peer.name)?;
            return if queued_after(&peer.name, 0)? {
                Ok(Flushed::Partial(delivered))
            } else {
                finished(&peer.name, delivered)
            };
        }
        let from = *after;
        // How far this batch may move the start of the next one (crate::data::queue::horizon): the highest
        // seq drawn is read before the seqs open transactions hold.
        let drawn = crate::pg::spi::prepared_read(
            "SELECT last_value FROM synclink.outbox_seq_seq",
            &[],
            &[],
            |t| t.first().get_one::<i64>(),
        )??
        .unwrap_or(0);
        let open = crate::data::queue::horizon::lowest_open(drawn);
        let sent = crate::pg::subxact::run(|| {
            crate::pg::remote::within(bound_ms, || {
                crate::pg::spi::prepared(
                    &sql,
                    &[text, bigint, bigint, text],
                    &[
                        peer.name.as_str().into(),
                        from.into(),
                        batch_size.into(),
                        node.as_str().into(),
                    ],
                    |t| {
                        let row = t.first();
                        Ok::<_, pgrx::spi::SpiError>((
                            row.get::<i64>(1)?.unwrap_or(0),
                            row.get::<i64>(2)?,
                            row.get::<bool>(3)?.unwrap_or(false),
                        ))
                    },
                )
                .and_then(|r| r)
            })
        });
        match sent {
            // An Err is no ERROR: the subtransaction was released with the batch deleted and
            // sent, so the error goes to the caller, which lets it abort the transaction.
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok((n, last, cut_by_size))) => {
                if let Some(last) = last {
                    delivered += n;
                    // Never past a seq an open transaction may still commit; unknown: stay.
                    *after = match open {
                        Some(open) => last.min(open - 1).max(from),
                        None => from,
                    };
                    record_delivery(&peer.name, n)?;
                }
                // A batch short of its count, and not cut by its size, took all there was.
                if n < batch_size && !cut_by_size {
                    if delivered > 0 {
                        mark_up(&peer.name)?;
                    }
                    return finished(&peer.name, delivered);
                }
            }
            Err(f) => {
                if f.is_connection() {
                    mark_down(&peer.name)?;
                }
                record_failure(&peer.name, &f.stored_summary())?;
                return Ok(Flushed::Failed(delivered, f));
            }
        }
    }
}

fn record_delivery(peer: &str, n: i64) -> Result<()> {
    crate::pg::spi::prepared(
        "INSERT INTO synclink.peer_state AS s (peer_name, delivered, last_delivered_at) \
         VALUES ($1, $2, clock_timestamp()) \
         ON CONFLICT (peer_name) DO UPDATE SET delivered = s.delivered + $2, last_delivered_at = clock_timestamp()",
        &[PgOid::from(pg_sys::TEXTOID), PgOid::from(pg_sys::INT8OID)],
        &[peer.into(), n.into()],
        |_| (),
    )?;
    Ok(())
}

pub fn record_failure(peer: &str, error: &str) -> Result<()> {
    Spi::run_with_args(
        "INSERT INTO synclink.peer_state AS s (peer_name, failed, last_error, last_error_at) \
         VALUES ($1, 1, $2, clock_timestamp()) \
         ON CONFLICT (peer_name) DO UPDATE SET failed = s.failed + 1, last_error = $2, last_error_at = clock_timestamp()",
        &[peer.into(), error.into()],
    )?;
    Ok(())
}

/// For sync_status: is the peer inside its retry interval after a failure? The register is a
/// sequence only synclink may read; this says no more than the one bit, to whoever may read
/// sync_status.
#[pg_extern(schema = "synclink", stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn peer_known_down(peer: &str) -> Result<bool, ErrorReport> {
    Ok(known_down(peer)?)
}

/// Deliver what is queued for a peer (or for every peer) now; see sync_flush.
pub fn flush_now(peer: Option<&str>) -> crate::pg::error::Result<i64> {
    // Without the worker, records for several peers are handed on here, all of them, as
    // sync_flush delivers all.
    hand_on(None)?;
    let peers: Vec<Peer> = match peer {
        Some(name) => {
            vec![peer::resolve(Some(name))?]
        }
        None => {
            let mut peers = Vec::new();
            for name in crate::pg::spi::column::<String>(
                "SELECT peer_name FROM synclink.peer ORDER BY 1",
                &[],
            )? {
                peers.extend(peer::find(&name)?);
            }
            peers
        }
    };
    let mut total = 0;
    for p in peers {
        match flush(&p, 0)? {
            Flushed::Done(n) | Flushed::Partial(n) => total += n,
            Flushed::Busy => warning(
                &format!("peer \"{}\" is being flushed by another session", p.name),
                "Its queue is being delivered, or changes for it are being handed on to its queue; \
                 try again when that session has committed.",
            ),
            Flushed::Failed(n, f) => {
                total += n;
                warning(
                    &format!(
                        "could not deliver queued changes to peer \"{}\": {}",
                        p.name,
                        f.summary()
                    ),
                    "The changes stay queued; sync_status shows how many.",
                );
            }
        }
    }
    Ok(total)
}
