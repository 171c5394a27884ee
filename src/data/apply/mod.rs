//! The receiving side: a change record delivered into `synclink.inbox` is applied here,
//! set-based, as an upsert or delete by the link's key. Applying is idempotent, so a record
//! delivered twice leaves the table as once.
//!
//! While a record is applied, the backend remembers which node it came from; the capture
//! triggers that fire on the applied rows ask `applying_from()` and do not send the rows back.
//! This marker lives in backend memory and only this function sets it, so unlike a GUC it
//! cannot be set by an application role to silence replication.

pub mod checked;

use crate::pg::error::{Result, SqlError};
use crate::pg::plan::Statement;
use crate::pg::spi::{need, Missing};
use crate::pg::sql::{ident, join, qualified};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

#[derive(thiserror::Error, Debug)]
pub enum ApplyError {
    #[error("change from unknown node {}", crate::pg::args::shown(.0))]
    UnknownSender(String),
    #[error("table {schema}.{table} is not linked with node \"{node}\"")]
    NotLinked {
        schema: String,
        table: String,
        node: String,
    },
    #[error("table {schema}.{table} takes no changes from node \"{node}\": its link sends only")]
    NotReceiving {
        schema: String,
        table: String,
        node: String,
    },
    #[error("unknown change operation {}", crate::pg::args::shown(.0))]
    BadOp(String),
    #[error("change record without row versions")]
    Unstamped,
    #[error("synclink.receive() may only be called by the row trigger on synclink.inbox")]
    NotTheInbox,
    #[error("a row being applied to {table} was inserted here at the same moment")]
    ConcurrentInsert { table: String },
    #[error("column \"{0}\" of synclink.inbox does not have the type synclink gave it")]
    InboxAltered(String),
}

impl SqlError for ApplyError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            ApplyError::UnknownSender(_) | ApplyError::NotLinked { .. } => {
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT
            }
            ApplyError::NotReceiving { .. } => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            ApplyError::BadOp(_) | ApplyError::Unstamped => PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            ApplyError::NotTheInbox => PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            ApplyError::ConcurrentInsert { .. } => {
                PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
            }
            ApplyError::InboxAltered(_) => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            ApplyError::UnknownSender(_) => {
                "Register the sending database here with sync_add_peer().".into()
            }
            ApplyError::NotLinked { .. } => {
                "Link the table again with sync_link_table() on either node.".into()
            }
            ApplyError::NotReceiving { .. } => {
                "The two halves of the link disagree on its direction (this node's is push): unlink the table and link it again from either node; the changes stay queued on the sending node meanwhile.".into()
            }
            ApplyError::BadOp(_) | ApplyError::Unstamped => {
                "The sending node runs an incompatible synclink version.".into()
            }
            ApplyError::NotTheInbox => "Drop this trigger.".into(),
            ApplyError::ConcurrentInsert { .. } => {
                "Nothing was applied; the change is delivered again and then meets the new row as a conflict.".into()
            }
            ApplyError::InboxAltered(_) => {
                "synclink.inbox was changed by hand: it must keep the columns and types the extension made it with.".into()
            }
        })
    }
}

crate::pg::error::reported_as_sql_error!(ApplyError);

#[derive(Clone)]
struct Applying {
    origin: String,
    sender: String,
}

thread_local! {
    static APPLYING: RefCell<Option<Applying>> = const { RefCell::new(None) };
}

/// The node a change being applied right now started on, if any: captures during apply
/// keep that origin so a hub forwards it without sending it back.
pub fn current_origin() -> Option<String> {
    APPLYING.with(|a| a.borrow().as_ref().map(|x| x.origin.clone()))
}

/// The node the change being applied right now started on; NULL outside an apply. Async
/// capture functions record it as the origin of what they queue.
#[pg_extern(stable, parallel_restricted, schema = "synclink")]
fn applying_origin() -> Option<String> {
    current_origin()
}

/// Whether the row version whose xmin is `xid` was written by this transaction (or one of its
/// subtransactions). A change applied from a peer and passed on keeps the version the apply
/// gave its row; a row the apply changed without stamping it (a cascade, a trigger of the
/// table's owner, a TRUNCATE applied as a DELETE) is stamped anew instead, or it would travel
/// with a version the next node already holds and be skipped there.
#[pg_extern(stable, parallel_restricted, schema = "synclink")]
fn written_in_this_transaction(xid: pg_sys::TransactionId) -> bool {
    // SAFETY: reads this backend's own transaction state, which exists whenever SQL runs;
    // any xid value is a valid argument.
    unsafe { pg_sys::TransactionIdIsCurrentTransactionId(xid) }
}

