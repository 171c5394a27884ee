//! Rows in COPY's own formats, in memory: written from an open cursor, one batch at a time,
//! and read into a table by COPY FROM itself (its multi-row inserts, its input functions), so
//! that a bulk copy between nodes costs what COPY costs at each end.
//!
//! The binary format carries each value as its type's send function wrote it: no text to
//! print or parse, but only for types whose binary form means the same in another database
//! ([`Format::for_types`]); the text format carries what the output functions print. Either
//! way a batch says which encoding its text is in, and the reading end converts from it.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::{CStr, CString};

/// How a batch's values are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Binary,
    Text,
}

/// The binary format's fixed header: signature, flags (none), header extension (none).
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
const TRAILER: &[u8] = &[0xff, 0xff];

impl Format {
    /// Binary when every type's binary form is read the same by another database: built-in
    /// types (and arrays of them, ranges of them), enums (sent as their label) and domains over
    /// those, each with a send and a receive function. A composite's or an array's binary form
    /// names its members' types by OID, which differs between databases for a type made there,
    /// and so does the value of an OID alias type (regclass, regtype, …): those travel as text.
    pub fn for_types(types: &[pg_sys::Oid]) -> Format {
        if types.iter().all(|&t| portable(t)) {
            Format::Binary
        } else {
            Format::Text
        }
    }
}

/// Does a value of type `t` mean the same in binary in another database? (See
/// [`Format::for_types`].)
fn portable(t: pg_sys::Oid) -> bool {
    let has_io = |typid: pg_sys::Oid| {
        [
            pg_sys::IOFuncSelector::IOFunc_send,
            pg_sys::IOFuncSelector::IOFunc_receive,
        ]
        .iter()
        .all(|&which| {
            let (mut len, mut byval, mut align, mut delim) =
                (0i16, false, 0 as std::ffi::c_char, 0 as std::ffi::c_char);
            let (mut ioparam, mut func) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
            // SAFETY: get_type_io_data only fills the locals for an existing type (a column's),
            // with InvalidOid for a function the type does not have.
            unsafe {
                pg_sys::get_type_io_data(
                    typid,
                    which,
                    &mut len,
                    &mut byval,
                    &mut align,
                    &mut delim,
                    &mut ioparam,
                    &mut func,
                )
            };
            func != pg_sys::InvalidOid
        })
    };
    // SAFETY: getBaseType and get_typtype read the type cache for an existing type (an
    // unknown one raises an ERROR); get_element_type returns InvalidOid for a type that is
    // not an array.
    let (base, kind, elem) = unsafe {
        let base = pg_sys::getBaseType(t);
        (
            base,
            pg_sys::get_typtype(base) as u8,
            pg_sys::get_element_type(base),
        )
    };
    if !has_io(t) || !has_io(base) {
        return false;
    }
    if kind == b'e' {
        return true;
    }
    let built_in = |typid: pg_sys::Oid| {
        u32::from(typid) < pg_sys::FirstNormalObjectId
            && !crate::pg::ffi::OID_ALIAS_TYPES.contains(&typid)
    };
    built_in(base)
        && matches!(kind, b'b' | b'r' | b'm')
        && (elem == pg_sys::InvalidOid || built_in(elem))
}

#[derive(thiserror::Error, Debug)]
pub enum CopyError {
    #[error("rows cannot be copied into a table whose row-level security applies to its owner")]
    RowSecurity,
    #[error("COPY ended before the end of a batch of rows")]
    Unread,
}

impl crate::pg::error::SqlError for CopyError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            CopyError::RowSecurity => PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            CopyError::Unread => PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            CopyError::RowSecurity => "Copy its rows by hand, or ALTER TABLE … NO FORCE ROW LEVEL SECURITY while they are copied.".into(),
            CopyError::Unread => "The batch is not well formed: the two nodes may run different synclink versions.".into(),
        })
    }
}

/// One batch of rows in a [`Format`], ready to send.
pub struct Batch {
    pub data: Vec<u8>,
    pub rows: usize,
    pub format: Format,
}

/// Writes the rows of an open cursor, a batch at a time, in the format their types allow
/// ([`Format::for_types`]).
pub struct Writer {
    format: Format,
    /// each column's send (binary) or output (text) function, looked up at the first batch
    functions: Vec<pg_sys::FmgrInfo>,
    /// where the functions keep what they cache: the writer's caller's memory context
    context: pg_sys::MemoryContext,
}

