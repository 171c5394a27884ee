//! Background delivery, when synclink is in shared_preload_libraries.
//!
//! A launcher keeps one delivery worker per database that accepts connections, looking every
//! second so a new database is served at once; templates are left alone, so CREATE DATABASE is
//! never blocked. A delivery worker idles while synclink is not installed in its database;
//! otherwise, every synclink.worker_naptime, it delivers each
//! peer's queue in order, in transactions of up to WORKER_BATCH records, and backs off from a
//! peer that cannot be reached (QUICK_RETRY while its server turns connections away at once,
//! else 1 s doubling to 5 s).

pub mod wake;

use crate::data::queue::{self, Flushed};
use crate::pg::error::{OrRaise, Result};
use pgrx::bgworkers::*;
use pgrx::pg_shmem_init;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wake::{arm, register_worker, rung, Registration, PRELOADED, WORKERS};

static NAPTIME_MS: pgrx::GucSetting<i32> = pgrx::GucSetting::<i32>::new(100);
static LAUNCHER_DB: pgrx::GucSetting<Option<std::ffi::CString>> =
    pgrx::GucSetting::<Option<std::ffi::CString>>::new(Some(c"postgres"));

/// Records delivered per worker transaction: large enough to drain fast, small enough that
/// a failure repeats little work.
const WORKER_BATCH: i64 = 10_000;

/// The longest a returning peer waits for the worker to notice it.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub fn init() {
    pgrx::GucRegistry::define_int_guc(
        c"synclink.worker_naptime",
        c"How often the delivery worker looks for queued changes.",
        c"Only used when synclink is in shared_preload_libraries.",
        &NAPTIME_MS,
        10,
        60_000,
        pgrx::GucContext::Sighup,
        pgrx::GucFlags::UNIT_MS,
    );
    pgrx::GucRegistry::define_int_guc(
        c"synclink.worker_max_linger",
        c"Longest the delivery worker waits between rounds to gather a stream of changes.",
        c"Under a stream of more than about 2,000 changes a second it waits 0.5 ms per change \
          the last round delivered beyond 8, up to this: larger rounds cost the writers' server \
          less per change, at the price of lag.",
        &MAX_LINGER_MS,
        0,
        1000,
        pgrx::GucContext::Sighup,
        pgrx::GucFlags::UNIT_MS,
    );
    // Workers, and the server-start setting they read, exist only when preloaded: a library
    // loaded later by CREATE EXTENSION may not define PGC_POSTMASTER settings.
    // SAFETY: a plain bool the postmaster sets while it loads shared_preload_libraries; _PG_init
    // runs in this process, which is the only one writing it, and it is only read here.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(WORKERS);
        crate::data::queue::horizon::init();
        PRELOADED.store(true, Ordering::Relaxed);
        pgrx::GucRegistry::define_string_guc(
            c"synclink.launcher_database",
            c"Database the synclink launcher connects to, to list the databases.",
            c"",
            &LAUNCHER_DB,
            pgrx::GucContext::Postmaster,
            pgrx::GucFlags::default(),
        );
        BackgroundWorkerBuilder::new("synclink launcher")
            .set_type("synclink launcher")
            .set_library("synclink")
            .set_function("synclink_launcher_main")
            .enable_spi_access()
            .set_restart_time(Some(Duration::from_secs(5)))
            .load();
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn synclink_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = LAUNCHER_DB
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|| "postgres".into());
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    crate::pg::privilege::pin_for_session();
    let mut workers: HashMap<u32, DynamicBackgroundWorker> = HashMap::new();
    loop {
        // The launcher's loop has no caller to hand an error to: raised, it ends the launcher
        // (its transaction aborted), and the postmaster starts it again (set_restart_time).
        let databases = BackgroundWorker::transaction(|| databases().or_raise());
        // A worker registered a moment ago may not have started yet: it is alive all the same.
        workers.retain(|oid, w| {
            matches!(w.pid(), Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted))
                && databases.iter().any(|(o, _, _)| o == oid)
        });
        for (oid, name, running) in databases {
            if workers.contains_key(&oid) || running {
                continue;
            }
            let started = BackgroundWorkerBuilder::new(&format!("synclink delivery {name}"))
                .set_type("synclink delivery")
                .set_library("synclink")
                .set_function("synclink_delivery_main")
                .set_argument(Some(pg_sys::Datum::from(oid as usize)))
                .enable_spi_access()
                // Never restarted by the postmaster: after a crash it would start them again
                // beside the ones the restarted launcher starts. The launcher replaces a
                // worker that stopped within a second.
                .set_restart_time(None)
                .load_dynamic();
            if let Ok(w) = started {
                workers.insert(oid, w);
            }
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
            break;
        }
    }
}

