//! Acting as another role: the one way synclink raises or lowers its privileges.
//!
//! Whatever synclink runs as a role other than the caller's runs here, the way a SECURITY
//! DEFINER function with `SET search_path = pg_catalog, pg_temp` runs: with the search path
//! pinned, so that no name or operator a caller defined in a schema of their own is looked up.
//! (PostgreSQL never looks up functions or operators in pg_temp, and pg_catalog belongs to the
//! bootstrap superuser.) Work done for a table's owner — applying rows into the table — runs
//! as that owner in a security-restricted operation, as PostgreSQL's own maintenance commands
//! and logical replication's apply do: the owner's triggers, defaults, checks and index
//! expressions then run with the owner's rights, never with synclink's.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiError;

/// The search path every privileged statement runs with.
pub const PINNED_SEARCH_PATH: &std::ffi::CStr = c"pg_catalog, pg_temp";

/// Run `f` with the search path pinned, as the current role.
pub fn pinned<T>(f: impl FnOnce() -> T) -> T {
    if is_pinned() {
        return f();
    }
    crate::pg::plan::with_settings(&[(c"search_path", PINNED_SEARCH_PATH)], f)
}

/// Is the search path already exactly the pinned one (a worker's session, or a peer's
/// transaction after pin_for_transaction)? Then there is nothing to save and restore.
fn is_pinned() -> bool {
    // SAFETY: namespace_search_path is the search_path setting's string, NUL-terminated and
    // owned by the GUC machinery; it is only read here.
    unsafe {
        let current = pg_sys::namespace_search_path;
        !current.is_null() && std::ffi::CStr::from_ptr(current) == PINNED_SEARCH_PATH
    }
}

/// Pin the search path to the end of this transaction (or of the savepoint it is set in): for
/// the sessions peers deliver changes through, which run nothing but synclink's statements,
/// so that the records after the first need no setting saved and restored each.
pub fn pin_for_transaction() {
    if !is_pinned() {
        crate::pg::plan::set(
            c"search_path",
            PINNED_SEARCH_PATH,
            crate::pg::plan::Lasting::Transaction,
        );
    }
}

/// Pin the search path for the rest of this session: for the background workers, which run
/// as the bootstrap superuser and would otherwise take the search path a database's owner set
/// with ALTER DATABASE … SET.
pub fn pin_for_session() {
    crate::pg::plan::set(
        c"search_path",
        PINNED_SEARCH_PATH,
        crate::pg::plan::Lasting::Session,
    );
}

/// Run `f` as `role` with the search path pinned. An error inside is cleaned up by the
/// (sub)transaction's abort, which restores the user and the settings; a setting the role's
/// statements changed is put back when `f` returns too ([`isolated`]).
pub fn as_role<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    pinned(|| isolated(|| switched(role, pg_sys::SECURITY_LOCAL_USERID_CHANGE, f)))
}

/// [`as_role`] in a security-restricted operation, as PostgreSQL runs a table owner's index
/// expressions: what `f` runs cannot make temporary objects (which would outlive it in this
/// session, under another role), SET ROLE or keep cursors open.
pub fn as_role_restricted<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    let flags = pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION;
    pinned(|| isolated(|| switched(role, flags, f)))
}

/// Run `f` so that no setting it changes outlives it, as a SECURITY DEFINER function that ran
/// another role's statements must: a `SET search_path` (or a trigger's set_config) in that
/// role's code would otherwise still hold for the statements synclink runs with its own
/// privileges after it, even where the path had been pinned before.
pub fn isolated<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: NewGUCNestLevel opens a nesting level; AtEOXact_GUC(false, level) closes it,
    // putting back every setting made at it or inside it. If `f` raises an ERROR the
    // (sub)transaction's abort closes the level instead.
    let level = unsafe { pg_sys::NewGUCNestLevel() };
    let result = f();
    // SAFETY: closes the level opened above, once, on the way out of `f`.
    unsafe { pg_sys::AtEOXact_GUC(false, level) };
    result
}

