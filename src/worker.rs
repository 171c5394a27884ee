//! Background delivery, when synclink is in shared_preload_libraries.
//!
//! A launcher keeps one delivery worker per database that accepts connections, looking every
//! second so a new database is served at once; templates are left alone, so CREATE DATABASE is
//! never blocked. A delivery worker idles while synclink is not installed in its database;
//! otherwise, every synclink.worker_naptime, it delivers each
//! peer's queue in order, in transactions of up to WORKER_BATCH records, and backs off from a
//! peer that cannot be reached (1 s, doubling to 5 s).

use crate::queue::{self, Flushed};
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

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
    // Workers, and the server-start setting they read, exist only when preloaded: a library
    // loaded later by CREATE EXTENSION may not define PGC_POSTMASTER settings.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
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
    let mut workers: HashMap<u32, DynamicBackgroundWorker> = HashMap::new();
    loop {
        let databases: Vec<(u32, String)> = BackgroundWorker::transaction(|| {
            Spi::connect(|c| {
                c.select(
                    "SELECT oid::int8, datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate",
                    None,
                    &[],
                )
                .unwrap()
                .map(|r| (r.get::<i64>(1).unwrap().unwrap() as u32, r.get::<String>(2).unwrap().unwrap()))
                .collect()
            })
        });
        workers.retain(|oid, w| w.pid().is_ok() && databases.iter().any(|(o, _)| o == oid));
        for (oid, name) in databases {
            if workers.contains_key(&oid) {
                continue;
            }
            let started = BackgroundWorkerBuilder::new(&format!("synclink delivery {name}"))
                .set_type("synclink delivery")
                .set_library("synclink")
                .set_function("synclink_delivery_main")
                .set_argument(Some(pg_sys::Datum::from(oid as usize)))
                .enable_spi_access()
                .set_restart_time(Some(Duration::from_secs(1)))
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

struct Backoff {
    until: Instant,
    wait: Duration,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn synclink_delivery_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let dboid = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(dboid), None);
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    let mut nap = Duration::from_millis(NAPTIME_MS.get() as u64);
    while BackgroundWorker::wait_latch(Some(nap)) {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        nap = Duration::from_millis(NAPTIME_MS.get() as u64);
        let peers: Option<Vec<String>> = BackgroundWorker::transaction(|| {
            let installed = Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'synclink')",
            )
            .unwrap()
            .unwrap_or(false);
            installed.then(|| {
                crate::db::column::<String>("SELECT DISTINCT peer_name FROM synclink.outbox", &[])
            })
        });
        let Some(peers) = peers else {
            // not installed here: look again now and then
            nap = Duration::from_secs(5);
            continue;
        };
        for name in peers {
            if backoff.get(&name).is_some_and(|b| b.until > Instant::now()) {
                continue;
            }
            let outcome = BackgroundWorker::transaction(|| match crate::peer::find(&name) {
                Some(peer) => queue::flush(&peer, WORKER_BATCH),
                None => Flushed::Done(0),
            });
            match outcome {
                Flushed::Done(_) => {
                    backoff.remove(&name);
                }
                Flushed::Partial(_) => {
                    backoff.remove(&name);
                    nap = Duration::ZERO;
                }
                Flushed::Busy => {}
                Flushed::Failed(..) => {
                    let wait = backoff
                        .get(&name)
                        .map_or(Duration::from_secs(1), |b| (b.wait * 2).min(MAX_BACKOFF));
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
    }
}
