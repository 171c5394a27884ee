//! The few calls into PostgreSQL's C API that several modules need, each wrapped once in a
//! safe function that says why it is sound. (The heap writer and the one-row capture keep
//! their own FFI: it is the whole of what they are.)

use pgrx::pg_sys;

/// This backend's local id of the current transaction: a key for per-transaction caches.
pub fn local_xact() -> u32 {
    // SAFETY: MyProc is this backend's PGPROC, set before any extension code runs and valid
    // for the backend's whole life; lxid is only written by this backend.
    unsafe { (*pg_sys::MyProc).lxid }
}

/// Is synclink's own extension script (CREATE or ALTER EXTENSION synclink) running in this
/// backend? (Another extension's script is not: its drops are anyone's.)
pub fn in_synclink_script() -> bool {
    // SAFETY: creating_extension and CurrentExtensionObject are plain globals PostgreSQL sets
    // around an extension script in this backend; get_extension_oid with missing_ok reads the
    // catalog and returns InvalidOid when there is no such extension.
    unsafe {
        pg_sys::creating_extension
            && pg_sys::CurrentExtensionObject
                == pg_sys::get_extension_oid(c"synclink".as_ptr(), true)
    }
}

/// Run `f` as if no extension script were running: objects it makes are not recorded as
/// members of the extension, nor their privileges as its initial ones. A link's generated
/// objects belong to the link (sync_unlink_table drops them), also when an update remakes them.
pub fn outside_extension_script<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool, pg_sys::Oid);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: as below; put back on the way out, also when `f` raises an ERROR.
            unsafe {
                pg_sys::creating_extension = self.0;
                pg_sys::CurrentExtensionObject = self.1;
            }
        }
    }
    // SAFETY: the two globals are this backend's own, read by the catalog code `f` runs in this
    // same thread; the guard restores them before anything else of the script runs.
    let _restore = unsafe {
        let saved = Restore(pg_sys::creating_extension, pg_sys::CurrentExtensionObject);
        pg_sys::creating_extension = false;
        pg_sys::CurrentExtensionObject = pg_sys::InvalidOid;
        saved
    };
    f()
}

/// This backend's slot number in the proc array (for per-backend shared memory).
pub fn proc_number() -> usize {
    // SAFETY: as for local_xact; pgprocno never changes for a backend.
    unsafe { (*pg_sys::MyProc).pgprocno as usize }
}

/// Does `typid` (a base type, array, domain…) have a default `=` operator?
pub fn has_equality(typid: pg_sys::Oid) -> bool {
    // SAFETY: lookup_type_cache returns a pointer into the backend-lifetime type cache (or
    // raises an ERROR for an unknown type); eq_opr is filled in for the flag asked.
    unsafe {
        let tc = pg_sys::lookup_type_cache(typid, pg_sys::TYPECACHE_EQ_OPR as i32);
        (*tc).eq_opr != pg_sys::InvalidOid
    }
}

/// Does `typid` have a default `>` operator (a btree ordering)?
pub fn has_ordering(typid: pg_sys::Oid) -> bool {
    // SAFETY: as for has_equality, with gt_opr filled in for TYPECACHE_GT_OPR.
    unsafe {
        let tc = pg_sys::lookup_type_cache(typid, pg_sys::TYPECACHE_GT_OPR as i32);
        (*tc).gt_opr != pg_sys::InvalidOid
    }
}

/// `text` as a `text` datum in the current memory context.
pub fn text_datum(text: &str) -> pg_sys::Datum {
    // SAFETY: cstring_to_text_with_len copies exactly `len` bytes from the pointer into a new
    // palloc'd value, so the &str need not be NUL-terminated; its length fits an i32 because
    // a value PostgreSQL handles is at most 1 GB.
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            text.as_ptr() as *const std::ffi::c_char,
            text.len() as i32,
        ))
    }
}

/// The current time as a timestamptz value (microseconds since 2000-01-01).
pub fn now_timestamptz() -> i64 {
    // SAFETY: GetCurrentTimestamp reads the clock; it has no preconditions.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Microseconds since 1970 now, as versions are stamped.
pub fn now_micros() -> i64 {
    const POSTGRES_EPOCH_AFTER_UNIX: i64 = 10_957 * 86_400 * 1_000_000;
    POSTGRES_EPOCH_AFTER_UNIX + now_timestamptz()
}

/// Is `pid` a live backend?
pub fn backend_alive(pid: i32) -> bool {
    // SAFETY: BackendPidGetProc looks the pid up in the proc array under ProcArrayLock and
    // returns NULL for a pid that is not there.
    !unsafe { pg_sys::BackendPidGetProc(pid) }.is_null()
}

/// Set the latch of backend `pid`, if it is still alive.
pub fn wake_backend(pid: i32) {
    // SAFETY: as in backend_alive; a PGPROC lives in shared memory for the server's life, so
    // the pointer stays valid even if the backend exits meanwhile, and SetLatch on a latch
    // nobody waits on is harmless.
    unsafe {
        let proc = pg_sys::BackendPidGetProc(pid);
        if !proc.is_null() {
            pg_sys::SetLatch(&mut (*proc).procLatch);
        }
    }
}

/// The node tags of the statements `sql` holds, as the parser reads them; None when it does not
/// parse.
pub fn statement_tags(sql: &str) -> Option<Vec<pg_sys::NodeTag>> {
    let text = std::ffi::CString::new(sql).ok()?;
    crate::pg::subxact::run(|| {
        // SAFETY: raw_parser reads the NUL-terminated text (raising an ERROR, caught above,
        // when it does not parse) and returns a List of RawStmt nodes in the current memory
        // context, each read once here.
        unsafe {
            let list = pg_sys::raw_parser(text.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
            if list.is_null() {
                return Vec::new();
            }
            (0..(*list).length as usize)
                .map(|i| {
                    let raw = (*(*list).elements.add(i))
                        .ptr_value
                        .cast::<pg_sys::RawStmt>();
                    (*(*raw).stmt).type_
                })
                .collect()
        }
    })
    .ok()
}