/// Run `f`, which runs no SQL statement (it writes through the table and index access
/// methods), as `role`, leaving the search path alone: there is nothing to look up by name.
/// Anything inside that does run SQL pins the search path itself. For the one-row capture's
/// hot path, where saving and restoring a setting per statement is measurable.
pub fn as_role_without_sql<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    switched(role, pg_sys::SECURITY_LOCAL_USERID_CHANGE, f)
}

/// Run `f` as the owner of `relid`, in a security-restricted operation: code the owner wrote
/// (triggers, defaults, checks, index expressions) runs with the owner's rights, cannot
/// change role or create temporary objects, and synclink's privileges are not lent to it.
/// Fails, before `f` runs, only if the deferred checks cannot be read or made immediate.
pub fn as_owner_of<T>(relid: pg_sys::Oid, f: impl FnOnce() -> T) -> Result<T, SpiError> {
    let owner = table_owner(relid);
    let deferred = deferred_code_checks()?;
    let flags = pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION;
    pinned(|| {
        isolated(|| {
            switched(owner, flags, || {
                if let Some(names) = deferred {
                    // The names come from the catalog, each quoted by format('%I').
                    Spi::run(&format!("SET CONSTRAINTS {names} IMMEDIATE"))?;
                }
                Ok(f())
            })
        })
    })
}

thread_local! {
    /// deferred_code_checks' answer, with the count of catalog changes heard of before it was
    /// read: it holds while that count has not moved.
    static DEFERRED: std::cell::RefCell<Option<(u64, Option<String>)>> =
        const { std::cell::RefCell::new(None) };
    static WATCHING_CONSTRAINTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The catalog changes heard of (constraints_changed).
    static CONSTRAINT_CHANGES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Any change to pg_constraint or pg_namespace (by this backend, or by another once it is
/// committed and this backend takes in invalidations) makes the next check read the catalog
/// again: a constraint that became deferrable, a new constraint trigger, a renamed schema.
/// Runs while invalidations are processed, so it only notes it.
// SAFETY: PostgreSQL calls this with the cache id and a hash value, neither of them a
// pointer; it touches only this backend's thread-local and raises no error.
unsafe extern "C-unwind" fn constraints_changed(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    CONSTRAINT_CHANGES.with(|c| c.set(c.get().wrapping_add(1)));
}

/// The deferrable constraints whose check runs code a table's owner wrote: constraint
/// triggers, and unique or exclusion constraints over an index with expressions or a
/// predicate. Deferred, they would run at COMMIT as whoever commits — not as the owner whose
/// statement queued them. as_owner_of makes them immediate, so they run inside it. (Foreign
/// keys stay deferrable: PostgreSQL runs their checks as the table's owner itself.) Read
/// again only after the catalog changed: a receiving node asks for every delivery, and in
/// sync mode a delivery is one transaction per write. None when there are none, as in most
/// databases.
fn deferred_code_checks() -> Result<Option<String>, SpiError> {
    if !WATCHING_CONSTRAINTS.with(|w| w.replace(true)) {
        for cache in [
            pg_sys::SysCacheIdentifier::CONSTROID,
            pg_sys::SysCacheIdentifier::NAMESPACEOID,
        ] {
            // SAFETY: registers, once per backend, a function that stays valid for the
            // backend's life (the library is never unloaded) and whose argument is a plain
            // Datum.
            unsafe {
                pg_sys::CacheRegisterSyscacheCallback(
                    cache as i32,
                    Some(constraints_changed),
                    0.into(),
                )
            };
        }
    }
    // Counted before the read: a change heard of while the catalog is read (taking its locks
    // takes in invalidations) may be newer than what the read saw, and then the answer does
    // not hold past this call.
    let changes = CONSTRAINT_CHANGES.with(|c| c.get());
    if let Some((_, names)) = DEFERRED
        .with(|d| d.borrow().clone())
        .filter(|(n, _)| *n == changes)
    {
        return Ok(names);
    }
    let names = pinned(|| {
        crate::pg::spi::prepared_read(
            "SELECT pg_catalog.string_agg(pg_catalog.format('%I.%I', n.nspname, c.conname), ', ') \
               FROM pg_catalog.pg_constraint c \
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.connamespace \
              WHERE c.condeferrable \
                AND (c.contype OPERATOR(pg_catalog.=) 't' \
                     OR (c.contype OPERATOR(pg_catalog.=) ANY ('{p,u,x}'::pg_catalog.\"char\"[]) \
                         AND EXISTS (SELECT FROM pg_catalog.pg_index i \
                                      WHERE i.indexrelid OPERATOR(pg_catalog.=) c.conindid \
                                        AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL))))",
            &[],
            &[],
            crate::pg::spi::first_of::<String>,
        )
    })??;
    DEFERRED.with(|d| *d.borrow_mut() = Some((changes, names.clone())));
    Ok(names)
}

thread_local! {
    /// The extension's owner as read in a transaction (its local id): every change record a
    /// peer delivers asks.
    static OWNER: std::cell::Cell<(u32, pg_sys::Oid)> =
        const { std::cell::Cell::new((0, pg_sys::InvalidOid)) };
}

/// The role the extension belongs to, which owns synclink's catalog and the objects synclink
/// makes: its own bookkeeping runs as it.
pub fn extension_owner() -> Result<pg_sys::Oid, SpiError> {
    let xact = crate::pg::ffi::local_xact();
    let (seen_in, owner) = OWNER.with(|o| o.get());
    if seen_in == xact && owner != pg_sys::InvalidOid {
        return Ok(owner);
    }
    let owner = pinned(|| {
        crate::pg::spi::prepared_read(
            "SELECT e.extowner FROM pg_catalog.pg_extension e \
              WHERE e.extname OPERATOR(pg_catalog.=) 'synclink'",
            &[],
            &[],
            crate::pg::spi::first_of::<pg_sys::Oid>,
        )
    })??
    .unwrap_or(pg_sys::BOOTSTRAP_SUPERUSERID.into());
    OWNER.with(|o| o.set((xact, owner)));
    Ok(owner)
}

/// The owner of a relation, from the relation cache (the caller holds a lock on it or
/// knows it exists).
pub fn table_owner(relid: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: RelationIdGetRelation returns NULL for an unknown OID, checked here; the
    // reference it takes is released before returning, and relowner is read while held.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return pg_sys::BOOTSTRAP_SUPERUSERID.into();
        }
        let owner = (*(*rel).rd_rel).relowner;
        pg_sys::RelationClose(rel);
        owner
    }
}

