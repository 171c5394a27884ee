//! Running a piece of work in a subtransaction, so that an error inside it can be handled
//! (rolled back and answered) instead of aborting the whole transaction.

use crate::pg::remote::{catching, RemoteFailure};
use pgrx::pg_sys;

/// Run `f` in an internal subtransaction. On error the subtransaction is rolled back and the
/// error returned; the surrounding transaction carries on unharmed. `f` must open any SPI
/// connection it uses itself, so that it is closed inside the subtransaction.
///
/// Only an ERROR rolls the subtransaction back: a `Result::Err` that `f` returns is a value
/// like any other, and what `f` did before returning it is kept. Code inside that must undo
/// its work on failure raises.
pub fn run<T>(f: impl FnOnce() -> T) -> Result<T, RemoteFailure> {
    // SAFETY: plain reads of this backend's current memory context and resource owner.
    let (context, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    // SAFETY: begins a subtransaction of the caller's transaction; switching straight back
    // to the caller's memory context makes `f` allocate there, so that what it returns
    // outlives the subtransaction.
    unsafe {
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
    }
    let result = catching(f);
    // SAFETY: `catching` turned an ERROR inside `f` into Err, so the subtransaction begun
    // above is the current one: it is ended exactly once, and the caller's memory context
    // and resource owner are put back, as PL/pgSQL's exception blocks do.
    unsafe {
        if result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    }
    result
}
