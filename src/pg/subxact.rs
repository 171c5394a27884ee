//! Running a piece of work in a subtransaction, so that an error inside it can be handled
//! (rolled back and answered) instead of aborting the whole transaction.

use crate::pg::remote::{catching, RemoteFailure};
use pgrx::pg_sys;

/// Run `f` in an internal subtransaction. On error the subtransaction is rolled back and the
/// error returned; the surrounding transaction carries on unharmed. `f` must open any SPI
/// connection it uses itself, so that it is closed inside the subtransaction.
pub fn run<T>(f: impl FnOnce() -> T) -> Result<T, RemoteFailure> {
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let result = catching(f);
        if result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        result
    }
}
