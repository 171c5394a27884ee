//! Running a statement against a peer through postgres_fdw and classifying what went wrong.
//!
//! postgres_fdw raises connection failures as 08001 with libpq's text in DETAIL (which names
//! host, port and user but never the password) and passes a remote error's own SQLSTATE,
//! message and hint through; both are kept so the user sees the peer's own explanation.

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::ffi::c_int;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug)]
pub struct RemoteFailure {
    pub sqlstate: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl RemoteFailure {
    /// Class 08 (connection exception) and 28 (invalid authorization): the peer could not be
    /// reached as configured, as opposed to the peer refusing the request itself.
    pub fn is_connection(&self) -> bool {
        let code = self.sqlstate as isize;
        let class = sqlstate_text(code);
        class.starts_with("08") || class.starts_with("28") || class == "57P01"
    }

    /// The peer's server turned the connection away at once: nothing listening (its server
    /// is down or restarting) or it is starting up or shutting down. Read from libpq's text in
    /// DETAIL; a message in another language is simply not recognised (and the failure treated
    /// like any other).
    pub fn is_refused(&self) -> bool {
        self.detail.as_deref().is_some_and(|d| {
            d.contains("Connection refused")
                || (d.contains("on socket") && d.contains("No such file or directory"))
                || d.contains("the database system is starting up")
                || d.contains("the database system is shutting down")
                || d.contains("the database system is in recovery mode")
        })
    }

    pub fn is_undefined_table(&self) -> bool {
        self.sqlstate == PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE
    }

    /// The peer could not take the change now because of what else runs there: a lock it
    /// waited for too long (its synclink.apply_lock_timeout), a deadlock its own detector
    /// broke, or a row a concurrent transaction changed under the delivery's snapshot.
    /// Delivered later, the change meets the other one as a conflict, which the link's
    /// policy decides.
    pub fn is_contention(&self) -> bool {
        use PgSqlErrorCode::*;
        matches!(
            self.sqlstate,
            ERRCODE_LOCK_NOT_AVAILABLE
                | ERRCODE_T_R_DEADLOCK_DETECTED
                | ERRCODE_T_R_SERIALIZATION_FAILURE
        )
    }

    /// A cancel: the user's, statement_timeout, or a deadline (`within`).
    pub fn is_cancel(&self) -> bool {
        self.sqlstate == PgSqlErrorCode::ERRCODE_QUERY_CANCELED
    }

    /// One line for DETAIL: message plus libpq's reason or the peer's detail.
    pub fn summary(&self) -> String {
        match &self.detail {
            Some(d) => format!("{}: {}", self.message, d.trim()),
            None => self.message.clone(),
        }
    }

    /// One line to keep where monitoring roles read it (sync_status): the peer's DETAIL of a
    /// data or constraint error shows row values ("Failing row contains …"), so it is left out.
    pub fn stored_summary(&self) -> String {
        let class = sqlstate_text(self.sqlstate as isize);
        if class.starts_with("22") || class.starts_with("23") {
            self.message.clone()
        } else {
            self.summary()
        }
    }
}

impl std::fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A failure caught from the peer, passed on as the peer reported it: its SQLSTATE, message,
/// detail and hint.
impl crate::pg::error::SqlError for RemoteFailure {
    fn sqlstate(&self) -> PgSqlErrorCode {
        self.sqlstate
    }
    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
    fn detail(&self) -> Option<String> {
        self.detail.clone()
    }
}

/// Decode a packed SQLSTATE back to its five characters.
pub fn sqlstate_text(code: isize) -> String {
    let mut c = code as u32;
    let mut s = String::with_capacity(5);
    for _ in 0..5 {
        s.push((((c & 0x3F) as u8) + b'0') as char);
        c >>= 6;
    }
    s
}

/// Run `f`; a Postgres ERROR raised inside becomes `Err(RemoteFailure)` instead of aborting.
/// The caller must not run further SQL in this (sub)transaction after an `Err`, only raise.
pub fn catching<T>(f: impl FnOnce() -> T) -> Result<T, RemoteFailure> {
    let wrapped = AssertUnwindSafe(f);
    PgTryBuilder::new(move || {
        // Take the wrapper whole: a closure capturing only its field would lose the assertion.
        let w = wrapped;
        Ok((w.0)())
    })
    .catch_others(|e| match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => Err(RemoteFailure {
            sqlstate: r.sql_error_code(),
            message: r.message().to_string(),
            detail: r.detail().map(str::to_string),
            hint: r.hint().map(str::to_string),
        }),
        other => other.rethrow(),
    })
    .execute()
}

/// Run `f`, which waits on a peer, for at most `ms` milliseconds (0: no limit). When the time
/// is up the statement is cancelled as a user's cancel would be (postgres_fdw then cancels
/// the peer's query and rolls it back): `f` fails with 57014, and `deadline_passed()` says it
/// was the deadline. Run it inside a subtransaction (pg/subxact.rs) to carry on.
pub fn within<T>(ms: i32, f: impl FnOnce() -> T) -> T {
    DEADLINE_PASSED.store(false, Ordering::SeqCst);
    if ms <= 0 {
        return f();
    }
    let id = deadline_timeout();
    // SAFETY: enable_timeout_after arms a registered timeout; the guard disarms it on every
    // way out of this function, unwinding included.
    unsafe { enable_timeout_after(id, ms) };
    struct Disarm(c_int);
    impl Drop for Disarm {
        fn drop(&mut self) {
            // SAFETY: self.0 is the id deadline_timeout registered; disarming it touches only
            // the timeout module's own state.
            unsafe { disable_timeout(self.0, false) };
            if deadline_passed() {
                // The time ran out after f had already returned or failed: the cancel it
                // asked for must not hit what the caller runs next (queueing the change, say).
                // A cancel that did stop f was taken already. At worst a user's cancel arriving
                // at this very moment is lost, and can be repeated.
                // SAFETY: QueryCancelPending is a sig_atomic_t that the backend itself clears
                // when it takes a cancel; this clears the one the handler set.
                unsafe { pg_sys::QueryCancelPending = 0 };
            }
        }
    }
    let disarm = Disarm(id);
    let result = f();
    drop(disarm);
    // f finished in time after all: the deadline did not end it.
    DEADLINE_PASSED.store(false, Ordering::SeqCst);
    result
}

