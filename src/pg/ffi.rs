//! The few calls into PostgreSQL's C API that several modules need, each wrapped once in a
//! safe function that says why it is sound. (The heap writer and the one-row capture keep
//! their own FFI: it is the whole of what they are.)

use pgrx::pg_sys;

/// The OID alias types (regclass, regtype, …): their value is an object's OID, which differs
/// between databases, and their text form names the object, which depends on search_path.
pub const OID_ALIAS_TYPES: [pg_sys::Oid; 11] = [
    pg_sys::REGPROCOID,
    pg_sys::REGPROCEDUREOID,
    pg_sys::REGOPEROID,
    pg_sys::REGOPERATOROID,
    pg_sys::REGCLASSOID,
    pg_sys::REGTYPEOID,
    pg_sys::REGROLEOID,
    pg_sys::REGNAMESPACEOID,
    pg_sys::REGCONFIGOID,
    pg_sys::REGDICTIONARYOID,
    pg_sys::REGCOLLATIONOID,
];

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

/// What one statement makes or changes, as the parser reads it (names as written, without
/// looking anything up).
#[derive(Debug, Default, PartialEq)]
pub struct Statement {
    pub tag: Option<pg_sys::NodeTag>,
    /// the object it makes or changes: its name's parts (schema, name)
    pub target: Vec<String>,
    /// the table an index, a trigger or a constraint is on
    pub on: Vec<String>,
    /// a constraint's or a trigger's own name
    pub member: Option<String>,
    /// CREATE OR REPLACE
    pub replace: bool,
    /// a function that runs as its owner (SECURITY DEFINER)
    pub definer: bool,
    /// ALTER TABLE that only adds constraints
    pub adds_only: bool,
    /// CREATE TABLE … INHERITS, PARTITION OF or OF a type; CREATE SCHEMA with statements of
    /// its own or another owner; any IF NOT EXISTS (which passes over an object that is there)
    pub derived: bool,
}

