//! The one-row capture's writes without a plan: the version upsert and the outbox record go
//! through the table and index access methods, as logical replication's apply writes rows.
//! For one row, `INSERT … ON CONFLICT DO UPDATE … RETURNING` feeding an `INSERT` spends more
//! in executor start-up, projections and expression set-up than in the writes themselves.
//!
//! The upsert is PostgreSQL's speculative insertion (nodeModifyTable.c: ExecInsert and
//! ExecOnConflictUpdate) step for step, so it is as safe as the statement against a
//! concurrent writer of the same key: probe the key's unique index; if a committed version
//! is there, lock it and update it, starting over if it changed meanwhile; if none is,
//! insert speculatively, and if another insert of the key won the race, take ours back and
//! start over. Only READ COMMITTED transactions come here: the higher isolation levels add
//! snapshot checks to each step, and their statements keep the SQL path.
//!
//! A link whose tables or types are not exactly as sync_link_table made them (a column,
//! index, trigger or constraint added by hand) keeps the SQL path too.

use crate::pg::error::{Result, SqlError};
use crate::pg::spi::Missing;
use pgrx::prelude::*;
use std::ffi::CStr;

/// PostgreSQL answered a step of the writes as a one-row statement never makes it answer.
#[derive(thiserror::Error, Debug)]
pub enum WriterError {
    #[error("synclink: unexpected result {0} locking a version row")]
    UnexpectedLock(pg_sys::TM_Result::Type),
}

impl SqlError for WriterError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR
    }
}

/// Where each value goes, by attribute position (0-based).
struct VersionLayout {
    natts: usize,
    at: usize,
    node: usize,
    base_at: usize,
    base_node: usize,
    gen: usize,
}

/// Where a record's values go in the outbox (a record per link: `peer_name`, `link_id`) or in
/// synclink.fanout (one record for several links: `link_ids`).
struct OutboxLayout {
    natts: usize,
    seq: usize,
    peer_name: Option<usize>,
    link_id: Option<usize>,
    link_ids: Option<usize>,
    origin: usize,
    op: usize,
    new_rows: usize,
    old_rows: usize,
    stamps: usize,
    queued_at: usize,
}

/// A key column: where it is in the table's row and in the version table, and how to tell
/// whether an UPDATE kept it.
struct KeyColumn {
    position: usize,
    version_position: usize,
    /// the type's `=`, from the type cache (which lives as long as the backend)
    equal: *mut pg_sys::FmgrInfo,
    collation: pg_sys::Oid,
}

/// What a backend keeps per async link to write its changes directly.
pub struct Writer {
    version: pg_sys::Oid,
    version_key_index: pg_sys::Oid,
    version_layout: VersionLayout,
    outbox: pg_sys::Oid,
    outbox_layout: OutboxLayout,
    /// the outbox's seq sequence: the column default's nextval, without looking it up
    outbox_sequence: pg_sys::Oid,
    keys: Vec<KeyColumn>,
    /// the link's wire row type (a copy in TopMemoryContext) and, per attribute, the table
    /// row position it takes its value from
    wire: pg_sys::TupleDesc,
    wire_from: Vec<usize>,
    /// synclink.stamp (a copy) and the positions of at, node, base_at, base_node, op, gen
    stamp: pg_sys::TupleDesc,
    stamp_layout: [usize; 6],
    /// a link of the table prefers this node: each change raises its row's generation
    preferred: bool,
    /// array_out, one per element type (it keeps the element's I/O data in fn_extra), and
    /// what construct_md_array needs to know of the element type
    rows_out: Box<pg_sys::FmgrInfo>,
    stamps_out: Box<pg_sys::FmgrInfo>,
    rows_element: Element,
    stamps_element: Element,
    /// A wire column's text form may depend on search_path (a reg* type, or a type this
    /// check cannot see into): the text is then made under the capture function's path.
    needs_search_path: bool,
    /// the links the change goes to: (peer name, link id), an outbox record for each
    targets: Vec<(String, i32)>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // SAFETY: both are copies this writer made in TopMemoryContext (copy_in_top) and owns
        // alone; nothing uses them after the writer is dropped.
        unsafe {
            pg_sys::FreeTupleDesc(self.wire);
            pg_sys::FreeTupleDesc(self.stamp);
        }
    }
}

