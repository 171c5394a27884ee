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

/// The search path every privileged statement runs with.
pub const PINNED_SEARCH_PATH: &std::ffi::CStr = c"pg_catalog, pg_temp";

/// Run `f` with the search path pinned, as the current role.
pub fn pinned<T>(f: impl FnOnce() -> T) -> T {
    crate::plan::with_settings(&[(c"search_path", PINNED_SEARCH_PATH)], f)
}

/// Pin the search path for the rest of this session: for the background workers, which run
/// as the bootstrap superuser and would otherwise take the search path a database's owner set
/// with ALTER DATABASE … SET.
pub fn pin_for_session() {
    // SAFETY: set_config_option copies both strings; search_path's check hook only parses.
    unsafe {
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            PINNED_SEARCH_PATH.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SET,
            true,
            0,
            false,
        );
    }
}

/// Run `f` as `role` with the search path pinned. An error inside is cleaned up by the
/// (sub)transaction's abort, which restores the user and the settings.
pub fn as_role<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    switched(role, pg_sys::SECURITY_LOCAL_USERID_CHANGE, f)
}

fn switched<T>(role: pg_sys::Oid, flags: u32, f: impl FnOnce() -> T) -> T {
    let (mut saved, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: GetUserIdAndSecContext only writes into the two locals.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut saved, &mut context) };
    pinned(|| {
        // SAFETY: SetUserIdAndSecContext only records the ids; if f fails, the transaction's
        // abort puts back the ones saved above.
        unsafe { pg_sys::SetUserIdAndSecContext(role, context | flags as i32) };
        let result = f();
        // SAFETY: as above, back to the caller's ids.
        unsafe { pg_sys::SetUserIdAndSecContext(saved, context) };
        result
    })
}