/// The one statement `sql` holds; None when it holds another number of statements or does
/// not parse.
pub fn statement(sql: &str) -> Option<Statement> {
    let text = std::ffi::CString::new(sql).ok()?;
    crate::pg::subxact::run(|| {
        // SAFETY: raw_parser reads the NUL-terminated text (raising an ERROR, caught above,
        // when it does not parse) and returns a List of RawStmt nodes in the current memory
        // context; each node is read as the struct its tag says it is.
        unsafe {
            let list = pg_sys::raw_parser(text.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
            if list.is_null() || (*list).length != 1 {
                return None;
            }
            let raw = (*(*list).elements).ptr_value.cast::<pg_sys::RawStmt>();
            Some(read_statement((*raw).stmt))
        }
    })
    .ok()
    .flatten()
}

/// The parts of a RangeVar's name.
///
/// # Safety
/// `rv` is NULL or a RangeVar node.
// SAFETY: (to call) `rv` is NULL or a RangeVar node.
unsafe fn range_var(rv: *const pg_sys::RangeVar) -> Vec<String> {
    if rv.is_null() {
        return Vec::new();
    }
    // SAFETY: the caller's promise; the names are NULL or NUL-terminated strings.
    unsafe {
        [(*rv).schemaname, (*rv).relname]
            .iter()
            .filter(|p| !p.is_null())
            .map(|p| c_text(*p))
            .collect()
    }
}

/// The strings of a List of String nodes (a qualified name).
///
/// # Safety
/// `list` is NULL or a List of String nodes.
// SAFETY: (to call) `list` is NULL or a List of String nodes.
unsafe fn name_list(list: *const pg_sys::List) -> Vec<String> {
    // SAFETY: the caller's promise.
    unsafe {
        nodes(list)
            .map(|n| c_text((*n.cast::<pg_sys::String>()).sval))
            .collect()
    }
}

/// The nodes of a List.
///
/// # Safety
/// `list` is NULL or a List of pointers.
// SAFETY: (to call) `list` is NULL or a List of pointers.
unsafe fn nodes(list: *const pg_sys::List) -> impl Iterator<Item = *mut pg_sys::Node> {
    // SAFETY: the caller's promise: a List has `length` elements.
    let n = if list.is_null() {
        0
    } else {
        (unsafe { (*list).length }) as usize
    };
    (0..n).map(move |i| {
        // SAFETY: i < length elements of the caller's List, each a pointer.
        unsafe { (*(*list).elements.add(i)).ptr_value.cast::<pg_sys::Node>() }
    })
}

/// A C string's text.
///
/// # Safety
/// `p` is NULL or NUL-terminated.
// SAFETY: (to call) `p` is NULL or NUL-terminated.
unsafe fn c_text(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the caller's promise.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

/// # Safety
/// `node` is a parse node whose tag says what struct it is.
// SAFETY: (to call) `node` is a parse node whose tag says what struct it is.
unsafe fn read_statement(node: *const pg_sys::Node) -> Statement {
    use pg_sys::NodeTag::*;
    // SAFETY: each branch reads the node as the struct of its tag.
    unsafe {
        let tag = (*node).type_;
        let mut s = Statement {
            tag: Some(tag),
            ..Statement::default()
        };
        match tag {
            T_CreateStmt => {
                let n = node.cast::<pg_sys::CreateStmt>();
                s.target = range_var((*n).relation);
                s.derived = !(*n).inhRelations.is_null()
                    || !(*n).partbound.is_null()
                    || !(*n).ofTypename.is_null()
                    || (*n).if_not_exists;
            }
            T_IndexStmt => {
                let n = node.cast::<pg_sys::IndexStmt>();
                s.on = range_var((*n).relation);
                s.derived = (*n).if_not_exists;
                s.target =
                    s.on.iter()
                        .take(s.on.len().saturating_sub(1))
                        .cloned()
                        .collect();
                s.target.push(c_text((*n).idxname));
            }
            T_CreateTrigStmt => {
                let n = node.cast::<pg_sys::CreateTrigStmt>();
                s.on = range_var((*n).relation);
                s.member = Some(c_text((*n).trigname));
                s.replace = (*n).replace;
            }
            T_AlterTableStmt => {
                let n = node.cast::<pg_sys::AlterTableStmt>();
                s.on = range_var((*n).relation);
                let mut names = Vec::new();
                s.adds_only = nodes((*n).cmds).all(|c| {
                    let c = c.cast::<pg_sys::AlterTableCmd>();
                    let adds = (*c).subtype == pg_sys::AlterTableType::AT_AddConstraint
                        && !(*c).def.is_null()
                        && (*(*c).def).type_ == T_Constraint;
                    if adds {
                        names.push(c_text((*(*c).def.cast::<pg_sys::Constraint>()).conname));
                    }
                    adds
                });
                if let [one] = names.as_slice() {
                    s.member = Some(one.clone());
                }
            }
            T_ViewStmt => {
                let n = node.cast::<pg_sys::ViewStmt>();
                s.target = range_var((*n).view);
                s.replace = (*n).replace;
            }
            T_CreateFunctionStmt => {
                let n = node.cast::<pg_sys::CreateFunctionStmt>();
                s.target = name_list((*n).funcname);
                s.replace = (*n).replace;
                s.definer = nodes((*n).options).any(|o| {
                    let d = o.cast::<pg_sys::DefElem>();
                    c_text((*d).defname) == "security"
                        && !(*d).arg.is_null()
                        && (*(*d).arg).type_ == T_Boolean
                        && (*(*d).arg.cast::<pg_sys::Boolean>()).boolval
                });
            }
            T_CreateSchemaStmt => {
                let n = node.cast::<pg_sys::CreateSchemaStmt>();
                s.target = vec![c_text((*n).schemaname)];
                s.derived =
                    !(*n).schemaElts.is_null() || !(*n).authrole.is_null() || (*n).if_not_exists;
            }
            T_CreateSeqStmt => {
                s.target = range_var((*node.cast::<pg_sys::CreateSeqStmt>()).sequence)
            }
            T_AlterSeqStmt => s.target = range_var((*node.cast::<pg_sys::AlterSeqStmt>()).sequence),
            T_CreateEnumStmt => {
                s.target = name_list((*node.cast::<pg_sys::CreateEnumStmt>()).typeName)
            }
            T_CreateRangeStmt => {
                s.target = name_list((*node.cast::<pg_sys::CreateRangeStmt>()).typeName)
            }
            T_CreateDomainStmt => {
                s.target = name_list((*node.cast::<pg_sys::CreateDomainStmt>()).domainname)
            }
            T_CompositeTypeStmt => {
                s.target = range_var((*node.cast::<pg_sys::CompositeTypeStmt>()).typevar)
            }
            _ => {}
        }
        s
    }
}