/// The role this session logged in as: for a peer's session, the role of its connection
/// string, which is what this node's administrator granted rights to.
pub fn session_role() -> pg_sys::Oid {
    // SAFETY: GetSessionUserId reads backend state set at connection start; it takes no
    // arguments and only asserts that the state is set, which it is in a running backend.
    unsafe { pg_sys::GetSessionUserId() }
}

/// Run `f` as `role` with `flags` added to the security context, search path untouched.
fn switched<T>(role: pg_sys::Oid, flags: u32, f: impl FnOnce() -> T) -> T {
    let (mut saved, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: GetUserIdAndSecContext only writes into the two locals. SetUserIdAndSecContext
    // only records the ids; if f fails, the transaction's abort puts back the ones saved here.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved, &mut context);
        pg_sys::SetUserIdAndSecContext(role, context | flags as i32);
    }
    let result = f();
    // SAFETY: as above, back to the caller's ids.
    unsafe { pg_sys::SetUserIdAndSecContext(saved, context) };
    result
}

pub fn is_superuser(role: pg_sys::Oid) -> bool {
    // SAFETY: superuser_arg takes a plain OID and reads the role's catalog entry through the
    // syscache (a role that is gone is not a superuser).
    unsafe { pg_sys::superuser_arg(role) }
}

pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: with noerr set, GetUserNameFromId returns NULL for a role that is gone (checked)
    // or a palloc'd, NUL-terminated copy of the name, which is copied at once.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, true);
        if name.is_null() {
            return role.to_u32().to_string();
        }
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}