/// Each database that accepts connections, with whether a delivery worker already runs there
/// that this launcher did not start (one from before this launcher was restarted).
fn databases() -> Result<Vec<(u32, String, bool)>> {
    Spi::connect(|c| {
        c.select(
            "SELECT d.oid::int8, d.datname::text, \
                    EXISTS (SELECT FROM pg_stat_activity a \
                             WHERE a.datid = d.oid AND a.backend_type = 'synclink delivery') \
               FROM pg_database d WHERE d.datallowconn AND NOT d.datistemplate",
            None,
            &[],
        )?
        .map(|r| {
            Ok((
                r.get::<i64>(1)?.unwrap_or(0) as u32,
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<bool>(3)?.unwrap_or(false),
            ))
        })
        .collect()
    })
}

/// Is the library preloaded here, so that a delivery worker serves each database?
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

struct Backoff {
    until: Instant,
    wait: Duration,
}

/// A peer whose server turned the connection away at once (down or restarting) is tried again
/// after QUICK_RETRY: such an attempt costs the worker about a millisecond, and the queue goes
/// out as soon as the peer is back. An attempt that made the worker wait, or that the peer
/// refused for another reason (authentication, an error of its own), backs off from 1 s up
/// to MAX_BACKOFF, so that it neither holds up the other peers nor fills the peer's log.
const QUICK_RETRY: Duration = Duration::from_millis(250);
const QUICK_FAILURE: Duration = Duration::from_millis(100);

/// How often the worker starts again from each peer's lowest queued seq (see
/// queue::flush_after) instead of from the last seq it delivered.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// After a round that delivered n records, the worker lets (n − LINGER_FREE) ×
/// LINGER_PER_RECORD pass (up to synclink.worker_max_linger) before it starts the next. Every
/// commit that queues a change wakes it; under a heavy stream of commits, rounds then gather
/// many commits' changes into one remote transaction, whose fixed cost (a commit and a WAL
/// flush on each side, the peer's per-statement work) would otherwise be paid per change, and
/// leave the writers' server more of its time. A stream below 1 / LINGER_PER_RECORD (2,000
/// changes a second) is never held back while a round takes less than LINGER_FREE ×
/// LINGER_PER_RECORD: each change goes out as soon as the round before it is done. Above that
/// rate, rounds grow to the cap, and the lag with them.
const LINGER_PER_RECORD: Duration = Duration::from_micros(500);
const LINGER_FREE: i64 = 8;
static MAX_LINGER_MS: pgrx::GucSetting<i32> = pgrx::GucSetting::<i32>::new(100);

