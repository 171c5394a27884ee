//! Waking a database's delivery worker: a slot per worker in shared memory, and the commit of
//! a transaction that queued changes setting that worker's latch.

use pgrx::prelude::*;
use pgrx::{PGRXSharedMemory, PgAtomic};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Where each database's delivery worker can be woken: (database oid << 32 | pid), 0 = free.
/// A writer that queued a change sets that worker's latch when its transaction commits, so
/// delivery starts at once instead of at the next poll.
pub struct Workers {
    slots: [AtomicU64; 64],
    /// Per slot: the worker wants to hear of the next commit that queues something. The first
    /// such commit clears it and sets the latch; the commits after it leave the worker alone
    /// until it starts its next round. At thousands of commits a second, one wake-up per
    /// commit (a signal, a context switch, a round finding the work already taken) costs the
    /// writers more than the queueing itself.
    armed: [AtomicBool; 64],
}

impl Default for Workers {
    fn default() -> Self {
        Workers {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            armed: std::array::from_fn(|_| AtomicBool::new(false)),
        }
    }
}

// SAFETY: only atomics, which hold no pointers and are valid at any address, in every
// process that maps the segment.
unsafe impl PGRXSharedMemory for Workers {}

// SAFETY: the name is synclink's own and no other shared memory of synclink's takes it;
// worker::init() allocates it while the library is preloaded.
pub(super) static WORKERS: PgAtomic<Workers> = unsafe { PgAtomic::new(c"synclink_workers") };

/// Set in the postmaster when preloaded, so every backend forked from it knows the shared
/// memory above exists.
pub(super) static PRELOADED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The local transaction that already has a wake-up registered for its commit.
    static WAKE_REGISTERED: Cell<u32> = const { Cell::new(0) };
}

pub(super) enum Registration {
    /// This worker serves the database, and is woken through this slot.
    Slot(usize),
    /// It serves the database, without a slot to be woken through (all taken).
    NoSlot,
    /// Another live worker serves the database already.
    Taken,
}

/// Take this database's slot (the one an earlier worker for it left, or a free one), unless a
/// live worker holds it: one delivery worker per database, whoever started it. Shared memory
/// only synclink writes, so that no SQL session can keep the worker out (an advisory lock
/// could be taken by anyone).
pub(super) fn register_worker(dboid: u32) -> Registration {
    // SAFETY: MyProcPid is this process's pid, set at its start and only read here.
    let my_pid = unsafe { pg_sys::MyProcPid };
    let me = ((dboid as u64) << 32) | my_pid as u32 as u64;
    let slots = &WORKERS.get().slots;
    for (i, s) in slots.iter().enumerate() {
        let v = s.load(Ordering::Acquire);
        if v == 0 || (v >> 32) as u32 != dboid {
            continue;
        }
        let pid = v as u32 as i32;
        if pid != my_pid && crate::pg::ffi::backend_alive(pid) {
            return Registration::Taken;
        }
        return match s.compare_exchange(v, me, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Registration::Slot(i),
            Err(_) => Registration::Taken,
        };
    }
    let Some(i) = slots.iter().position(|s| {
        s.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }) else {
        return Registration::NoSlot;
    };
    // Two workers starting at once may both have taken a free slot: the lower one stays.
    let rival = slots.iter().enumerate().any(|(j, s)| {
        let v = s.load(Ordering::Acquire);
        j < i
            && v != 0
            && (v >> 32) as u32 == dboid
            && crate::pg::ffi::backend_alive(v as u32 as i32)
    });
    if rival {
        slots[i].store(0, Ordering::Release);
        return Registration::Taken;
    }
    Registration::Slot(i)
}

/// Ask to be woken by the next commit that queues a change. Called before the round looks
/// at the queues: a commit that misses the flag became visible before it was set, so the
/// round's snapshot, taken after, sees its changes. (Commit callbacks run once the
/// transaction is visible to others.)
pub(super) fn arm(slot: Option<usize>) {
    if let Some(i) = slot {
        WORKERS.get().armed[i].store(true, Ordering::SeqCst);
    }
}

/// Has a commit rung since the worker last armed?
pub(super) fn rung(slot: Option<usize>) -> bool {
    slot.is_some_and(|i| !WORKERS.get().armed[i].load(Ordering::SeqCst))
}

fn wake_now() {
    // SAFETY: MyDatabaseId is set when the backend connects to its database and never
    // changes afterwards; a commit callback runs in a connected backend.
    let dboid = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let workers = WORKERS.get();
    for (s, armed) in workers.slots.iter().zip(workers.armed.iter()) {
        let v = s.load(Ordering::Acquire);
        if v != 0 && (v >> 32) as u32 == dboid && armed.swap(false, Ordering::SeqCst) {
            crate::pg::ffi::wake_backend(v as u32 as i32);
        }
    }
}

/// Wake this database's delivery worker when the current transaction commits.
pub fn wake_at_commit() {
    if !PRELOADED.load(Ordering::Relaxed) {
        return;
    }
    let xact = crate::pg::ffi::local_xact();
    if WAKE_REGISTERED.with(|w| w.replace(xact)) != xact {
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, wake_now);
    }
}