/// One attribute of a descriptor: name, type, typmod; None when dropped.
// SAFETY: callers pass a valid tuple descriptor and an `i` below its natts.
unsafe fn attribute(desc: pg_sys::TupleDesc, i: usize) -> Option<(String, pg_sys::Oid, i32)> {
    let a = &*(*desc).attrs.as_ptr().add(i);
    (!a.attisdropped).then(|| {
        let name = CStr::from_ptr(a.attname.data.as_ptr())
            .to_string_lossy()
            .into_owned();
        (name, a.atttypid, a.atttypmod)
    })
}

// SAFETY: callers pass a valid tuple descriptor; only its natts attributes are read.
unsafe fn position(desc: pg_sys::TupleDesc, name: &str) -> Option<usize> {
    (0..(*desc).natts as usize).find(|&i| attribute(desc, i).is_some_and(|a| a.0 == name))
}

/// Whether a descriptor's live attributes are exactly `expected`, in any order.
// SAFETY: callers pass a valid tuple descriptor.
unsafe fn has_exactly(desc: pg_sys::TupleDesc, expected: &[&str]) -> bool {
    let mut names: Vec<String> = (0..(*desc).natts as usize)
        .filter_map(|i| attribute(desc, i).map(|a| a.0))
        .collect();
    let mut expected: Vec<&str> = expected.to_vec();
    names.sort();
    expected.sort_unstable();
    names == expected
}

// SAFETY: callers pass a relation they hold open, so its descriptor is valid.
unsafe fn has_checks(rel: pg_sys::Relation) -> bool {
    let constr = (*(*rel).rd_att).constr;
    !constr.is_null() && (*constr).num_check > 0
}

fn text_depends_on_search_path(typid: pg_sys::Oid) -> bool {
    // SAFETY: both take a type's OID by value and look it up in the syscache, raising an
    // ERROR for one that does not exist.
    let scalar = unsafe {
        let base = pg_sys::getBaseType(typid);
        let element = pg_sys::get_element_type(base);
        if element == pg_sys::InvalidOid {
            base
        } else {
            pg_sys::getBaseType(element)
        }
    };
    u32::from(scalar) >= pg_sys::FirstNormalObjectId
        || crate::pg::ffi::OID_ALIAS_TYPES.contains(&scalar)
}

fn array_out() -> Box<pg_sys::FmgrInfo> {
    // SAFETY: a zeroed FmgrInfo is the blank fmgr_info_cxt fills in; array_out is built in,
    // and what it keeps in fn_extra goes to TopMemoryContext, which outlives the writer.
    let mut f: Box<pg_sys::FmgrInfo> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: as above; `f` is boxed, so the address fmgr_info_cxt fills in never moves.
    unsafe {
        pg_sys::fmgr_info_cxt(
            pg_sys::Oid::from(pg_sys::F_ARRAY_OUT),
            &mut *f,
            pg_sys::TopMemoryContext,
        )
    };
    f
}

// SAFETY: callers pass a valid descriptor; the copy, in TopMemoryContext, is theirs to free.
unsafe fn copy_in_top(desc: pg_sys::TupleDesc) -> pg_sys::TupleDesc {
    let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
    let copy = pg_sys::CreateTupleDescCopy(desc);
    pg_sys::MemoryContextSwitchTo(old);
    copy
}

/// What load() needs to know of a table's links.
pub struct LinkTables<'a> {
    /// the links the table's changes go to: (peer name, link id)
    pub targets: &'a [(String, i32)],
    pub table: pg_sys::Oid,
    pub version: pg_sys::Oid,
    pub wire_type: pg_sys::Oid,
    pub stamp_type: pg_sys::Oid,
    /// where the record goes: synclink.outbox for one link, synclink.fanout for several
    pub outbox: pg_sys::Oid,
    pub key: &'a [String],
    /// a link of the table prefers this node
    pub preferred: bool,
}

