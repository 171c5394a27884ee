//! Whether synclink itself is removing objects it made: unlinking, dropping a peer,
//! unsharing a sequence, DROP EXTENSION. The drop guard (control/ddl.rs) lets those drops through and
//! refuses the same drops made by hand.

use std::cell::Cell;

thread_local! {
    /// Set while synclink itself removes objects it made (unlinking, dropping a peer,
    /// unsharing a sequence, DROP EXTENSION): the drop guard lets those through.
    static REMOVING: Cell<u32> = const { Cell::new(0) };
}

/// Run `f`, which drops objects synclink made, past the drop guard. If it fails, the
/// transaction (or subtransaction) is rolled back and the count with it no longer matters:
/// it is kept per backend and reset here on the way out either way.
pub fn removing<T>(f: impl FnOnce() -> T) -> T {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            REMOVING.with(|r| r.set(r.get().saturating_sub(1)));
        }
    }
    REMOVING.with(|r| r.set(r.get() + 1));
    let _leave = Leave;
    f()
}

/// Is synclink removing its own objects right now?
pub fn in_progress() -> bool {
    REMOVING.with(|r| r.get()) > 0
}