impl Default for Writer {
    fn default() -> Self {
        Writer {
            format: Format::Text,
            functions: Vec::new(),
            // SAFETY: a plain read of this backend's current memory context.
            context: unsafe { pg_sys::CurrentMemoryContext },
        }
    }
}

impl Writer {
    /// Fetch up to `limit` rows from the open cursor `cursor`, or as many as weigh
    /// `max_bytes` (at least one), and write them; None when it has no rows left.
    pub fn next(&mut self, cursor: &str, limit: i64, max_bytes: usize) -> Option<Batch> {
        const CHUNK: i64 = 1_000;
        let name = CString::new(cursor).unwrap_or_default();
        let mut data = Vec::new();
        let mut rows = 0usize;
        Spi::connect(|_| {
            // SAFETY: inside this SPI connection, SPI_cursor_find returns the portal of that
            // name or NULL (checked).
            let portal = unsafe { pg_sys::SPI_cursor_find(name.as_ptr()) };
            if portal.is_null() {
                return;
            }
            while (rows as i64) < limit && data.len() < max_bytes {
                let want = (limit - rows as i64).min(CHUNK);
                // SAFETY: SPI_cursor_fetch leaves the rows in SPI_tuptable, read at once
                // into locals; the table is freed below, once its rows are written.
                let (table, count) = unsafe {
                    pg_sys::SPI_cursor_fetch(portal, true, want as std::ffi::c_long);
                    (pg_sys::SPI_tuptable, pg_sys::SPI_processed as usize)
                };
                if count == 0 || table.is_null() {
                    break;
                }
                // SAFETY: `table` is the tuple table just fetched, with its descriptor.
                let (desc, natts) =
                    unsafe { ((*table).tupdesc, (*(*table).tupdesc).natts as usize) };
                if self.functions.is_empty() {
                    self.look_up(desc, natts);
                    if self.format == Format::Binary {
                        data.extend_from_slice(HEADER);
                    }
                }
                let mut values = vec![pg_sys::Datum::from(0usize); natts];
                let mut nulls = vec![false; natts];
                for i in 0..count {
                    // SAFETY: i < count rows of the table; heap_deform_tuple fills exactly
                    // natts values and flags, which the two vectors hold.
                    unsafe {
                        let tuple = *(*table).vals.add(i);
                        pg_sys::heap_deform_tuple(
                            tuple,
                            desc,
                            values.as_mut_ptr(),
                            nulls.as_mut_ptr(),
                        );
                    }
                    self.write_row(&values, &nulls, &mut data);
                }
                rows += count;
                // SAFETY: the table came from this connection's fetch and is not read again.
                unsafe { pg_sys::SPI_freetuptable(table) };
                if (count as i64) < want {
                    break;
                }
            }
        });
        if rows == 0 {
            return None;
        }
        if self.format == Format::Binary {
            data.extend_from_slice(TRAILER);
        }
        Some(Batch {
            data,
            rows,
            format: self.format,
        })
    }

    fn look_up(&mut self, desc: pg_sys::TupleDesc, natts: usize) {
        // SAFETY: i < natts attributes of the descriptor.
        let types: Vec<pg_sys::Oid> = (0..natts)
            .map(|i| unsafe { (*(*desc).attrs.as_ptr().add(i)).atttypid })
            .collect();
        self.format = Format::for_types(&types);
        for &typid in &types {
            // SAFETY: the lookups read the type cache and fill the two locals; fmgr_info_cxt
            // fills the FmgrInfo, keeping what it caches in the writer's context, which
            // outlives every batch.
            unsafe {
                let mut func = pg_sys::InvalidOid;
                let mut varlena = false;
                match self.format {
                    Format::Binary => {
                        pg_sys::getTypeBinaryOutputInfo(typid, &mut func, &mut varlena)
                    }
                    Format::Text => pg_sys::getTypeOutputInfo(typid, &mut func, &mut varlena),
                }
                let mut f = pg_sys::FmgrInfo::default();
                pg_sys::fmgr_info_cxt(func, &mut f, self.context);
                self.functions.push(f);
            }
        }
    }