impl Writer {
    /// The writer for a link, or None when its tables are not as expected.
    pub fn load(l: &LinkTables) -> Option<Writer> {
        // SAFETY: table_open raises an ERROR for a relation that is not there; the three stay
        // open, locked, while inspect reads their descriptors, and are closed here after it.
        unsafe {
            let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
            let table = pg_sys::table_open(l.table, lock);
            let version = pg_sys::table_open(l.version, lock);
            let outbox = pg_sys::table_open(l.outbox, lock);
            let writer = Self::inspect(l, table, version, outbox);
            pg_sys::table_close(outbox, lock);
            pg_sys::table_close(version, lock);
            pg_sys::table_close(table, lock);
            writer
        }
    }

    // SAFETY: callers pass the link's table, version table and outbox, open for the call.
    unsafe fn inspect(
        l: &LinkTables,
        table: pg_sys::Relation,
        version: pg_sys::Relation,
        outbox: pg_sys::Relation,
    ) -> Option<Writer> {
        let table_desc = (*table).rd_att;
        let version_desc = (*version).rd_att;

        // the version table: the key columns, of the table's types, and the five version
        // columns; its primary key its only index; no triggers or checks
        let version_columns = [
            "synclink$at",
            "synclink$node",
            "synclink$base_at",
            "synclink$base_node",
            "synclink$gen",
        ];
        let mut expected: Vec<&str> = l.key.iter().map(String::as_str).collect();
        expected.extend(version_columns);
        if !has_exactly(version_desc, &expected)
            || (*(*version).rd_rel).relhastriggers
            || has_checks(version)
        {
            return None;
        }
        let indexes = pg_sys::RelationGetIndexList(version);
        let key_index = pg_sys::RelationGetPrimaryKeyIndex(version);
        if indexes.is_null() || (*indexes).length != 1 || key_index == pg_sys::InvalidOid {
            return None;
        }
        let mut keys = Vec::new();
        for k in l.key {
            let v = position(version_desc, k)?;
            let t = position(table_desc, k)?;
            let (_, vtype, _) = attribute(version_desc, v)?;
            let (_, ttype, _) = attribute(table_desc, t)?;
            if vtype != ttype {
                return None;
            }
            let cache = pg_sys::lookup_type_cache(ttype, pg_sys::TYPECACHE_EQ_OPR_FINFO as i32);
            if (*cache).eq_opr_finfo.fn_oid == pg_sys::InvalidOid {
                return None;
            }
            let a = &*(*table_desc).attrs.as_ptr().add(t);
            keys.push(KeyColumn {
                position: t,
                version_position: v,
                equal: &mut (*cache).eq_opr_finfo,
                collation: a.attcollation,
            });
        }
        let version_layout = VersionLayout {
            natts: (*version_desc).natts as usize,
            at: position(version_desc, version_columns[0])?,
            node: position(version_desc, version_columns[1])?,
            base_at: position(version_desc, version_columns[2])?,
            base_node: position(version_desc, version_columns[3])?,
            gen: position(version_desc, version_columns[4])?,
        };

        // the outbox (or, for several links, synclink.fanout): exactly its columns, no row
        // triggers, no checks
        let outbox_desc = (*outbox).rd_att;
        let shared = l.targets.len() > 1;
        let columns: &[&str] = if shared {
            &[
                "seq",
                "link_ids",
                "origin",
                "op",
                "new_rows",
                "old_rows",
                "stamps",
                "queued_at",
            ]
        } else {
            &[
                "seq",
                "peer_name",
                "link_id",
                "origin",
                "op",
                "new_rows",
                "old_rows",
                "stamps",
                "queued_at",
                "reason",
            ]
        };
        let triggers = (*outbox).trigdesc;
        if !has_exactly(outbox_desc, columns)
            || has_checks(outbox)
            || (!triggers.is_null()
                && ((*triggers).trig_insert_before_row || (*triggers).trig_insert_after_row))
        {
            return None;
        }
        let at = |name: &str| position(outbox_desc, name);
        let outbox_layout = OutboxLayout {
            natts: (*outbox_desc).natts as usize,
            seq: at("seq")?,
            peer_name: at("peer_name"),
            link_id: at("link_id"),
            link_ids: at("link_ids"),
            origin: at("origin")?,
            op: at("op")?,
            new_rows: at("new_rows")?,
            old_rows: at("old_rows")?,
            stamps: at("stamps")?,
            queued_at: at("queued_at")?,
        };

        // the wire type: table columns of the same types and typmods, so that building it
        // from the row's values is what `ROW(…)::wire_type` does
        let wire = pg_sys::lookup_rowtype_tupdesc(l.wire_type, -1);
        let mut wire_from = Vec::new();
        let mut needs_search_path = false;
        let mut fits = true;
        for i in 0..(*wire).natts as usize {
            let Some((name, typid, typmod)) = attribute(wire, i) else {
                fits = false;
                break;
            };
            match position(table_desc, &name).and_then(|t| Some((t, attribute(table_desc, t)?))) {
                Some((t, (_, ttype, tmod))) if ttype == typid && tmod == typmod => {
                    wire_from.push(t);
                    needs_search_path |= text_depends_on_search_path(typid);
                }
                _ => {
                    fits = false;
                    break;
                }
            }
        }
        let wire_copy = fits.then(|| copy_in_top(wire));
        pg_sys::DecrTupleDescRefCount(wire);
        let wire = wire_copy?;

        let looked_up = pg_sys::lookup_rowtype_tupdesc(l.stamp_type, -1);
        let layout = match ["at", "node", "base_at", "base_node", "op", "gen"]
            .map(|n| position(looked_up, n))
        {
            [Some(at), Some(node), Some(base_at), Some(base_node), Some(op), Some(gen)]
                if (*looked_up).natts == 6 =>
            {
                Some([at, node, base_at, base_node, op, gen])
            }
            _ => None,
        };
        let stamp = layout.map(|layout| (copy_in_top(looked_up), layout));
        pg_sys::DecrTupleDescRefCount(looked_up);
        let (stamp, stamp_layout) = stamp?;

        Some(Writer {
            version: l.version,
            version_key_index: key_index,
            version_layout,
            outbox: l.outbox,
            outbox_layout,
            outbox_sequence: crate::data::queue::outbox_sequence(),
            rows_element: Element::of(l.wire_type),
            stamps_element: Element::of(l.stamp_type),
            keys,
            wire,
            wire_from,
            stamp,
            stamp_layout,
            preferred: l.preferred,
            rows_out: array_out(),
            stamps_out: array_out(),
            needs_search_path,
            targets: l.targets.to_vec(),
        })
    }