/// True while synclink applies a change that came from, or started on, `node`.
#[pg_extern(stable, parallel_restricted, schema = "synclink")]
fn applying_from(node: &str) -> bool {
    is_applying_from(node)
}

pub fn is_applying_from(node: &str) -> bool {
    APPLYING.with(|a| {
        a.borrow()
            .as_ref()
            .is_some_and(|x| x.origin == node || x.sender == node)
    })
}

pub struct ApplySpec<'a> {
    pub table: String,
    pub row_type: &'a str,
    pub columns: &'a [String],
    pub key: &'a [String],
    /// Columns whose type has no equality operator (json, point, …): compared as text.
    pub text_compare: &'a [String],
}

pub fn compared(spec: &ApplySpec, alias: &str, col: &str) -> String {
    if spec.text_compare.iter().any(|c| c == col) {
        format!("{alias}.{}::text", ident(col))
    } else {
        format!("{alias}.{}", ident(col))
    }
}

/// The upsert of rows read from `source` (aliased r); a row that would not change is left
/// alone.
pub fn upsert_from(spec: &ApplySpec, source: &str) -> String {
    let cols = join(spec.columns, ", ", |c| ident(c));
    let select = join(spec.columns, ", ", |c| format!("r.{}", ident(c)));
    let keys = join(spec.key, ", ", |c| ident(c));
    let rest: Vec<String> = spec
        .columns
        .iter()
        .filter(|c| !spec.key.contains(c))
        .cloned()
        .collect();
    let action = if rest.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!(
            "DO UPDATE SET {}\n WHERE ({}) IS DISTINCT FROM ({})",
            join(&rest, ", ", |c| format!("{c} = EXCLUDED.{c}", c = ident(c))),
            join(&rest, ", ", |c| compared(spec, "t", c)),
            join(&rest, ", ", |c| compared(spec, "EXCLUDED", c)),
        )
    };
    format!(
        "INSERT INTO {table} AS t ({cols}) OVERRIDING SYSTEM VALUE\n\
         SELECT {select} FROM {source}\n\
         ON CONFLICT ({keys}) {action}",
        table = spec.table,
    )
}

/// Move rows to their new key in place: $1 holds the rows as they were, $2 as they are now,
/// pair by pair. Their other columns are updated too; columns outside the link stay.
pub fn rekey_sql(spec: &ApplySpec) -> String {
    let cols = join(spec.columns, ", ", |c| ident(c));
    format!(
        "UPDATE {table} AS t SET {set}\n\
         \x20 FROM unnest($1::{row}[]) WITH ORDINALITY AS o({cols}, \"synclink$ord\")\n\
         \x20 JOIN unnest($2::{row}[]) WITH ORDINALITY AS n({cols}, \"synclink$ord\")\n\
         \x20   ON n.\"synclink$ord\" = o.\"synclink$ord\"\n\
         WHERE {cond}",
        table = spec.table,
        row = spec.row_type,
        set = join(spec.columns, ", ", |c| format!("{c} = n.{c}", c = ident(c))),
        cond = join(spec.key, " AND ", |k| format!(
            "t.{k} = o.{k}",
            k = ident(k)
        )),
    )
}

/// A link's apply statements, prepared once per backend. Link ids are never reused, so a
/// cached entry can only go stale by its link being dropped, and then no record finds it.
struct Compiled {
    table: String,
    relid: pg_sys::Oid,
    /// the types rows and stamps are parsed to: `<row type>[]`, `synclink.stamp[]`
    rows_type: pg_sys::Oid,
    stamps_type: pg_sys::Oid,
    lock: Statement,
    /// the checked apply (crate::data::apply::checked) of an upsert or delete: of one record, and of a
    /// run of records that may change a key more than once
    upsert_one: Statement,
    delete_one: Statement,
    upsert_run: Statement,
    delete_run: Statement,
    rekey: Statement,
}

thread_local! {
    static COMPILED: RefCell<HashMap<i32, Rc<Compiled>>> = RefCell::new(HashMap::new());
}

/// Columns of a composite type whose type has no default equality operator.
fn text_compare_columns(row_type: &str) -> Result<Vec<String>> {
    let typed: Vec<(String, pg_sys::Oid)> = Spi::connect(|c| {
        c.select(
            "SELECT a.attname::text, a.atttypid FROM pg_attribute a \
             WHERE a.attrelid = (SELECT typrelid FROM pg_type WHERE oid = $1::regtype) \
               AND a.attnum > 0 AND NOT a.attisdropped",
            None,
            &[row_type.into()],
        )?
        .map(|r| {
            Ok((
                need::<String>(&r, 1, "column name of a link's row type")?,
                need::<pg_sys::Oid>(&r, 2, "column type of a link's row type")?,
            ))
        })
        .collect::<Result<_>>()
    })?;
    Ok(typed
        .into_iter()
        // The type cache knows whether '=' exists, including for arrays and domains.
        .filter(|(_, oid)| !crate::pg::ffi::has_equality(*oid))
        .map(|(n, _)| n)
        .collect())
}