    fn write_row(&mut self, values: &[pg_sys::Datum], nulls: &[bool], data: &mut Vec<u8>) {
        match self.format {
            Format::Binary => {
                data.extend_from_slice(&(values.len() as i16).to_be_bytes());
                for (i, f) in self.functions.iter_mut().enumerate() {
                    if nulls[i] {
                        data.extend_from_slice(&(-1i32).to_be_bytes());
                        continue;
                    }
                    // SAFETY: a send function returns a new, untoasted bytea (4-byte header)
                    // in the current memory context, read at once and freed.
                    unsafe {
                        let sent = pg_sys::SendFunctionCall(f, values[i]);
                        let len = pgrx::varlena::varsize_any_exhdr(sent.cast());
                        let bytes = std::slice::from_raw_parts(
                            pgrx::varlena::vardata_any(sent.cast()).cast::<u8>(),
                            len,
                        );
                        data.extend_from_slice(&(len as i32).to_be_bytes());
                        data.extend_from_slice(bytes);
                        pg_sys::pfree(sent.cast());
                    }
                }
            }
            Format::Text => {
                for (i, f) in self.functions.iter_mut().enumerate() {
                    if i > 0 {
                        data.push(b'\t');
                    }
                    if nulls[i] {
                        data.extend_from_slice(b"\\N");
                        continue;
                    }
                    // SAFETY: an output function returns a new NUL-terminated string in the
                    // current memory context, read at once and freed.
                    unsafe {
                        let text = pg_sys::OutputFunctionCall(f, values[i]);
                        for &b in CStr::from_ptr(text).to_bytes() {
                            match b {
                                b'\\' => data.extend_from_slice(b"\\\\"),
                                b'\n' => data.extend_from_slice(b"\\n"),
                                b'\r' => data.extend_from_slice(b"\\r"),
                                b'\t' => data.extend_from_slice(b"\\t"),
                                _ => data.push(b),
                            }
                        }
                        pg_sys::pfree(text.cast());
                    }
                }
                data.push(b'\n');
            }
        }
    }
}