    /// Queue one changed row: `row` is the new row (the old one for a DELETE), `old` the old
    /// row of an UPDATE, both values of the table's row type with nothing toasted out of
    /// line. False, with nothing written, for an UPDATE that changed the key or a row with a
    /// NULL in its key: those go the general way.
    // SAFETY: callers pass `table_desc`, the link table's descriptor, and rows of its type,
    // whole in memory; they run in the table's trigger, in a transaction with an active snapshot.
    pub unsafe fn queue(
        &self,
        op: u8,
        row: pg_sys::Datum,
        old: Option<pg_sys::Datum>,
        table_desc: pg_sys::TupleDesc,
        origin: &str,
        at: i64,
    ) -> Result<bool> {
        let (values, nulls) = deform(row, table_desc);
        // The version table's key is NOT NULL, a constraint these writes do not check: a row
        // without a key goes the general way, whose statement does.
        if self.keys.iter().any(|k| nulls[k.position]) {
            return Ok(false);
        }
        if let Some(old) = old {
            let (old_values, old_nulls) = deform(old, table_desc);
            let same = self.keys.iter().all(|k| {
                let p = k.position;
                !old_nulls[p]
                    && pg_sys::FunctionCall2Coll(k.equal, k.collation, values[p], old_values[p])
                        .value()
                        != 0
            });
            if !same {
                return Ok(false);
            }
        }
        // As SPI does for each statement that writes: what this command writes is new to it.
        pg_sys::CommandCounterIncrement();
        let origin_datum = crate::pg::ffi::text_datum(origin);
        let stamp = self.upsert_version(&values, &nulls, at, origin_datum)?;

        let text = || self.row_text(&values, &nulls);
        let rows = if self.needs_search_path {
            crate::pg::plan::with_settings(&[crate::data::wire::SEARCH_PATH], text)
        } else {
            text()
        };
        let stamps = self.stamp_text(&stamp, op);
        self.insert_outbox(op, origin_datum, rows, stamps);
        Ok(true)
    }

