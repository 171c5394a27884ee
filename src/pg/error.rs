//! Turning a module's error enum into a Postgres error report.
//!
//! Every module keeps its own `thiserror` enum; each implements [`SqlError`] to say which
//! SQLSTATE it is and what the user should do about it. Messages are built from names the
//! user gave us and from catalog facts, never from a conninfo, so they cannot carry a password.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

pub trait SqlError: std::fmt::Display {
    fn sqlstate(&self) -> PgSqlErrorCode;
    fn hint(&self) -> Option<String> {
        None
    }
    fn detail(&self) -> Option<String> {
        None
    }
}

/// The PostgreSQL error report for `err`: its SQLSTATE, message, detail and hint.
pub fn report<E: SqlError>(err: E) -> ErrorReport {
    let mut report = ErrorReport::new(err.sqlstate(), err.to_string(), "synclink");
    if let Some(hint) = err.hint() {
        report = report.set_hint(hint);
    }
    if let Some(detail) = err.detail() {
        report = report.set_detail(detail);
    }
    report
}

/// Raise `err` as an ERROR. Never returns.
pub fn raise<E: SqlError>(err: E) -> ! {
    report(err).report(PgLogLevel::ERROR);
    unreachable!("ERROR report returned")
}

/// `?` on a module's error inside a function that returns `Result<_, ErrorReport>` — the
/// `#[pg_extern]` functions and triggers, where errors leave the extension.
macro_rules! reported_as_sql_error {
    ($($error:ty),+ $(,)?) => {$(
        impl From<$error> for pgrx::pg_sys::panic::ErrorReport {
            fn from(err: $error) -> Self {
                $crate::pg::error::report(err)
            }
        }
    )+};
}
pub(crate) use reported_as_sql_error;

pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T, E: SqlError> OrRaise<T> for Result<T, E> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise(e),
        }
    }
}

pub fn notice(msg: &str) {
    ereport!(
        PgLogLevel::NOTICE,
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        msg
    );
}

pub fn warning(msg: &str, hint: &str) {
    ErrorReport::new(PgSqlErrorCode::ERRCODE_WARNING, msg.to_string(), "synclink")
        .set_hint(hint)
        .report(PgLogLevel::WARNING);
}
