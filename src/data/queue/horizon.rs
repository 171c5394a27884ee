//! How far delivery may move on without passing a change that is not committed yet.
//!
//! Outbox seqs are drawn when a change is captured and become visible when its transaction
//! commits, so a seq can become visible after a higher one. Delivery reads what is visible in
//! seq order; to go faster it continues from the last seq it delivered rather than from the
//! start. Continuing past a seq that an open transaction still holds would deliver that
//! change only at the next full sweep, after changes committed later — a child row ahead of
//! the parent it refers to, on a peer with the foreign key.
//!
//! So each transaction that draws seqs publishes, in shared memory, the lowest one it holds
//! until it ends, and delivery never continues from past the lowest seq published (nor past
//! the highest seq drawn when it looked). Only when synclink is preloaded; otherwise
//! delivery starts from the lowest seq at every batch.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};

/// Backends with a slot of their own (by PGPROC number); the few beyond it are counted.
const SLOTS: usize = 4096;
/// Published before the seq is drawn, replaced by it right after: a reader that sees it cannot
/// know the seq yet and must not move on.
const DRAWING: i64 = -1;

pub struct Horizon {
    /// Per backend: the lowest seq its open transaction holds, DRAWING, or 0.
    lowest: [AtomicI64; SLOTS],
    /// Open transactions holding seqs in backends without a slot.
    unslotted: AtomicU32,
}

impl Default for Horizon {
    fn default() -> Self {
        Horizon {
            lowest: std::array::from_fn(|_| AtomicI64::new(0)),
            unslotted: AtomicU32::new(0),
        }
    }
}

// SAFETY: only atomics, valid at any address and in any process mapping the segment.
unsafe impl PGRXSharedMemory for Horizon {}

// SAFETY: the name is unique to synclink; init() allocates it while the library is preloaded.
static HORIZON: PgAtomic<Horizon> = unsafe { PgAtomic::new(c"synclink_horizon") };

/// Set in the postmaster by init(), so every backend forked from it knows HORIZON exists.
static READY: AtomicBool = AtomicBool::new(false);

/// Ask for the shared memory: only while shared_preload_libraries is being processed.
pub fn init() {
    pg_shmem_init!(HORIZON);
    READY.store(true, Ordering::Relaxed);
}

#[derive(Clone, Copy, PartialEq)]
enum Held {
    Nothing,
    Slot(usize),
    Unslotted,
}

thread_local! {
    /// What this backend published for its open transaction (its local id).
    static HELD: Cell<(u32, Held)> = const { Cell::new((0, Held::Nothing)) };
    static CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Draw a seq with `draw`, publishing the transaction's lowest first.
pub fn drawing(draw: impl FnOnce() -> i64) -> i64 {
    if !READY.load(Ordering::Relaxed) {
        return draw();
    }
    let xact = crate::pg::ffi::local_xact();
    if HELD.with(|h| h.get().0) == xact {
        return draw();
    }
    if !CALLBACK.with(|c| c.replace(true)) {
        // SAFETY: registers a plain function once per backend; it runs at every transaction end.
        unsafe { pg_sys::RegisterXactCallback(Some(transaction_ended), std::ptr::null_mut()) };
    }
    let slot = crate::pg::ffi::proc_number();
    let horizon = HORIZON.get();
    if slot >= SLOTS {
        horizon.unslotted.fetch_add(1, Ordering::SeqCst);
        HELD.with(|h| h.set((xact, Held::Unslotted)));
        return draw();
    }
    // Set before drawing, so that the slot is never empty while the transaction holds a seq.
    HELD.with(|h| h.set((xact, Held::Slot(slot))));
    horizon.lowest[slot].store(DRAWING, Ordering::SeqCst);
    let seq = draw();
    horizon.lowest[slot].store(seq, Ordering::SeqCst);
    seq
}

/// Transaction end (commit, abort or prepare): runs after the commit is visible to others, so
/// a reader that no longer sees the seq published sees the change itself.
// SAFETY: called by PostgreSQL's transaction machinery with a valid event; it touches only
// this backend's thread-locals and its own shared-memory slot.
#[pg_guard]
unsafe extern "C-unwind" fn transaction_ended(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if !matches!(
        event,
        XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE
    ) {
        return;
    }
    let (_, held) = HELD.with(|h| h.replace((0, Held::Nothing)));
    let horizon = HORIZON.get();
    match held {
        Held::Slot(slot) => horizon.lowest[slot].store(0, Ordering::SeqCst),
        Held::Unslotted => {
            horizon.unslotted.fetch_sub(1, Ordering::SeqCst);
        }
        Held::Nothing => {}
    }
}

/// The lowest seq an open transaction may still hold, given `drawn`, the highest seq drawn,
/// read before this is called; None when that cannot be known now (not preloaded, or a
/// transaction is drawing its first seq at this moment).
pub fn lowest_open(drawn: i64) -> Option<i64> {
    if !READY.load(Ordering::Relaxed) {
        return None;
    }
    let horizon = HORIZON.get();
    if horizon.unslotted.load(Ordering::SeqCst) > 0 {
        return None;
    }
    let mut lowest = drawn.saturating_add(1);
    for slot in horizon.lowest.iter() {
        match slot.load(Ordering::SeqCst) {
            0 => {}
            DRAWING => return None,
            seq => lowest = lowest.min(seq),
        }
    }
    Some(lowest)
}