    /// `ARRAY[ROW(…)::wire_type]::text` of the row.
    // SAFETY: callers pass the values and nulls of a row of the link's table (deform).
    unsafe fn row_text(&self, values: &[pg_sys::Datum], nulls: &[bool]) -> pg_sys::Datum {
        let mut wire_values: Vec<pg_sys::Datum> =
            self.wire_from.iter().map(|&p| values[p]).collect();
        let mut wire_nulls: Vec<bool> = self.wire_from.iter().map(|&p| nulls[p]).collect();
        let tuple =
            pg_sys::heap_form_tuple(self.wire, wire_values.as_mut_ptr(), wire_nulls.as_mut_ptr());
        one_element_array_text(
            pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data),
            &self.rows_element,
            &self.rows_out,
        )
    }

    /// `ARRAY[ROW(at, node, base_at, base_node, op, gen)::synclink.stamp]::text`.
    // SAFETY: callers pass a version upsert_version returned, its node datums still valid.
    unsafe fn stamp_text(&self, v: &Version, op: u8) -> pg_sys::Datum {
        let n = (*self.stamp).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0); n];
        let mut nulls = vec![false; n];
        let [at, node, base_at, base_node, op_at, gen] = self.stamp_layout;
        values[at] = v.at.into();
        values[node] = v.node;
        values[gen] = v.gen.into();
        match v.base {
            Some((a, n)) => {
                values[base_at] = a.into();
                values[base_node] = n;
            }
            None => {
                nulls[base_at] = true;
                nulls[base_node] = true;
            }
        }
        values[op_at] = pg_sys::Datum::from(op as i8);
        let tuple = pg_sys::heap_form_tuple(self.stamp, values.as_mut_ptr(), nulls.as_mut_ptr());
        one_element_array_text(
            pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data),
            &self.stamps_element,
            &self.stamps_out,
        )
    }

    /// The generation of a key's first version: 1 on a node a link of the table prefers.
    fn first_generation(&self) -> i64 {
        i64::from(self.preferred)
    }

    /// The version upsert: a new version for the row's key, its previous one kept as the base.
    // SAFETY: as for queue: values and nulls of a row of the link's table, `node` a text datum,
    // inside the table's trigger.
    unsafe fn upsert_version(
        &self,
        values: &[pg_sys::Datum],
        nulls: &[bool],
        at: i64,
        node: pg_sys::Datum,
    ) -> Result<Version> {
        let layout = &self.version_layout;
        let target = Target::open(self.version, true);
        let version = loop {
            pg_sys::check_for_interrupts!();
            let slot = target.slot();
            let (v, n) = slot_arrays(slot, layout.natts);
            n.fill(true);
            for k in &self.keys {
                v[k.version_position] = values[k.position];
                n[k.version_position] = nulls[k.position];
            }
            v[layout.at] = at.into();
            n[layout.at] = false;
            v[layout.node] = node;
            n[layout.node] = false;
            v[layout.gen] = self.first_generation().into();
            n[layout.gen] = false;
            pg_sys::ExecStoreVirtualTuple(slot);

            let arbiters = pg_sys::lappend_oid(std::ptr::null_mut(), self.version_key_index);
            let mut conflict: pg_sys::ItemPointerData = std::mem::zeroed();
            if !pg_sys::ExecCheckIndexConstraints(
                target.info,
                slot,
                target.estate,
                &mut conflict,
                arbiters,
            ) {
                // a committed version is there: update it, unless it changed meanwhile
                let updated = self.update_version(&target, &mut conflict, at, node);
                pg_sys::ExecDropSingleTupleTableSlot(slot);
                match updated {
                    Ok(Some(version)) => break version,
                    Ok(None) => continue,
                    Err(e) => {
                        target.close();
                        return Err(e);
                    }
                }
            }
            let xid = pg_sys::GetCurrentTransactionId();
            let token = pg_sys::SpeculativeInsertionLockAcquire(xid);
            pg_sys::table_tuple_insert_speculative(
                target.rel,
                slot,
                (*target.estate).es_output_cid,
                0,
                std::ptr::null_mut(),
                token,
            );
            let mut lost = false;
            let recheck = pg_sys::ExecInsertIndexTuples(
                target.info,
                slot,
                target.estate,
                false,
                true,
                &mut lost,
                arbiters,
            );
            pg_sys::table_tuple_complete_speculative(target.rel, slot, token, !lost);
            pg_sys::SpeculativeInsertionLockRelease(xid);
            pg_sys::list_free(recheck);
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            if !lost {
                break Version {
                    at,
                    node,
                    base: None,
                    gen: self.first_generation(),
                };
            }
        };
        target.close();
        Ok(version)
    }

    /// ExecOnConflictUpdate for the version row at `tid`: lock it, then set the new version
    /// (bumped past the one it had) and keep the one it had as the base. None when the row
    /// changed or went away before it could be locked: the caller starts over.
    // SAFETY: callers pass the open version table and the tid of a version row its key index
    // just found; `node` is a text datum.
    unsafe fn update_version(
        &self,
        target: &Target,
        tid: &mut pg_sys::ItemPointerData,
        at: i64,
        node: pg_sys::Datum,
    ) -> Result<Option<Version>> {
        let layout = &self.version_layout;
        let existing = target.slot();
        let mut failure: pg_sys::TM_FailureData = std::mem::zeroed();
        let locked = pg_sys::table_tuple_lock(
            target.rel,
            tid,
            (*target.estate).es_snapshot,
            existing,
            (*target.estate).es_output_cid,
            pg_sys::LockTupleMode::LockTupleNoKeyExclusive,
            pg_sys::LockWaitPolicy::LockWaitBlock,
            0,
            &mut failure,
        );
        match locked {
            pg_sys::TM_Result::TM_Ok => {}
            pg_sys::TM_Result::TM_Updated | pg_sys::TM_Result::TM_Deleted => {
                pg_sys::ExecDropSingleTupleTableSlot(existing);
                return Ok(None);
            }
            // The version was written by this very command: a second change to one key in
            // one statement, which a one-row statement cannot make.
            other => {
                pg_sys::ExecDropSingleTupleTableSlot(existing);
                return Err(WriterError::UnexpectedLock(other).into());
            }
        }
        pg_sys::slot_getallattrs(existing);
        let (old_values, old_nulls) = slot_arrays(existing, layout.natts);
        let Some(old_at) = i64::from_datum(old_values[layout.at], old_nulls[layout.at]) else {
            pg_sys::ExecDropSingleTupleTableSlot(existing);
            return Err(Missing("version of a row (synclink$at)").into());
        };
        let old_node = old_values[layout.node];
        let gen = i64::from_datum(old_values[layout.gen], old_nulls[layout.gen]).unwrap_or(0)
            + i64::from(self.preferred);

        let slot = target.slot();
        let (v, n) = slot_arrays(slot, layout.natts);
        v.copy_from_slice(old_values);
        n.copy_from_slice(old_nulls);
        let new_at = at.max(old_at + 1);
        v[layout.at] = new_at.into();
        v[layout.node] = node;
        n[layout.node] = false;
        v[layout.base_at] = old_at.into();
        n[layout.base_at] = false;
        v[layout.base_node] = old_node;
        n[layout.base_node] = false;
        v[layout.gen] = gen.into();
        n[layout.gen] = false;
        pg_sys::ExecStoreVirtualTuple(slot);
        // the new version is formed (copied out of the old row's page) before the update
        pg_sys::ExecMaterializeSlot(slot);
        let old_node = pg_sys::Datum::from(pg_sys::pg_detoast_datum_copy(old_node.cast_mut_ptr()));

        let mut update_indexes = false;
        pg_sys::simple_table_tuple_update(
            target.rel,
            tid,
            slot,
            (*target.estate).es_snapshot,
            &mut update_indexes,
        );
        if update_indexes {
            target.insert_index_entries(slot, true);
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::ExecDropSingleTupleTableSlot(existing);
        Ok(Some(Version {
            at: new_at,
            node,
            base: Some((old_at, old_node)),
            gen,
        }))
    }

    /// The change's record: in the outbox for one link, or once in synclink.fanout for several
    /// (the worker hands it on to each peer's queue), through one opening of the table and its
    /// index.
    // SAFETY: callers pass text datums valid in the current memory context, inside the
    // table's trigger (a transaction with an active snapshot).
    unsafe fn insert_outbox(
        &self,
        op: u8,
        origin: pg_sys::Datum,
        rows: pg_sys::Datum,
        stamps: pg_sys::Datum,
    ) {
        let layout = &self.outbox_layout;
        let target = Target::open(self.outbox, false);
        let slot = target.slot();
        let (v, n) = slot_arrays(slot, layout.natts);
        n.fill(true);
        let mut set = |i: usize, d: pg_sys::Datum| {
            v[i] = d;
            n[i] = false;
        };
        set(
            layout.seq,
            crate::data::queue::next_seq(self.outbox_sequence).into(),
        );
        match (layout.link_ids, layout.peer_name, layout.link_id) {
            (Some(link_ids), _, _) => set(link_ids, self.link_ids()),
            (None, Some(peer_name), Some(link_id)) => {
                let (peer, id) = &self.targets[0];
                set(peer_name, crate::pg::ffi::text_datum(peer));
                set(link_id, (*id).into());
            }
            // inspect() makes a layout with one or the other
            _ => {}
        }
        set(layout.origin, origin);
        set(layout.op, pg_sys::Datum::from(op as i8));
        set(
            if op == b'D' {
                layout.old_rows
            } else {
                layout.new_rows
            },
            rows,
        );
        set(layout.stamps, stamps);
        // the column's default, clock_timestamp()
        set(layout.queued_at, crate::pg::ffi::now_timestamptz().into());
        pg_sys::ExecStoreVirtualTuple(slot);
        pg_sys::simple_table_tuple_insert(target.rel, slot);
        target.insert_index_entries(slot, false);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        target.close();
    }

    /// The ids of the links a record for several goes to, as an int[] in the current memory
    /// context.
    // SAFETY: callers run in a transaction, where construct_array may allocate.
    unsafe fn link_ids(&self) -> pg_sys::Datum {
        let mut ids: Vec<pg_sys::Datum> = self
            .targets
            .iter()
            .map(|(_, id)| pg_sys::Datum::from(*id))
            .collect();
        let array = pg_sys::construct_array(
            ids.as_mut_ptr(),
            ids.len() as i32,
            pg_sys::INT4OID,
            4,
            true,
            b'i' as std::ffi::c_char,
        );
        pg_sys::Datum::from(array)
    }
}