/// Did the last `within` end because its time was up?
pub fn deadline_passed() -> bool {
    DEADLINE_PASSED.load(Ordering::SeqCst)
}

static DEADLINE_PASSED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static DEADLINE_ID: std::cell::Cell<Option<c_int>> = const { std::cell::Cell::new(None) };
}

/// PostgreSQL 15's first timeout id for extensions (utils/timeout.h: USER_TIMEOUT).
const USER_TIMEOUT: c_int = 12;

// The timeout module is not among pgrx's bindings. Each call goes through pgrx's FFI guard,
// so that an ERROR raised inside becomes an ordinary Rust-side error.
mod timeout {
    use std::ffi::c_int;
    // SAFETY: the signatures of PostgreSQL 15's utils/timeout.h (TimeoutId is an int-sized enum).
    unsafe extern "C-unwind" {
        pub fn RegisterTimeout(id: c_int, handler: unsafe extern "C" fn()) -> c_int;
        pub fn enable_timeout_after(id: c_int, delay_ms: c_int);
        pub fn disable_timeout(id: c_int, keep_indicator: bool);
    }
}

// SAFETY: callers: `id` must be a timeout registered by RegisterTimeout.
unsafe fn enable_timeout_after(id: c_int, delay_ms: c_int) {
    // SAFETY: the caller passes a registered timeout id.
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            timeout::enable_timeout_after(id, delay_ms)
        })
    }
}

// SAFETY: callers: `id` must be a timeout registered by RegisterTimeout.
unsafe fn disable_timeout(id: c_int, keep_indicator: bool) {
    // SAFETY: as above.
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            timeout::disable_timeout(id, keep_indicator)
        })
    }
}

// SAFETY: callers: `handler` must be async-signal-safe: it runs in SIGALRM's handler.
#[allow(non_snake_case)]
unsafe fn RegisterTimeout(id: c_int, handler: unsafe extern "C" fn()) -> c_int {
    // SAFETY: registering a handler touches only the timeout module's table.
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| timeout::RegisterTimeout(id, handler))
    }
}

/// The backend's deadline timeout, registered on first use.
fn deadline_timeout() -> c_int {
    DEADLINE_ID.with(|d| {
        *d.get().get_or_insert_with(|| {
            // SAFETY: registers a handler for a free extension timeout slot (FATAL if none is
            // left, which only many extensions each taking one would cause).
            let id = unsafe { RegisterTimeout(USER_TIMEOUT, deadline_reached) };
            d.set(Some(id));
            id
        })
    })
}

/// Runs in the SIGALRM handler: only sets flags and the latch, as PostgreSQL's own
/// statement_timeout handler does by way of SIGINT.
// SAFETY: async-signal-safe: atomics, sig_atomic_t flags and SetLatch only.
unsafe extern "C" fn deadline_reached() {
    DEADLINE_PASSED.store(true, Ordering::SeqCst);
    // SAFETY: these are the sig_atomic_t flags and the latch a signal handler may set.
    unsafe {
        pg_sys::InterruptPending = 1;
        pg_sys::QueryCancelPending = 1;
        pg_sys::SetLatch(pg_sys::MyLatch);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlstate_roundtrip() {
        // MAKE_SQLSTATE packs 6 bits per character, first character lowest.
        let pack = |s: &str| -> isize {
            s.bytes()
                .enumerate()
                .map(|(i, b)| ((b - b'0') as isize) << (6 * i))
                .sum()
        };
        for s in ["08001", "42P01", "28P01", "57P01"] {
            assert_eq!(super::sqlstate_text(pack(s)), s);
        }
    }

    #[test]
    fn only_a_server_turning_connections_away_is_refused() {
        let failure = |detail: &str| super::RemoteFailure {
            sqlstate: pgrx::PgSqlErrorCode::ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            message: "could not connect to server \"synclink_b\"".into(),
            detail: Some(detail.into()),
            hint: None,
        };
        for refused in [
            "connection to server at \"127.0.0.1\", port 5433 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?",
            "connection to server on socket \"/tmp/.s.PGSQL.5433\" failed: No such file or directory",
            "connection to server at \"127.0.0.1\", port 5433 failed: FATAL:  the database system is starting up",
            "connection to server at \"127.0.0.1\", port 5433 failed: FATAL:  the database system is shutting down",
        ] {
            assert!(failure(refused).is_refused(), "{refused}");
        }
        for other in [
            "connection to server at \"127.0.0.1\", port 5433 failed: FATAL:  password authentication failed for user \"sync\"",
            "connection to server at \"10.0.0.9\", port 5432 failed: timeout expired",
            "could not translate host name \"nowhere\" to address: Name or service not known",
        ] {
            assert!(!failure(other).is_refused(), "{other}");
        }
    }
}