/// The byte range of each row of a batch, to send a part of it again; None for a batch that
/// is not well formed (a field running past its end, text not ending a row).
pub fn rows_of(format: Format, data: &[u8]) -> Option<Vec<(usize, usize)>> {
    let mut rows = Vec::new();
    match format {
        Format::Text => {
            let mut start = 0;
            for (i, &b) in data.iter().enumerate() {
                if b == b'\n' {
                    rows.push((start, i + 1));
                    start = i + 1;
                }
            }
            if start != data.len() {
                return None;
            }
        }
        Format::Binary => {
            if !data.starts_with(HEADER) || !data.ends_with(TRAILER) {
                return None;
            }
            let be16 = |at: usize| {
                data.get(at..at + 2)
                    .map(|b| i16::from_be_bytes([b[0], b[1]]))
            };
            let be32 = |at: usize| {
                data.get(at..at + 4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            let mut at = HEADER.len();
            loop {
                let fields = be16(at)?;
                if fields < 0 {
                    break;
                }
                let start = at;
                at += 2;
                for _ in 0..fields {
                    let len = be32(at)?;
                    at += 4 + usize::try_from(len).unwrap_or(0);
                    if at > data.len() {
                        return None;
                    }
                }
                rows.push((start, at));
            }
            if at + TRAILER.len() != data.len() {
                return None;
            }
        }
    }
    Some(rows)
}

/// The rows `lo..=hi` (from 1) of a batch, as a batch of their own.
pub fn part(format: Format, data: &[u8], rows: &[(usize, usize)], lo: usize, hi: usize) -> Vec<u8> {
    let body = lo
        .checked_sub(1)
        .and_then(|l| rows.get(l))
        .zip(hi.checked_sub(1).and_then(|h| rows.get(h)))
        .and_then(|(first, last)| data.get(first.0..last.1))
        .unwrap_or_default();
    match format {
        Format::Text => body.to_vec(),
        Format::Binary => [HEADER, body, TRAILER].concat(),
    }
}

/// The text of field `position` (from 0) of `row` (a row's bytes, as [`rows_of`] finds them)
/// whose column is of type `typid` here: to name a refused row by its key. None for a field
/// that is not there or a value this database cannot read.
pub fn field_text(
    format: Format,
    row: &[u8],
    position: usize,
    typid: pg_sys::Oid,
) -> Option<String> {
    match format {
        Format::Text => {
            let line = row.strip_suffix(b"\n").unwrap_or(row);
            let field = line.split(|b| *b == b'\t').nth(position)?;
            if field == b"\\N" {
                return Some("NULL".into());
            }
            let mut text = Vec::with_capacity(field.len());
            let mut bytes = field.iter();
            while let Some(&b) = bytes.next() {
                if b != b'\\' {
                    text.push(b);
                    continue;
                }
                match bytes.next() {
                    Some(b'n') => text.push(b'\n'),
                    Some(b'r') => text.push(b'\r'),
                    Some(b't') => text.push(b'\t'),
                    Some(&other) => text.push(other),
                    None => {}
                }
            }
            Some(String::from_utf8_lossy(&text).into_owned())
        }
        Format::Binary => {
            let mut at = 2;
            let mut value = None;
            for i in 0..=position {
                let len = i32::from_be_bytes(row.get(at..at + 4)?.try_into().ok()?);
                at += 4;
                let len = usize::try_from(len).ok();
                if i == position {
                    value = Some(len.map(|n| row.get(at..at + n)).unwrap_or(Some(&[][..])));
                    if len.is_none() {
                        return Some("NULL".into());
                    }
                }
                at += len.unwrap_or(0);
            }
            let bytes = value??;
            let shown = crate::pg::subxact::run(|| {
                // SAFETY: the receive function reads the StringInfo over a copy of the bytes
                // (NUL-terminated, as StringInfo requires) and returns a value in the current
                // memory context, which the output function prints as a new string.
                unsafe {
                    let mut receive = pg_sys::InvalidOid;
                    let mut ioparam = pg_sys::InvalidOid;
                    pg_sys::getTypeBinaryInputInfo(typid, &mut receive, &mut ioparam);
                    let buf = pg_sys::makeStringInfo();
                    pg_sys::appendBinaryStringInfo(buf, bytes.as_ptr().cast(), bytes.len() as i32);
                    let value = pg_sys::OidReceiveFunctionCall(receive, buf, ioparam, -1);
                    let mut output = pg_sys::InvalidOid;
                    let mut varlena = false;
                    pg_sys::getTypeOutputInfo(typid, &mut output, &mut varlena);
                    CStr::from_ptr(pg_sys::OidOutputFunctionCall(output, value))
                        .to_string_lossy()
                        .into_owned()
                }
            });
            shown.ok()
        }
    }
}

thread_local! {
    /// What COPY FROM reads next: the batch being copied, and how much of it is left.
    static FEED: Cell<(*const u8, usize)> = const { Cell::new((std::ptr::null(), 0)) };
}

/// COPY FROM's source of data: the rest of [`FEED`], as much as fits.
// SAFETY: called only by the COPY that copy_from runs, with a buffer of at least `max` bytes;
// it reads nothing but FEED.
unsafe extern "C-unwind" fn feed(outbuf: *mut std::ffi::c_void, _min: i32, max: i32) -> i32 {
    FEED.with(|f| {
        let (at, left) = f.get();
        let n = left.min(usize::try_from(max).unwrap_or(0));
        if n > 0 {
            // SAFETY: `at` points into the batch that copy_from keeps alive for the whole
            // COPY, with `left` bytes after it; COPY gives a buffer of at least `max` bytes.
            unsafe { std::ptr::copy_nonoverlapping(at, outbuf.cast::<u8>(), n) };
            // SAFETY: n <= left, so this stays within (or just past the end of) the batch.
            f.set((unsafe { at.add(n) }, left - n));
        }
        n as i32
    })
}

/// COPY `data` (a batch in `format`, its text in the encoding named `encoding`) into the
/// `columns` of table `relid`, as the current role, with COPY's own checks of that role's
/// right to insert. Raises what COPY raises: the first row it cannot take fails the batch.
pub fn copy_from(
    relid: pg_sys::Oid,
    columns: &[String],
    format: Format,
    encoding: &str,
    data: &[u8],
) -> Result<u64, CopyError> {
    // SAFETY: check_enable_rls reads the relation's flags and the current role's rights; with
    // noError false it raises only for a relation that is not there, which the caller has.
    let rls = unsafe { pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, false) };
    if rls == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 {
        return Err(CopyError::RowSecurity);
    }
    // What an outer COPY of this backend was reading (a default or check of the table may
    // copy too), put back afterwards.
    struct Done((*const u8, usize));
    impl Drop for Done {
        fn drop(&mut self) {
            FEED.with(|f| f.set(self.0));
        }
    }
    let _done = Done(FEED.with(|f| f.replace((data.as_ptr(), data.len()))));
    let encoding = CString::new(encoding).unwrap_or_default();
    // A binary value's text (textrecv) is converted from the client encoding: the batch's.
    crate::pg::plan::with_settings(&[(c"client_encoding", encoding.as_c_str())], || {
        // The relation is opened and locked as COPY FROM opens it (the lock kept to the end of
        // the transaction); the parse state's one range table entry is what BeginCopyFrom
        // takes as COPY's own; an ERROR anywhere unwinds to the caller's (sub)transaction,
        // whose abort releases the relation and the COPY's memory.
        // SAFETY: as above; the option and column lists are nodes palloc'd here, and `feed`
        // reads the batch, which outlives the COPY.
        unsafe {
            // COPY's and its executor's memory go in the (sub)transaction's own context, which
            // its abort frees: a batch refused and halved does not leave them behind.
            let caller = pg_sys::MemoryContextSwitchTo(pg_sys::CurTransactionContext);
            let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
            let rel = pg_sys::table_open(relid, lock);
            let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
            let item = pg_sys::addRangeTableEntryForRelation(
                pstate,
                rel,
                lock,
                std::ptr::null_mut(),
                false,
                false,
            );
            (*(*item).p_rte).requiredPerms = pg_sys::ACL_INSERT as pg_sys::AclMode;
            pg_sys::ExecCheckRTPerms((*pstate).p_rtable, true);
            let option = |name: &CStr, value: &CStr| {
                pg_sys::makeDefElem(
                    pg_sys::pstrdup(name.as_ptr()),
                    pg_sys::makeString(pg_sys::pstrdup(value.as_ptr())).cast(),
                    -1,
                )
                .cast::<std::ffi::c_void>()
            };
            let mut options = std::ptr::null_mut();
            options = pg_sys::lappend(
                options,
                option(
                    c"format",
                    if format == Format::Binary {
                        c"binary"
                    } else {
                        c"text"
                    },
                ),
            );
            if format == Format::Text {
                options = pg_sys::lappend(options, option(c"encoding", encoding.as_c_str()));
            }
            let mut names = std::ptr::null_mut();
            for column in columns {
                let column = CString::new(column.as_str()).unwrap_or_default();
                names = pg_sys::lappend(
                    names,
                    pg_sys::makeString(pg_sys::pstrdup(column.as_ptr())).cast(),
                );
            }
            let cstate = pg_sys::BeginCopyFrom(
                pstate,
                rel,
                std::ptr::null_mut(),
                std::ptr::null(),
                false,
                Some(feed),
                names,
                options,
            );
            let copied = pg_sys::CopyFrom(cstate);
            pg_sys::EndCopyFrom(cstate);
            pg_sys::free_parsestate(pstate);
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            pg_sys::MemoryContextSwitchTo(caller);
            // COPY stops at the binary trailer, or where the data ends: all of it must be read.
            if FEED.with(|f| f.get().1) != 0 {
                return Err(CopyError::Unread);
            }
            Ok(copied)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_a_binary_batch_are_found_by_their_lengths() {
        let mut data = HEADER.to_vec();
        // (1, NULL), ("ab", "c")
        data.extend_from_slice(&[0, 2, 0, 0, 0, 1, b'1', 0xff, 0xff, 0xff, 0xff]);
        data.extend_from_slice(&[0, 2, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, b'c']);
        data.extend_from_slice(TRAILER);
        let rows = rows_of(Format::Binary, &data).unwrap();
        assert_eq!(rows.len(), 2);
        let second = part(Format::Binary, &data, &rows, 2, 2);
        assert_eq!(
            second,
            [
                HEADER,
                &[0, 2, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, b'c'][..],
                TRAILER
            ]
            .concat()
        );
        assert_eq!(rows_of(Format::Binary, &second).unwrap().len(), 1);
        // a field running past the end, a missing trailer, text not ending a row
        let mut cut = second.clone();
        cut.truncate(cut.len() - 3);
        assert_eq!(rows_of(Format::Binary, &cut), None);
        let mut long = HEADER.to_vec();
        long.extend_from_slice(&[0, 1, 0x7f, 0xff, 0xff, 0xff, b'x']);
        long.extend_from_slice(TRAILER);
        assert_eq!(rows_of(Format::Binary, &long), None);
        assert_eq!(rows_of(Format::Text, b"1\t2\n3"), None);
        assert_eq!(part(Format::Text, b"1\n", &[(0, 2)], 2, 3), b"");
    }

    #[test]
    fn rows_of_a_text_batch_end_at_unescaped_newlines() {
        let data = b"1\ta\\nb\n2\t\\N\n";
        let rows = rows_of(Format::Text, data).unwrap();
        assert_eq!(rows, vec![(0, 7), (7, 12)]);
        assert_eq!(part(Format::Text, data, &rows, 2, 2), b"2\t\\N\n");
    }
}