/// Hand on records for several peers (synclink.fanout) to each peer's queue, as many as a
/// round delivers to a peer, a batch per transaction of its own, so that no peer's delivery
/// holds them locked for the others' and no transaction holds many. True when the last batch
/// was full: more may wait, and the next round should come at once.
fn hand_on_batches() -> bool {
    let batch = crate::data::queue::HAND_ON_BATCH;
    for _ in 0..(WORKER_BATCH / batch).max(1) {
        let moved =
            BackgroundWorker::transaction(|| crate::data::queue::hand_on(Some(batch)).or_raise());
        if moved < batch {
            return false;
        }
    }
    true
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn synclink_delivery_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let dboid = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(dboid), None);
    crate::pg::privilege::pin_for_session();
    // One delivery worker per database, whatever started it: a second one leaves at once.
    let slot = match register_worker(dboid.to_u32()) {
        Registration::Slot(i) => Some(i),
        Registration::NoSlot => None,
        Registration::Taken => {
            log!("synclink: a delivery worker already serves this database");
            return;
        }
    };
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    // Per peer, the last seq delivered since the last sweep.
    let mut delivered_up_to: HashMap<String, i64> = HashMap::new();
    let mut last_sweep = Instant::now();
    let mut known: Vec<String> = Vec::new();
    let mut listed_at = Instant::now();
    let mut nap = Duration::from_millis(NAPTIME_MS.get() as u64);
    let mut waiting_for_update = false;
    while BackgroundWorker::wait_latch(Some(nap)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: a worker rereads the configuration files between transactions, as the
            // postmaster's children do on SIGHUP; the call takes no pointers.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let round = Instant::now();
        let mut delivered = 0i64;
        nap = Duration::from_millis(NAPTIME_MS.get() as u64);
        if last_sweep.elapsed() >= SWEEP_EVERY {
            delivered_up_to.clear();
            last_sweep = round;
        }
        // While every peer known is backed off there is nothing to do, and commits are not
        // asked to wake the worker (it is not armed): it looks again after its naptime. The
        // list is read again at least every SWEEP_EVERY, so a peer added meanwhile is not
        // kept waiting long.
        let all_backed_off = !known.is_empty()
            && known
                .iter()
                .all(|p| backoff.get(p).is_some_and(|b| b.until > round));
        if all_backed_off && listed_at.elapsed() < SWEEP_EVERY {
            // Records for several peers are handed on all the same, so that they neither pile
            // up unseen nor keep the first peer back that returns.
            if hand_on_batches() {
                nap = Duration::ZERO;
            }
            continue;
        }
        arm(slot);
        listed_at = round;
        let peers: Option<Option<Vec<String>>> = BackgroundWorker::transaction(|| {
            // This library reads the catalog of its own version only: after the library was
            // upgraded, the worker waits for ALTER EXTENSION synclink UPDATE.
            let installed = crate::pg::spi::prepared_read(
                concat!(
                    "SELECT extversion OPERATOR(pg_catalog.=) '",
                    env!("CARGO_PKG_VERSION"),
                    "' FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'synclink'"
                ),
                &[],
                &[],
                // No row: synclink is not installed here. A failed read ends the worker (the
                // launcher starts another), as any error in its transaction does.
                |t| match t.first().get_one::<bool>() {
                    Err(pgrx::spi::SpiError::InvalidPosition) => Ok(None),
                    other => other,
                },
            )
            .and_then(|read| read)
            .or_raise();
            installed.map(|current| {
                current.then(|| {
                    crate::pg::spi::prepared_read(
                        "SELECT peer_name FROM synclink.peer",
                        &[],
                        &[],
                        |t| {
                            t.filter_map(|r| r.get::<String>(1).ok().flatten())
                                .collect()
                        },
                    )
                    .or_raise()
                })
            })
        });
        let peers = match peers {
            Some(Some(peers)) => {
                if hand_on_batches() {
                    nap = Duration::ZERO;
                }
                peers
            }
            Some(None) => {
                if !waiting_for_update {
                    waiting_for_update = true;
                    log!(
                        "synclink: the library is version {} but this database has another \
                         installed; delivery waits for ALTER EXTENSION synclink UPDATE",
                        env!("CARGO_PKG_VERSION")
                    );
                }
                // The DBA runs the update right after the restart: delivery resumes soon after.
                nap = Duration::from_secs(1);
                continue;
            }
            None => {
                // not installed here: look again now and then
                nap = Duration::from_secs(5);
                continue;
            }
        };
        waiting_for_update = false;
        known.clone_from(&peers);
        for name in peers {
            if backoff.get(&name).is_some_and(|b| b.until > Instant::now()) {
                continue;
            }
            let from = delivered_up_to.get(&name).copied().unwrap_or(0);
            let attempt = Instant::now();
            // No caller to hand an error to here either: raised inside the transaction, it
            // aborts it, so nothing the failed flush deleted is lost (queue::flush_after), and
            // ends this worker, which the launcher replaces within a second.
            let (outcome, after) = BackgroundWorker::transaction(|| {
                let mut after = from;
                let outcome = match crate::catalog::peer::find(&name).or_raise() {
                    Some(peer) => queue::flush_after(&peer, WORKER_BATCH, &mut after, 0).or_raise(),
                    None => Flushed::Done(0),
                };
                (outcome, after)
            });
            // committed: what was delivered stays delivered
            delivered_up_to.insert(name.clone(), after);
            match outcome {
                Flushed::Done(n) => {
                    delivered += n;
                    backoff.remove(&name);
                }
                Flushed::Partial(_) => {
                    backoff.remove(&name);
                    nap = Duration::ZERO;
                }
                Flushed::Busy => {}
                Flushed::Failed(_, failure) => {
                    let wait = if failure.is_refused() && attempt.elapsed() < QUICK_FAILURE {
                        QUICK_RETRY
                    } else {
                        backoff
                            .get(&name)
                            .filter(|b| b.wait > QUICK_RETRY)
                            .map_or(Duration::from_secs(1), |b| (b.wait * 2).min(MAX_BACKOFF))
                    };
                    backoff.insert(
                        name,
                        Backoff {
                            until: Instant::now() + wait,
                            wait,
                        },
                    );
                }
            }
        }
        let linger = (LINGER_PER_RECORD
            * delivered
                .saturating_sub(LINGER_FREE)
                .clamp(0, u32::MAX as i64) as u32)
            .min(Duration::from_millis(MAX_LINGER_MS.get() as u64));
        if !nap.is_zero() {
            if let Some(rest) = linger.checked_sub(round.elapsed()) {
                // SAFETY: pg_usleep only sleeps; the duration is below worker_max_linger, so
                // it fits a c_long.
                unsafe { pg_sys::pg_usleep(rest.as_micros() as std::ffi::c_long) };
            }
        }
        // A commit that rang during the round set the latch, but postgres_fdw's waits for the
        // peer reset it: go again at once instead of sleeping through the commits that follow
        // (they do not ring until the next round arms).
        if rung(slot) {
            nap = Duration::ZERO;
        }
    }
}