/// (sender node, schema, table) of a record.
type LinkKey = (String, String, String);

thread_local! {
    // Within one transaction a delivery brings many records for the same link, and links do
    // not change under it; the answer is kept for the transaction (its local id) only.
    static LINK_IDS: RefCell<HashMap<LinkKey, (u32, i32)>> = RefCell::new(HashMap::new());
    // Per sender, the transaction that last forgot applied seqs.
    static PRUNED_IN: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

/// The link a record is for: the one between its sender and the named table here.
fn link_id(sender: &str, schema: &str, table: &str) -> Result<i32> {
    let key = (sender.to_string(), schema.to_string(), table.to_string());
    let xact = crate::pg::ffi::local_xact();
    if let Some((x, id)) = LINK_IDS.with(|m| m.borrow().get(&key).copied()) {
        if x == xact {
            return Ok(id);
        }
    }
    let (id, relid) = lookup_link_id(sender, schema, table)?;
    // Only the sender's own role delivers for it (crate::catalog::peer::Peer::check_inbound).
    if let Some(peer) = crate::catalog::peer::find_by_node(sender)? {
        peer.check_inbound()?;
    }
    // The peer writes this table as the role it connects as: only if this node granted it.
    crate::catalog::access::peer_may(relid, crate::catalog::access::WRITE, "write")?;
    LINK_IDS.with(|m| m.borrow_mut().insert(key, (xact, id)));
    Ok(id)
}

fn lookup_link_id(sender: &str, schema: &str, table: &str) -> Result<(i32, pg_sys::Oid)> {
    // Planned once per backend: in sync mode every writing transaction on the peer asks.
    let text = pgrx::PgOid::from(pg_sys::TEXTOID);
    let id = crate::pg::spi::prepared_read(
        "SELECT l.link_id, l.relid::oid, l.direction <> 'push' \
           FROM synclink.link l JOIN synclink.peer p USING (peer_name) \
          WHERE p.node_name = $1 AND l.relid = to_regclass(format('%I.%I', $2, $3))",
        &[text, text, text],
        &[sender.into(), schema.into(), table.into()],
        |t| match t.into_iter().next() {
            Some(r) => Ok(r
                .get::<i32>(1)?
                .zip(r.get::<pg_sys::Oid>(2)?)
                .zip(r.get::<bool>(3)?)),
            None => Ok::<_, pgrx::spi::SpiError>(None),
        },
    )??;
    if let Some((_, false)) = id {
        return Err(ApplyError::NotReceiving {
            schema: schema.into(),
            table: table.into(),
            node: sender.into(),
        }
        .into());
    }
    let Some((found, _)) = id else {
        return Err(match crate::catalog::peer::find_by_node(sender)? {
            None => ApplyError::UnknownSender(sender.into()),
            Some(_) => ApplyError::NotLinked {
                schema: schema.into(),
                table: table.into(),
                node: sender.into(),
            },
        }
        .into());
    };
    Ok(found)
}

fn compile(id: i32, schema: &str, table: &str) -> Result<Rc<Compiled>> {
    if let Some(c) = COMPILED.with(|m| m.borrow().get(&id).cloned()) {
        return Ok(c);
    }
    let link = Spi::connect(|c| {
        let r = c
            .select(
                "SELECT row_type, columns, key_columns, version_table, conflict, prefer_node, \
                        version_column, peer_name, (row_type || '[]')::regtype::oid, \
                        'synclink.stamp[]'::regtype::oid, relid::oid \
                   FROM synclink.link WHERE link_id = $1",
                None,
                &[id.into()],
            )?
            .next()
            .ok_or(Missing("link a change record is for"))?;
        Ok::<_, crate::pg::error::Error>((
            need::<String>(&r, 1, "row type of a link")?,
            need::<Vec<String>>(&r, 2, "columns of a link")?,
            need::<Vec<String>>(&r, 3, "key columns of a link")?,
            need::<String>(&r, 4, "version table of a link")?,
            crate::catalog::policy::Policy::from_stored(
                &need::<String>(&r, 5, "conflict policy of a link")?,
                r.get::<String>(6)?,
                r.get::<String>(7)?,
            ),
            need::<String>(&r, 8, "peer of a link")?,
            need::<pg_sys::Oid>(&r, 9, "array type of a link's rows")?,
            need::<pg_sys::Oid>(&r, 10, "type synclink.stamp[]")?,
            need::<pg_sys::Oid>(&r, 11, "table of a link")?,
        ))
    })?;
    let (row_type, columns, key, version_table, policy, peer_name, rows_type, stamps_type, relid) =
        link;
    let text_compare = text_compare_columns(&row_type)?;
    let spec = ApplySpec {
        table: qualified(schema, table),
        row_type: &row_type,
        columns: &columns,
        key: &key,
        text_compare: &text_compare,
    };
    let checked = checked::CheckedSpec {
        apply: &spec,
        link_id: id,
        peer_name: &peer_name,
        version_table: &version_table,
        policy: &policy,
    };
    let checked_sql = |delete, single| checked::checked_apply_sql(&checked, delete, single);
    let both = [rows_type, stamps_type];
    let text = pg_sys::TEXTOID;
    let compiled = Rc::new(Compiled {
        table: spec.table.clone(),
        relid,
        rows_type,
        stamps_type,
        lock: Statement::new(&checked::lock_sql(&spec), &[rows_type]),
        upsert_one: Statement::new(&checked_sql(false, true), &both),
        delete_one: Statement::new(&checked_sql(true, true), &both),
        upsert_run: Statement::new(&checked_sql(false, false), &both),
        delete_run: Statement::new(&checked_sql(true, false), &both),
        rekey: Statement::new(&rekey_sql(&spec), &[text, text]),
    });
    COMPILED.with(|m| m.borrow_mut().insert(id, compiled.clone()));
    Ok(compiled)
}

/// Forget applied seqs below the sender's floor (the lowest seq it still holds): those can
/// never be delivered again. Once per delivering transaction: within one, each batch's floor
/// lies above the previous batch, and deleting what was inserted a moment ago would only leave
/// dead index entries for every later prune to step over.
fn prune(sender: &str, floor: Option<i64>) -> Result<()> {
    let xact = crate::pg::ffi::local_xact();
    let Some(floor) = floor else { return Ok(()) };
    if PRUNED_IN.with(|m| m.borrow().get(sender) == Some(&xact)) {
        return Ok(());
    }
    // A kept plan: planned afresh, the estimate (most of the table lies below the floor)
    // picks a scan of the whole table, dead rows and all, on every delivery.
    crate::pg::spi::prepared(
        "DELETE FROM synclink.applied WHERE sender = $1 AND hi < $2",
        &[
            pgrx::PgOid::from(pg_sys::TEXTOID),
            pgrx::PgOid::from(pg_sys::INT8OID),
        ],
        &[sender.into(), floor.into()],
        |_| (),
    )?;
    PRUNED_IN.with(|m| m.borrow_mut().insert(sender.to_string(), xact));
    Ok(())
}

thread_local! {
    /// The seqs from a sender already applied within a range, read with the latest snapshot
    /// (see first_deliveries).
    static SEEN: Statement = Statement::new(
        "SELECT s FROM synclink.applied a CROSS JOIN LATERAL unnest(a.seqs) s \
          WHERE a.sender = $1 AND a.hi >= $2 AND a.lo <= $3",
        &[pg_sys::TEXTOID, pg_sys::INT8OID, pg_sys::INT8OID],
    );
}

/// Record that queued records from `sender` are applied; returns the seqs that were not yet.
fn first_deliveries(sender: &str, seqs: Vec<i64>, floor: Option<i64>) -> Result<Vec<i64>> {
    let (Some(&lo), Some(&hi)) = (seqs.iter().min(), seqs.iter().max()) else {
        return Ok(seqs);
    };
    let text = pgrx::PgOid::from(pg_sys::TEXTOID);
    let bigint = pgrx::PgOid::from(pg_sys::INT8OID);
    // One delivery from a sender at a time. A sender delivers one batch at a time already;
    // this covers a redelivery that overtakes the first delivery's commit (the sender crashed
    // while the peer was committing): it waits here, and the read below, made with the
    // latest snapshot, then sees what that delivery applied.
    crate::pg::spi::prepared_read(
        "SELECT pg_advisory_xact_lock(hashtext('synclink applied'), hashtext($1))",
        &[text],
        &[sender.into()],
        |_| (),
    )?;
    prune(sender, floor)?;
    let seen: std::collections::HashSet<i64> = SEEN
        .with(|stmt| {
            Spi::connect(|_| {
                stmt.read_latest(&[
                    crate::pg::ffi::text_datum(sender),
                    pg_sys::Datum::from(lo),
                    pg_sys::Datum::from(hi),
                ])
            })
        })?
        .into_iter()
        .collect();
    let fresh: Vec<i64> = seqs.into_iter().filter(|s| !seen.contains(s)).collect();
    if let (Some(&lo), Some(&hi)) = (fresh.iter().min(), fresh.iter().max()) {
        crate::pg::spi::prepared(
            "INSERT INTO synclink.applied (sender, lo, hi, seqs) VALUES ($1, $2, $3, $4)",
            &[
                text,
                bigint,
                bigint,
                pgrx::PgOid::from(pg_sys::INT8ARRAYOID),
            ],
            &[sender.into(), lo.into(), hi.into(), fresh.clone().into()],
            |_| (),
        )?;
    }
    Ok(fresh)
}

/// Apply upsert or delete rows with their stamps, conflicts decided and logged: one record
/// (`single`) or a run of records. As the table's owner: parsing the rows (domain checks),
/// the table's triggers, defaults, checks and index expressions are the owner's code.
fn apply_checked(
    plans: &Compiled,
    delete: bool,
    single: bool,
    rows: &str,
    stamps: &str,
) -> Result<()> {
    let bytes = rows.len() + stamps.len();
    // The lock the writes take, before the rows are read and locked (which takes a weaker
    // one): a session linking the table with another peer holds a lock that lets reads
    // through and waits for writers before it replaces the table's triggers; a run that held
    // the weaker lock while it waited for the stronger would deadlock with it.
    // SAFETY: the table exists (its link was just compiled, under its lock as of then), the
    // lock is released at the end of the transaction by the lock manager, and taking a lock
    // checks no privilege and runs no code of the table's.
    unsafe {
        pg_sys::LockRelationOid(plans.relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
    }
    let (raced, unchanged) = crate::pg::privilege::as_owner_of(plans.relid, || {
        Spi::connect_mut(|_| {
            // Parsed once for both statements: for a large record parsing is most of the work.
            let rows = crate::pg::plan::parse(plans.rows_type, rows);
            let stamps = crate::pg::plan::parse(
                plans.stamps_type,
                &crate::data::wire::with_generations(stamps),
            );
            plans.lock.run(bytes, &[rows])?;
            let stmt = match (delete, single) {
                (false, true) => &plans.upsert_one,
                (true, true) => &plans.delete_one,
                (false, false) => &plans.upsert_run,
                (true, false) => &plans.delete_run,
            };
            // The rows to pass on are written in the wire's text form, as the capture
            // function writes rows.
            let settings: &[_] = if crate::data::wire::session_writes_wire_text() {
                &[]
            } else {
                &crate::data::wire::SETTINGS
            };
            Ok::<_, pgrx::spi::SpiError>(
                match &stmt.run_texts(bytes, &[rows, stamps], settings)?[..] {
                    [raced, Some(rows), Some(stamps)] => {
                        (raced.clone(), Some((rows.clone(), stamps.clone())))
                    }
                    [raced, ..] => (raced.clone(), None),
                    [] => (None, None),
                },
            )
        })
    })??;
    // Positive when a row was found inserted meanwhile; a table's BEFORE UPDATE trigger that
    // skips a row can only lower the count.
    if raced
        .and_then(|n| n.parse::<i64>().ok())
        .is_some_and(|n| n > 0)
    {
        // Nothing of the run stays: the error rolls the statement back, and the record is
        // delivered again.
        return Err(ApplyError::ConcurrentInsert {
            table: plans.table.clone(),
        }
        .into());
    }
    if let Some((rows, stamps)) = unchanged {
        pass_on(plans.relid, delete, &rows, &stamps)?;
    }
    Ok(())
}

/// Pass on changes that won here but changed nothing (an upsert of the values the row has, a
/// delete of a row that is gone) to this node's other peers of the table that it sends to, as
/// the capture passes on what the apply wrote: each of those peers takes the version the change
/// made and decides later conflicts on the key as this node does. Through the queue, as every
/// change being passed on goes, never back to the node it came from or began on. `rows` and
/// `stamps` are the record's text arrays.
pub(crate) fn pass_on(relid: pg_sys::Oid, delete: bool, rows: &str, stamps: &str) -> Result<()> {
    let links: Vec<(i32, String, String)> = Spi::connect(|c| {
        c.select(
            "SELECT l.link_id, l.peer_name, p.node_name FROM synclink.link l \
               JOIN synclink.peer p USING (peer_name) \
              WHERE l.relid = $1::oid::regclass AND l.direction <> 'pull' \
              ORDER BY l.link_id",
            None,
            &[relid.into()],
        )?
        .map(|r| {
            Ok((
                need(&r, 1, "id of a link")?,
                need(&r, 2, "peer of a link")?,
                need(&r, 3, "node of a link's peer")?,
            ))
        })
        .collect::<Result<Vec<_>>>()
    })?;
    let origin = current_origin().ok_or(Missing("origin of the change being applied"))?;
    let change = crate::data::queue::Change {
        op: if delete { b'D' } else { b'U' } as i8,
        new_rows: (!delete).then_some(rows),
        old_rows: delete.then_some(rows),
        stamps: Some(stamps),
    };
    for (link_id, peer, node) in links {
        if !is_applying_from(&node) {
            crate::data::queue::enqueue(&peer, link_id, &origin, &change, None)?;
        }
    }
    Ok(())
}

/// Run `f` with the apply marker set, so the capture triggers it fires know where the rows
/// came from.
pub fn marked<T>(origin: &str, sender: &str, f: impl FnOnce() -> T + std::panic::UnwindSafe) -> T {
    APPLYING.with(|a| {
        *a.borrow_mut() = Some(Applying {
            origin: origin.into(),
            sender: sender.into(),
        })
    });
    PgTryBuilder::new(f)
        .finally(|| APPLYING.with(|a| *a.borrow_mut() = None))
        .execute()
}

/// A queued upsert or delete record, held until the end of the inbox statement that brought
/// it so that a run of records for one table is applied as one statement.
struct Pending {
    link: i32,
    schema: String,
    table: String,
    origin: String,
    sender: String,
    upsert: bool,
    seq: i64,
    floor: Option<i64>,
    rows: String,
    stamps: String,
}

#[derive(Default)]
struct PendingBuffer {
    /// (local transaction, subtransaction) the records arrived in: records of a statement
    /// that failed (and was rolled back to a savepoint) must never be applied by a later one.
    owner: (u32, pg_sys::SubTransactionId),
    records: Vec<Pending>,
    bytes: usize,
}

thread_local! {
    static PENDING: RefCell<PendingBuffer> = RefCell::new(PendingBuffer::default());
}

/// Held records are applied early once they reach this size: a run's rows are parsed into
/// memory whole, as arrays of the rows and of their stamps, and sorted and joined from there,
/// so the run's size bounds the receiving backend's memory; past some tens of thousands of
/// rows a larger run saves nothing more.
const PENDING_BYTES: usize = 8 << 20;

fn current_owner() -> (u32, pg_sys::SubTransactionId) {
    // SAFETY: GetCurrentSubTransactionId reads the id of the transaction state this backend
    // is in; it takes nothing and apply runs only inside a transaction.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    (crate::pg::ffi::local_xact(), subxact)
}

fn hold(p: Pending) -> bool {
    let owner = current_owner();
    PENDING.with(|b| {
        let mut b = b.borrow_mut();
        if b.owner != owner {
            *b = PendingBuffer {
                owner,
                ..Default::default()
            };
        }
        b.bytes += p.rows.len();
        b.records.push(p);
        b.bytes >= PENDING_BYTES
    })
}

/// Join text arrays of one row type into one: `{a,b}` + `{c}` → `{a,b,c}`.
fn concat_arrays<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    let inner: Vec<&str> = parts
        .map(|p| &p[1..p.len() - 1])
        .filter(|p| !p.is_empty())
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Called by the inbox's statement trigger (sql/finalize.sql) once its rows are in: [`apply_held`].
#[pg_extern(schema = "synclink")]
#[search_path(pg_catalog, pg_temp)]
fn apply_pending() -> Result<(), ErrorReport> {
    Ok(apply_held()?)
}

/// Apply the held records: each once (by its sender's seq), consecutive records for the same
/// table and of the same kind merged into one upsert or one delete. Merging keeps the result
/// of applying them one by one: the last version of a key wins an upsert run, and a delete
/// run removes the union of its keys.
fn apply_held() -> Result<()> {
    let owner = current_owner();
    let buffer = PENDING.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if buffer.owner != owner || buffer.records.is_empty() {
        return Ok(());
    }
    let mut fresh = std::collections::HashSet::new();
    let mut senders: Vec<&str> = buffer.records.iter().map(|p| p.sender.as_str()).collect();
    senders.sort_unstable();
    senders.dedup();
    for sender in senders {
        let mine = buffer.records.iter().filter(|p| p.sender == sender);
        let floor = mine.clone().filter_map(|p| p.floor).max();
        let seqs = mine.map(|p| p.seq).collect();
        for seq in first_deliveries(sender, seqs, floor)? {
            fresh.insert((sender.to_string(), seq));
        }
    }
    let todo: Vec<&Pending> = buffer
        .records
        .iter()
        .filter(|p| fresh.contains(&(p.sender.clone(), p.seq)))
        .collect();
    let same_run = |a: &Pending, b: &Pending| {
        a.link == b.link && a.upsert == b.upsert && a.origin == b.origin && a.sender == b.sender
    };
    for run in todo.chunk_by(|a, b| same_run(a, b)) {
        let first = run[0];
        let plans = compile(first.link, &first.schema, &first.table)?;
        let (rows, stamps) = if run.len() == 1 {
            (first.rows.clone(), first.stamps.clone())
        } else {
            (
                concat_arrays(run.iter().map(|p| p.rows.as_str())),
                concat_arrays(run.iter().map(|p| p.stamps.as_str())),
            )
        };
        marked(&first.origin, &first.sender, || {
            apply_checked(&plans, !first.upsert, run.len() == 1, &rows, &stamps)
        })?;
    }
    Ok(())
}

/// The inbox's row trigger: a peer delivers a change record by inserting it. Written in
/// Rust and without a SET clause because it runs once per record: it pins the search path
/// for the delivering transaction itself (the session is synclink's own), once, and bounds its
/// lock waits; only the roles this node granted INSERT on the inbox deliver.
pub fn receive(trigger: &PgTrigger) -> Result<()> {
    // Only a superuser can attach this function to a table (sql/finalize.sql); even then it
    // applies nothing that did not arrive in synclink's inbox.
    let inbox = crate::data::queue::synclink_relation(c"inbox");
    if trigger.relid().ok() != Some(inbox) || !matches!(trigger.level(), PgTriggerLevel::Row) {
        return Err(ApplyError::NotTheInbox.into());
    }
    let Some(row) = trigger.new() else {
        return Err(ApplyError::NotTheInbox.into());
    };
    // One pass over the columns: looking each one up by name would walk them all again.
    let (mut text, mut op, mut seq, mut floor) = (<[Option<String>; 7]>::default(), 0, None, None);
    for (n, att) in row.attributes() {
        let altered = |_| ApplyError::InboxAltered(att.name().to_string());
        let slot = match att.name() {
            "origin" => 0,
            "sender" => 1,
            "target_schema" => 2,
            "target_table" => 3,
            "new_rows" => 4,
            "old_rows" => 5,
            "stamps" => 6,
            "op" => {
                op = row.get_by_index::<i8>(n).map_err(altered)?.unwrap_or(0);
                continue;
            }
            "seq" => {
                seq = row.get_by_index::<i64>(n).map_err(altered)?;
                continue;
            }
            "floor_seq" => {
                floor = row.get_by_index::<i64>(n).map_err(altered)?;
                continue;
            }
            _ => continue,
        };
        text[slot] = row.get_by_index::<String>(n).map_err(altered)?;
    }
    let [origin, sender, schema, table, new_rows, old_rows, stamps] = text;
    crate::data::queue::bound_lock_waits();
    crate::pg::privilege::pin_for_transaction();
    // The peer's role inserted the record; synclink's own bookkeeping runs as the extension's
    // owner, and the rows are written as the table's owner (apply_checked).
    crate::pg::privilege::as_role(crate::pg::privilege::extension_owner()?, || {
        apply_record(
            &origin.unwrap_or_default(),
            &sender.unwrap_or_default(),
            &schema.unwrap_or_default(),
            &table.unwrap_or_default(),
            op,
            new_rows.as_deref(),
            old_rows.as_deref(),
            seq,
            floor,
            stamps.as_deref(),
        )
    })
}

/// Apply one change record, as the inbox trigger does.
#[pg_extern(schema = "synclink")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)]
fn apply(
    origin: &str,
    sender: &str,
    target_schema: &str,
    target_table: &str,
    op: i8,
    new_rows: Option<&str>,
    old_rows: Option<&str>,
    seq: default!(Option<i64>, "NULL"),
    floor_seq: default!(Option<i64>, "NULL"),
    stamps: default!(Option<&str>, "NULL"),
) -> Result<(), ErrorReport> {
    apply_record(
        origin,
        sender,
        target_schema,
        target_table,
        op,
        new_rows,
        old_rows,
        seq,
        floor_seq,
        stamps,
    )?;
    apply_held()?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn apply_record(
    origin: &str,
    sender: &str,
    target_schema: &str,
    target_table: &str,
    op: i8,
    new_rows: Option<&str>,
    old_rows: Option<&str>,
    seq: Option<i64>,
    floor_seq: Option<i64>,
    stamps: Option<&str>,
) -> Result<()> {
    let id = link_id(sender, target_schema, target_table)?;
    if matches!(op as u8, b'I' | b'U' | b'D' | b'K') && stamps.is_none() {
        return Err(ApplyError::Unstamped.into());
    }
    // Queued records are held until the inbox statement ends (apply_pending): a delivery
    // brings hundreds of them, usually a row or two each.
    let held = match (op as u8, seq) {
        (b'I' | b'U', Some(_)) => Some((true, new_rows)),
        (b'D' | b'K', Some(_)) => Some((false, old_rows)),
        _ => None,
    };
    if let (Some((upsert, rows)), Some(seq)) = (held, seq) {
        let full = hold(Pending {
            link: id,
            schema: target_schema.into(),
            table: target_table.into(),
            origin: origin.into(),
            sender: sender.into(),
            upsert,
            seq,
            floor: floor_seq,
            rows: rows.unwrap_or("{}").into(),
            stamps: stamps.unwrap_or("{}").into(),
        });
        if full {
            apply_held()?;
        }
        return Ok(());
    }
    // Anything else keeps its place in the order: what is held goes first.
    apply_held()?;
    if let Some(seq) = seq {
        if first_deliveries(sender, vec![seq], floor_seq)?.is_empty() {
            return Ok(());
        }
    }
    let plans = compile(id, target_schema, target_table)?;
    let stamps = stamps.unwrap_or("{}");
    marked(origin, sender, || match (op as u8, new_rows, old_rows) {
        (b'I' | b'U', Some(rows), _) => apply_checked(&plans, false, true, rows, stamps),
        (b'D' | b'K', _, Some(rows)) => apply_checked(&plans, true, true, rows, stamps),
        (b'R', Some(new), Some(old)) => {
            let args = [
                crate::pg::ffi::text_datum(old),
                crate::pg::ffi::text_datum(new),
            ];
            crate::pg::privilege::as_owner_of(plans.relid, || {
                Spi::connect_mut(|_| plans.rekey.run(old.len() + new.len(), &args))
            })??;
            Ok(())
        }
        (b'T', _, _) => crate::pg::privilege::as_owner_of(plans.relid, || {
            Spi::run(&format!("DELETE FROM {}", plans.table))
        })?
        .map_err(Into::into),
        (b'I' | b'U' | b'D' | b'K' | b'R', _, _) => Ok(()),
        (other, _, _) => Err(ApplyError::BadOp((other as char).to_string()).into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// An ApplySpec for table t, row type r.
    fn spec<'a>(cols: &'a [String], key: &'a [String], text: &'a [String]) -> ApplySpec<'a> {
        ApplySpec {
            table: "t".into(),
            row_type: "r",
            columns: cols,
            key,
            text_compare: text,
        }
    }

    #[test]
    fn upsert_updates_only_changed_rows() {
        let (cols, key, tc) = (
            strings(&["id", "name", "doc"]),
            strings(&["id"]),
            strings(&["doc"]),
        );
        let sql = upsert_from(&spec(&cols, &key, &tc), "unnest($1::r[]) r");
        assert!(sql.contains("ON CONFLICT (\"id\") DO UPDATE SET \"name\" = EXCLUDED.\"name\", \"doc\" = EXCLUDED.\"doc\""), "{sql}");
        assert!(sql.contains("(t.\"name\", t.\"doc\"::text) IS DISTINCT FROM (EXCLUDED.\"name\", EXCLUDED.\"doc\"::text)"), "{sql}");
        assert!(sql.contains("OVERRIDING SYSTEM VALUE"));
    }

    #[test]
    fn upsert_of_key_only_table_does_nothing_on_conflict() {
        let cols = strings(&["a", "b"]);
        assert!(upsert_from(&spec(&cols, &cols, &[]), "x r")
            .ends_with("ON CONFLICT (\"a\", \"b\") DO NOTHING"));
    }

    #[test]
    fn arrays_join_without_empty_parts() {
        let parts = ["{\"(1,a)\"}", "{}", "{\"(2,b)\",\"(3,NULL)\"}"];
        assert_eq!(
            concat_arrays(parts.into_iter()),
            "{\"(1,a)\",\"(2,b)\",\"(3,NULL)\"}"
        );
        assert_eq!(concat_arrays(["{}", "{}"].into_iter()), "{}");
    }

    #[test]
    fn rekey_moves_rows_matched_by_their_old_key() {
        let (cols, key) = (strings(&["email", "name"]), strings(&["email"]));
        let sql = rekey_sql(&spec(&cols, &key, &[]));
        assert!(
            sql.starts_with("UPDATE t AS t SET \"email\" = n.\"email\", \"name\" = n.\"name\""),
            "{sql}"
        );
        assert!(
            sql.contains("ON n.\"synclink$ord\" = o.\"synclink$ord\""),
            "{sql}"
        );
        assert!(sql.ends_with("WHERE t.\"email\" = o.\"email\""), "{sql}");
    }

    #[test]
    fn rows_are_locked_by_every_key_column() {
        let (cols, key) = (strings(&["a", "b", "v"]), strings(&["a", "b"]));
        assert_eq!(
            checked::lock_sql(&spec(&cols, &key, &[])),
            "SELECT FROM unnest($1::r[]) r\n  CROSS JOIN LATERAL (SELECT FROM t t WHERE t.\"a\" = r.\"a\" AND t.\"b\" = r.\"b\" OFFSET 0 FOR UPDATE OF t) l"
        );
    }
}