/// A version row as the upsert left it.
struct Version {
    at: i64,
    node: pg_sys::Datum,
    base: Option<(i64, pg_sys::Datum)>,
    gen: i64,
}

/// A relation opened for writing, with its indexes and the executor state index inserts
/// need.
struct Target {
    rel: pg_sys::Relation,
    info: *mut pg_sys::ResultRelInfo,
    estate: *mut pg_sys::EState,
}

impl Target {
    // SAFETY: callers run inside a transaction with an active snapshot and close the target
    // before it ends; table_open raises an ERROR for a relation that is not there.
    unsafe fn open(relid: pg_sys::Oid, speculative: bool) -> Target {
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let estate = pg_sys::CreateExecutorState();
        (*estate).es_output_cid = pg_sys::GetCurrentCommandId(true);
        (*estate).es_snapshot = pg_sys::GetActiveSnapshot();
        let info = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
            as *mut pg_sys::ResultRelInfo;
        pg_sys::InitResultRelInfo(info, rel, 0, std::ptr::null_mut(), 0);
        pg_sys::ExecOpenIndices(info, speculative);
        Target { rel, info, estate }
    }

    /// Index entries for the row just written from `slot` (a new row, or the new version of
    /// an `update`d one that was not a HOT update).
    // SAFETY: callers pass a slot holding the row just written to this target's relation.
    unsafe fn insert_index_entries(&self, slot: *mut pg_sys::TupleTableSlot, update: bool) {
        let recheck = pg_sys::ExecInsertIndexTuples(
            self.info,
            slot,
            self.estate,
            update,
            false,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        pg_sys::list_free(recheck);
    }

    // SAFETY: callers use the target while it is open and drop the slot themselves.
    unsafe fn slot(&self) -> *mut pg_sys::TupleTableSlot {
        pg_sys::MakeSingleTupleTableSlot((*self.rel).rd_att, pg_sys::table_slot_callbacks(self.rel))
    }

    /// The lock is kept to the end of the transaction, as the executor keeps it.
    // SAFETY: callers have dropped every slot made for the target; it is consumed here.
    unsafe fn close(self) {
        pg_sys::ExecCloseIndices(self.info);
        pg_sys::FreeExecutorState(self.estate);
        pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
}

/// A slot's value and null arrays, cleared for filling.
// SAFETY: callers pass a slot with `natts` attributes and use the slices only while it lives.
unsafe fn slot_arrays<'a>(
    slot: *mut pg_sys::TupleTableSlot,
    natts: usize,
) -> (&'a mut [pg_sys::Datum], &'a mut [bool]) {
    (
        std::slice::from_raw_parts_mut((*slot).tts_values, natts),
        std::slice::from_raw_parts_mut((*slot).tts_isnull, natts),
    )
}

/// The attributes of a composite value.
// SAFETY: callers pass a composite value of `desc`'s type, whole in memory (not toasted).
unsafe fn deform(datum: pg_sys::Datum, desc: pg_sys::TupleDesc) -> (Vec<pg_sys::Datum>, Vec<bool>) {
    let header = datum.cast_mut_ptr::<pg_sys::HeapTupleHeaderData>();
    let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
    tuple.t_len = pgrx::heap_tuple_header_get_datum_length(header) as u32;
    tuple.t_data = header;
    let n = (*desc).natts as usize;
    let mut values = vec![pg_sys::Datum::from(0); n];
    let mut nulls = vec![false; n];
    pg_sys::heap_deform_tuple(&mut tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
    (values, nulls)
}

/// An array element type's storage.
struct Element {
    oid: pg_sys::Oid,
    len: i16,
    byval: bool,
    align: std::ffi::c_char,
}

impl Element {
    fn of(oid: pg_sys::Oid) -> Element {
        let mut e = Element {
            oid,
            len: 0,
            byval: false,
            align: 0,
        };
        // SAFETY: it writes three plain fields of `e`; an unknown type raises an ERROR.
        unsafe { pg_sys::get_typlenbyvalalign(oid, &mut e.len, &mut e.byval, &mut e.align) };
        e
    }
}

/// `ARRAY[value]::text` for a composite `value` of type `element`.
// SAFETY: callers pass a composite value of the element type and array_out's FmgrInfo.
unsafe fn one_element_array_text(
    value: pg_sys::Datum,
    element: &Element,
    array_out: &pg_sys::FmgrInfo,
) -> pg_sys::Datum {
    let mut elements = [value];
    let mut dims = [1];
    let mut lower = [1];
    let array = pg_sys::construct_md_array(
        elements.as_mut_ptr(),
        std::ptr::null_mut(),
        1,
        dims.as_mut_ptr(),
        lower.as_mut_ptr(),
        element.oid,
        element.len as i32,
        element.byval,
        element.align,
    );
    let text = pg_sys::OutputFunctionCall(
        array_out as *const pg_sys::FmgrInfo as *mut pg_sys::FmgrInfo,
        pg_sys::Datum::from(array),
    );
    pg_sys::Datum::from(pg_sys::cstring_to_text(text))
}
