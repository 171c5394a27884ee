//! The native capture of async links. Most application statements change one row; for those,
//! the generated PL/pgSQL capture function costs more than the change itself: its SET clauses,
//! an executor start for a plan over the transition tables, aggregates to build arrays of one.
//! An async link's triggers call `synclink.capture_one(link_id)` instead, which queues such a
//! statement itself: the same version upsert and the same outbox record, in the same text
//! form, written through the table and index access methods (writer.rs) in READ COMMITTED,
//! and by one prepared statement (capture::single_row_sql) in the higher isolation levels.
//! Every other statement (several rows, an UPDATE that changed the key, TRUNCATE, a session
//! whose settings would change the text form) is handed to the generated function, as if the
//! trigger had called it. Its triggers have no WHEN clause: it skips the changes synclink
//! applies from the peer itself, before anything else.

use crate::data::capture::statement::{self as capture, CaptureSpec, Target};
use crate::data::capture::writer::{LinkTables, Writer};
use crate::data::capture::{CapturePath, OneRow};
use crate::pg::error::{OrRaise, Result, SqlError};
use crate::pg::spi::need;
use pgrx::prelude::*;
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::rc::Rc;

#[derive(thiserror::Error, Debug)]
enum CaptureError {
    #[error("synclink.capture_one() may only be called as a trigger")]
    NotATrigger,
    #[error("synclink.capture_one() takes one argument, a link id")]
    BadArgument,
    #[error("synclink.capture_one({0}) may only be called by the triggers of that link")]
    NotThatLink(i32),
    /// PostgreSQL did not do what the capture asked of it (the text says what).
    #[error("synclink.capture_one: {0}")]
    Internal(String),
}

impl SqlError for CaptureError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            CaptureError::Internal(_) => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            _ => PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            CaptureError::Internal(_) => None,
            _ => Some(
                "sync_link_table() makes the triggers that call it and sync_unlink_table() drops \
                 them; this trigger is not one of a link of this table: drop it."
                    .into(),
            ),
        }
    }
}

crate::pg::error::reported_as_sql_error!(CaptureError);

/// What a backend keeps per table whose triggers call the native capture (by the id of one of
/// its links), read from synclink.link on its first statement.
struct Link {
    relid: pg_sys::Oid,
    triggers: Vec<String>,
    /// This node: the origin of a change not being applied from elsewhere.
    node: String,
    /// The nodes of the peers the table's changes go to: a change being applied from one of
    /// them, or that began there, is not sent back to it.
    peer_nodes: Vec<String>,
    /// The ways of queueing a statement, offered it in order; the last takes every one.
    paths: Vec<Box<dyn CapturePath>>,
    /// The relations this is read from: the table, the version table, the outbox.
    uses: [pg_sys::Oid; 3],
}

/// The heap writer's path: one row, READ COMMITTED, the link's tables as synclink made them.
/// Acts as the table's owner, as the generated SECURITY DEFINER function does; it runs no SQL,
/// and the backlog check that may follow pins the search path itself.
struct HeapPath {
    writer: Writer,
    owner: pg_sys::Oid,
}

impl CapturePath for HeapPath {
    // SAFETY: `row` was read from the current call's transition tables (the trait's contract):
    // values of the table's row type, fetched whole, with their descriptor, as Writer::queue
    // requires.
    unsafe fn capture(
        &self,
        _data: *mut pg_sys::TriggerData,
        row: Option<&OneRow>,
    ) -> Result<bool> {
        let Some(row) = row else { return Ok(false) };
        if !read_committed() {
            return Ok(false);
        }
        crate::pg::privilege::as_role_without_sql(self.owner, || {
            let queued = self
                .writer
                .queue(row.op, row.row, row.old, row.desc, row.origin, row.at)?;
            if queued {
                crate::data::queue::after_queueing()?;
            }
            Ok(queued)
        })
    }
}

/// The heap path's isolation level: its steps take no snapshot checks, which the higher
/// levels' statements make.
fn read_committed() -> bool {
    // SAFETY: XactIsoLevel is a plain int of this backend's, set by the transaction; only read.
    unsafe { pg_sys::XactIsoLevel < pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// The same writes as one prepared statement per operation (capture::single_row_sql), for
/// one row in any isolation level.
struct StatementPath {
    /// Per operation (I, U, D): the statement's text and its plan once made.
    statements: [(String, OnceCell<NonNull<pg_sys::_SPI_plan>>); 3],
    /// The table's row type: the type of the row parameters.
    row_type: pg_sys::Oid,
    owner: pg_sys::Oid,
    /// The heap path comes first: what it declines in READ COMMITTED (a row without its key)
    /// goes to the generated function, whose statement reports it.
    after_heap: bool,
}

impl CapturePath for StatementPath {
    // SAFETY: `row`'s values are of the table's row type (the trait's contract), the types the
    // statement is prepared with; values, nulls and types outlive SPI_execute_plan, and every
    // SPI call is made between this function's own SPI_connect and SPI_finish.
    unsafe fn capture(
        &self,
        _data: *mut pg_sys::TriggerData,
        row: Option<&OneRow>,
    ) -> Result<bool> {
        let Some(row) = row else { return Ok(false) };
        if self.after_heap && read_committed() {
            return Ok(false);
        }
        let index = match row.op {
            b'I' => 0,
            b'U' => 1,
            _ => 2,
        };
        let mut values = vec![
            row.row,
            row.at.into(),
            crate::pg::ffi::text_datum(row.origin),
        ];
        let mut types = vec![self.row_type, pg_sys::INT8OID, pg_sys::TEXTOID];
        if let Some(old) = row.old {
            values.push(old);
            types.push(self.row_type);
        }
        let nulls = vec![b' ' as std::ffi::c_char; values.len()];
        let (sql, plan) = &self.statements[index];
        crate::pg::privilege::as_role(self.owner, || {
            if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                return Err(CaptureError::Internal("SPI_connect failed".into()).into());
            }
            let plan = match plan.get() {
                Some(plan) => *plan,
                None => match prepare(sql, &mut types) {
                    Ok(made) => *plan.get_or_init(|| made),
                    Err(e) => {
                        pg_sys::SPI_finish();
                        return Err(e);
                    }
                },
            };
            let rc = pg_sys::SPI_execute_plan(
                plan.as_ptr(),
                values.as_mut_ptr(),
                nulls.as_ptr(),
                false,
                0,
            );
            // one outbox record per link, or none for an UPDATE that changed the key
            let queued = pg_sys::SPI_processed > 0;
            pg_sys::SPI_finish();
            if rc < 0 {
                return Err(
                    CaptureError::Internal(format!("SPI_execute_plan failed: {rc}")).into(),
                );
            }
            Ok(queued)
        })
    }
}

/// The generated function: every statement, as if the trigger had called it.
struct GeneratedPath {
    function: Box<pg_sys::FmgrInfo>,
}

impl CapturePath for GeneratedPath {
    // SAFETY: `data` is the current call's TriggerData (the trait's contract), passed on as the
    // trigger manager would; `function` was filled in by fmgr_info_cxt for the cached link that
    // owns it; a zeroed call info without arguments is complete for a trigger. An ERROR inside
    // is caught at the FFI boundary, so it unwinds the Rust frames instead of jumping over them.
    unsafe fn capture(
        &self,
        data: *mut pg_sys::TriggerData,
        _row: Option<&OneRow>,
    ) -> Result<bool> {
        // As the trigger manager calls a function: the same trigger data, no arguments.
        let mut call: pg_sys::FunctionCallInfoBaseData = std::mem::zeroed();
        call.flinfo = &*self.function as *const pg_sys::FmgrInfo as *mut pg_sys::FmgrInfo;
        call.context = data as *mut pg_sys::Node;
        call.fncollation = pg_sys::InvalidOid;
        match (*call.flinfo).fn_addr {
            Some(function) => {
                pg_sys::ffi::pg_guard_ffi_boundary(|| function(&mut call));
                Ok(true)
            }
            None => {
                Err(CaptureError::Internal("the capture function has no address".into()).into())
            }
        }
    }
}

thread_local! {
    static LINKS: RefCell<HashMap<i32, Rc<Link>>> = RefCell::new(HashMap::new());
    /// Set when a relation a cached link depends on has changed; the cache is dropped at
    /// the next statement.
    static STALE: Cell<bool> = const { Cell::new(false) };
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Relcache callback: a relation changed somewhere. When it is one a cached link uses (its
/// table, whose triggers or columns may have changed; its version table; the outbox, which
/// DROP EXTENSION drops, after which link ids start again from 1) or all of them, every
/// cached link is read again at the next statement. Runs while invalidations are processed,
/// so it only notes it.
// SAFETY: PostgreSQL calls this with a relation's OID (InvalidOid: every relation) and the
// argument it was registered with; it reads no pointer and touches only this backend's
// thread-locals, without raising an error.
unsafe extern "C-unwind" fn relation_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let relevant = relid == pg_sys::InvalidOid
        || LINKS.with(|m| {
            m.try_borrow()
                .map(|m| m.values().any(|l| l.uses.contains(&relid)))
                .unwrap_or(true)
        });
    if relevant {
        STALE.with(|s| s.set(true));
    }
}

/// The link's row of synclink.link with what it refers to.
struct Catalog {
    relid: pg_sys::Oid,
    row_type: pg_sys::Oid,
    function: pg_sys::Oid,
    owner: pg_sys::Oid,
    columns: Vec<String>,
    key: Vec<String>,
    wire_type: String,
    version_table: String,
    function_name: String,
    triggers: Vec<String>,
    node: String,
    version_oid: pg_sys::Oid,
    wire_oid: pg_sys::Oid,
    stamp_oid: pg_sys::Oid,
    outbox_oid: pg_sys::Oid,
    /// synclink.fanout, where a record for several links goes (InvalidOid before the catalog
    /// has it)
    fanout_oid: pg_sys::Oid,
    /// a link of the table prefers this node (its changes raise their rows' generation)
    preferred: bool,
    /// the catalog has the version generations this code writes: false between installing a
    /// new library and ALTER EXTENSION synclink UPDATE, when only the generated function (made
    /// by the code before, for the catalog as it is) may capture
    current: bool,
}

/// The table `relid` as its link `link_id` and the table's other links that send know it,
/// if `link_id` is one of its links. Whoever fires the trigger, the catalog is read as the
/// bootstrap superuser (synclink.peer is not readable by application roles), with the search
/// path pinned and every operator qualified, so nothing the caller defined runs.
fn load(link_id: i32, relid: pg_sys::Oid) -> Result<Option<Link>> {
    let found = crate::pg::privilege::as_role(pg_sys::BOOTSTRAP_SUPERUSERID.into(), || {
        Spi::connect(|c| {
            let found = c.select(
                "SELECT l.relid::pg_catalog.oid, c.reltype, p.oid, p.proowner, l.columns, \
                        l.key_columns, l.row_type, l.version_table, l.capture_function, \
                        l.triggers, n.node_name, \
                        pg_catalog.to_regclass(l.version_table)::pg_catalog.oid, \
                        pg_catalog.to_regtype(l.row_type)::pg_catalog.oid, \
                        'synclink.stamp'::pg_catalog.regtype::pg_catalog.oid, \
                        'synclink.outbox'::pg_catalog.regclass::pg_catalog.oid, \
                        pg_catalog.to_regclass('synclink.fanout')::pg_catalog.oid, \
                        EXISTS (SELECT FROM synclink.link x \
                                 WHERE x.relid::pg_catalog.oid OPERATOR(pg_catalog.=) l.relid::pg_catalog.oid \
                                   AND x.conflict OPERATOR(pg_catalog.=) 'prefer_node' \
                                   AND x.prefer_node OPERATOR(pg_catalog.=) n.node_name), \
                        EXISTS (SELECT FROM pg_catalog.pg_attribute a \
                                 WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(l.version_table)::pg_catalog.oid \
                                   AND a.attname OPERATOR(pg_catalog.=) 'synclink$gen' AND NOT a.attisdropped) \
                        AND EXISTS (SELECT FROM pg_catalog.pg_attribute a \
                                     WHERE a.attrelid OPERATOR(pg_catalog.=) 'synclink.stamp'::pg_catalog.regclass::pg_catalog.oid \
                                       AND a.attname OPERATOR(pg_catalog.=) 'gen' AND NOT a.attisdropped) \
                   FROM synclink.link l \
                   JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) l.relid::pg_catalog.oid \
                   JOIN pg_catalog.pg_proc p \
                     ON p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regproc(l.capture_function)::pg_catalog.oid \
                  CROSS JOIN synclink.node n \
                  WHERE l.link_id OPERATOR(pg_catalog.=) $1 \
                    AND l.relid::pg_catalog.oid OPERATOR(pg_catalog.=) $2",
                None,
                &[link_id.into(), relid.into()],
            )?
            .next();
            let Some(r) = found else { return Ok(None) };
            let row = Catalog {
                relid: need(&r, 1, "table of a link")?,
                row_type: need(&r, 2, "row type of a linked table")?,
                function: need(&r, 3, "capture function of a link")?,
                owner: need(&r, 4, "owner of a link's capture function")?,
                columns: need(&r, 5, "columns of a link")?,
                key: need(&r, 6, "key columns of a link")?,
                wire_type: need(&r, 7, "row type of a link")?,
                version_table: need(&r, 8, "version table of a link")?,
                function_name: need(&r, 9, "capture function name of a link")?,
                triggers: need(&r, 10, "triggers of a link")?,
                node: need(&r, 11, "node name")?,
                version_oid: need(&r, 12, "version table of a link")?,
                wire_oid: need(&r, 13, "row type of a link")?,
                stamp_oid: need(&r, 14, "type synclink.stamp")?,
                outbox_oid: need(&r, 15, "table synclink.outbox")?,
                fanout_oid: r.get(16)?.unwrap_or(pg_sys::InvalidOid),
                preferred: need(&r, 17, "preferred node of a link")?,
                current: need(&r, 18, "generations of a link's versions")?,
            };
            // Every link of the table that sends through these triggers: (peer, link id,
            // peer's node).
            let targets = c
                .select(
                    "SELECT l.peer_name, l.link_id, pe.node_name \
                       FROM synclink.link l \
                       JOIN synclink.peer pe ON pe.peer_name OPERATOR(pg_catalog.=) l.peer_name \
                      WHERE l.relid::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                        AND l.triggers OPERATOR(pg_catalog.=) $2 \
                        AND coalesce(pg_catalog.to_jsonb(l) OPERATOR(pg_catalog.->>) 'direction', 'both') \
                            OPERATOR(pg_catalog.<>) 'pull' \
                      ORDER BY l.link_id",
                    None,
                    &[relid.into(), row.triggers.clone().into()],
                )?
                .map(|r| {
                    Ok(Target {
                        peer_name: need(&r, 1, "peer of a link")?,
                        link_id: need(&r, 2, "id of a link")?,
                        peer_node: need(&r, 3, "node name of a peer")?,
                        queue_only: true,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok::<_, crate::pg::error::Error>(Some((row, targets)))
        })
    })?;
    let Some((row, targets)) = found else {
        return Ok(None);
    };
    let spec = CaptureSpec {
        function: &row.function_name,
        table_display: "",
        row_type: &row.wire_type,
        columns: &row.columns,
        key: &row.key,
        pair_by: None,
        node: &row.node,
        version_table: &row.version_table,
        targets: &targets,
        preferred: row.preferred,
    };
    let statements =
        ['I', 'U', 'D'].map(|op| (capture::single_row_sql(&spec, op), OnceCell::new()));
    let outbox_targets: Vec<(String, i32)> = targets
        .iter()
        .map(|t| (t.peer_name.clone(), t.link_id))
        .collect();
    let mut paths: Vec<Box<dyn CapturePath>> = Vec::new();
    // A record for several links is stored once, in synclink.fanout.
    let queue = if targets.len() > 1 {
        row.fanout_oid
    } else {
        row.outbox_oid
    };
    let writer = (row.current && queue != pg_sys::InvalidOid)
        .then(|| {
            Writer::load(&LinkTables {
                targets: &outbox_targets,
                table: row.relid,
                version: row.version_oid,
                wire_type: row.wire_oid,
                stamp_type: row.stamp_oid,
                outbox: queue,
                key: &row.key,
                preferred: row.preferred,
            })
        })
        .flatten();
    if let Some(writer) = writer {
        paths.push(Box::new(HeapPath {
            writer,
            owner: row.owner,
        }));
    }
    if row.current {
        paths.push(Box::new(StatementPath {
            statements,
            row_type: row.row_type,
            owner: row.owner,
            after_heap: !paths.is_empty(),
        }));
    }
    // SAFETY: a zeroed FmgrInfo is what fmgr_info_cxt fills in; the function's OID was read
    // from pg_proc above, and TopMemoryContext outlives the cached link.
    let mut function: Box<pg_sys::FmgrInfo> = Box::new(unsafe { std::mem::zeroed() });
    unsafe { pg_sys::fmgr_info_cxt(row.function, &mut *function, pg_sys::TopMemoryContext) };
    paths.push(Box::new(GeneratedPath { function }));
    Ok(Some(Link {
        relid: row.relid,
        triggers: row.triggers,
        node: row.node,
        peer_nodes: targets.into_iter().map(|t| t.peer_node).collect(),
        paths,
        uses: [row.relid, row.version_oid, queue],
    }))
}

/// The link `link_id`, which must be one of `relid`'s: a trigger that names another table's
/// link is refused before anything is read for it.
fn link(link_id: i32, relid: pg_sys::Oid) -> Result<Rc<Link>> {
    if !WATCHING.with(|w| w.replace(true)) {
        // SAFETY: registers, once per backend, a function that stays valid for the backend's
        // life (the library is never unloaded) and whose argument is a plain Datum.
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(relation_changed), 0.into()) };
    }
    if STALE.with(|s| s.replace(false)) {
        LINKS.with(|m| m.borrow_mut().clear());
    }
    if let Some(l) = LINKS.with(|m| m.borrow().get(&link_id).cloned()) {
        if l.relid != relid {
            return Err(CaptureError::NotThatLink(link_id).into());
        }
        return Ok(l);
    }
    let loaded = load(link_id, relid)?.ok_or(CaptureError::NotThatLink(link_id))?;
    let l = Rc::new(loaded);
    LINKS.with(|m| m.borrow_mut().insert(link_id, l.clone()));
    Ok(l)
}

/// The one row of a transition table, as a value of the table's row type. Read pointer 0 is
/// rewound before and after: the generated function, or another link's trigger on the same
/// statement, reads the same tuplestore after this.
// SAFETY: callers pass a transition table of the current trigger call and its rows'
// descriptor; the slot made here is dropped before this returns.
unsafe fn only_row(
    store: *mut pg_sys::Tuplestorestate,
    desc: pg_sys::TupleDesc,
) -> Result<pg_sys::Datum> {
    let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsMinimalTuple);
    pg_sys::tuplestore_select_read_pointer(store, 0);
    pg_sys::tuplestore_rescan(store);
    if !pg_sys::tuplestore_gettupleslot(store, true, false, slot) {
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        return Err(CaptureError::Internal("the transition table is empty".into()).into());
    }
    // a copy in the current memory context, with any toasted value fetched
    let row = pg_sys::ExecFetchSlotHeapTupleDatum(slot);
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    pg_sys::tuplestore_rescan(store);
    Ok(row)
}

// SAFETY: callers pass NULL or a transition table of the current trigger call.
unsafe fn count(store: *mut pg_sys::Tuplestorestate) -> i64 {
    if store.is_null() {
        0
    } else {
        pg_sys::tuplestore_tuple_count(store)
    }
}

/// The statement's one changed row, when it changed exactly one (an UPDATE that kept its
/// key) and the session writes values as they travel; None sends it the general way.
// SAFETY: callers pass the TriggerData of the current call of a statement trigger, whose
// transition tables (NULL when the event has none) and relation live until the call returns.
unsafe fn one_row<'a>(
    data: *mut pg_sys::TriggerData,
    origin: &'a str,
) -> Result<Option<OneRow<'a>>> {
    let event = (*data).tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
    let (op, changed, old) = match event {
        pg_sys::TRIGGER_EVENT_INSERT => (b'I', (*data).tg_newtable, None),
        pg_sys::TRIGGER_EVENT_UPDATE => (b'U', (*data).tg_newtable, Some((*data).tg_oldtable)),
        pg_sys::TRIGGER_EVENT_DELETE => (b'D', (*data).tg_oldtable, None),
        _ => return Ok(None),
    };
    if count(changed) != 1
        || old.is_some_and(|o| count(o) != 1)
        || !crate::data::wire::session_writes_wire_text()
    {
        return Ok(None);
    }
    let desc = (*(*data).tg_relation).rd_att;
    Ok(Some(OneRow {
        op,
        row: only_row(changed, desc)?,
        old: old.map(|o| only_row(o, desc)).transpose()?,
        desc,
        origin,
        at: crate::pg::ffi::now_micros(),
    }))
}

// SAFETY: callers are connected to SPI and pass as many types as `sql` has parameters; the
// plan is kept (SPI_keepplan), so it outlives the connection.
unsafe fn prepare(sql: &str, types: &mut [pg_sys::Oid]) -> Result<NonNull<pg_sys::_SPI_plan>> {
    // Built from catalog names and literals, which PostgreSQL keeps as C strings: no NUL.
    let sql = CString::new(sql).expect("generated SQL has no NUL");
    // Parsed as the generated function is, with pg_catalog first; a generic plan, made once.
    let plan = crate::pg::plan::with_settings(
        &[(c"search_path", c"pg_catalog, pg_temp"), (c"jit", c"off")],
        || {
            pg_sys::SPI_prepare_cursor(
                sql.as_ptr(),
                types.len() as i32,
                types.as_mut_ptr(),
                pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
            )
        },
    );
    let code = pg_sys::SPI_result;
    let Some(plan) = NonNull::new(plan) else {
        return Err(CaptureError::Internal(format!("SPI_prepare_cursor failed: {code}")).into());
    };
    pg_sys::SPI_keepplan(plan.as_ptr());
    Ok(plan)
}

#[unsafe(no_mangle)]
pub extern "C" fn pg_finfo_synclink_capture_one() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// Trigger function `synclink.capture_one(link_id)` (sql/finalize.sql): AFTER … FOR EACH
/// STATEMENT, with the link's transition tables, on the link's own table and triggers only.
#[pg_guard]
#[unsafe(no_mangle)]
// SAFETY: PostgreSQL calls this through fmgr (version 1, pg_finfo_synclink_capture_one) with
// the call's own fcinfo, valid until it returns.
pub unsafe extern "C-unwind" fn synclink_capture_one(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // PostgreSQL calls this directly, so nothing above can take an error: it is raised here.
    capture_one(fcinfo).or_raise();
    pg_sys::Datum::from(0)
}

// SAFETY: callers pass the fcinfo of the current call of synclink.capture_one; whatever its
// context points to lives until that call returns.
unsafe fn capture_one(fcinfo: pg_sys::FunctionCallInfo) -> Result<()> {
    let context = (*fcinfo).context;
    if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
        return Err(CaptureError::NotATrigger.into());
    }
    let data = context as *mut pg_sys::TriggerData;
    let trigger = (*data).tg_trigger;
    let link_id = ((*trigger).tgnargs == 1)
        .then(|| {
            CStr::from_ptr(*(*trigger).tgargs)
                .to_str()
                .ok()?
                .parse::<i32>()
                .ok()
        })
        .flatten()
        .ok_or(CaptureError::BadArgument)?;
    let link = link(link_id, (*(*data).tg_relation).rd_id)?;
    let name = CStr::from_ptr((*trigger).tgname).to_string_lossy();
    if !link.triggers.iter().any(|t| *t == name)
        || (*data).tg_event & pg_sys::TRIGGER_EVENT_ROW != 0
    {
        return Err(CaptureError::NotThatLink(link_id).into());
    }
    // What the WHEN clause of a generated function's triggers does (capture::trigger_sqls): a
    // change being applied from the only peers the table sends to is not sent back.
    if link
        .peer_nodes
        .iter()
        .all(|n| crate::data::apply::is_applying_from(n))
    {
        return Ok(());
    }
    // A change applied from another peer goes on with the version it came with, which only
    // the generated function passes on: it gets every such statement.
    let applying = crate::data::apply::current_origin();
    let origin = applying.clone().unwrap_or_else(|| link.node.clone());
    let row = match applying {
        Some(_) => None,
        None => one_row(data, &origin)?,
    };
    for path in &link.paths {
        if path.capture(data, row.as_ref())? {
            break;
        }
    }
    Ok(())
}
