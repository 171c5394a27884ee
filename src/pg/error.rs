//! Turning a module's error enum into a Postgres error report.
//!
//! Every module keeps its own `thiserror` enum; each implements [`SqlError`] to say which
//! SQLSTATE it is and what the user should do about it. Messages are built from names the
//! user gave us and from catalog facts, never from a conninfo, so they cannot carry a password.
//!
//! Inside the extension an error travels as [`Error`] (any module's error, boxed) through
//! functions returning [`Result`], with `?`; it becomes a PostgreSQL error once, where a
//! `#[pg_extern]` function or a trigger returns (`impl From<Error> for ErrorReport`). A failed
//! SPI call is an error like any other ([`SqlError`] for `SpiError`), never a Rust panic.

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

/// Any of synclink's errors on its way to the edge.
pub struct Error(Box<dyn SqlError>);

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl<E: SqlError + 'static> From<E> for Error {
    fn from(err: E) -> Self {
        Error(Box::new(err))
    }
}

impl Error {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        self.0.sqlstate()
    }
    pub fn hint(&self) -> Option<String> {
        self.0.hint()
    }
    pub fn detail(&self) -> Option<String> {
        self.0.detail()
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.0.sqlstate(), self.0)
    }
}

impl From<Error> for ErrorReport {
    fn from(err: Error) -> Self {
        report(&*err.0)
    }
}

impl<T> OrRaise<T> for Result<T, Error> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e))
    }
}

/// A failed SPI call: a statement synclink made that PostgreSQL answered in a form synclink
/// did not expect. (An ERROR raised by the statement itself is not this: it propagates as the
/// statement's own error.)
impl SqlError for pgrx::spi::SpiError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            // A row synclink's catalog should hold is missing: it changed under us.
            pgrx::spi::SpiError::InvalidPosition => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            _ => PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(
            "synclink's catalog may have been changed by hand, or this is a bug in synclink: \
             the server log has the statement; SELECT * FROM sync_status shows each link's state."
                .into(),
        )
    }
}

/// The PostgreSQL error report for `err`: its SQLSTATE, message, detail and hint.
pub fn report<E: SqlError + ?Sized>(err: &E) -> ErrorReport {
    let mut report = ErrorReport::new(err.sqlstate(), err.to_string(), "synclink");
    if let Some(hint) = err.hint() {
        report = report.set_hint(hint);
    }
    if let Some(detail) = err.detail() {
        report = report.set_detail(detail);
    }
    report
}

/// Raise `err` (a module's error, or an [`Error`] carrying one) as an ERROR. Never returns.
/// Only where there is no caller to return an error to (`OrRaise` at the edges: callbacks and
/// entry points PostgreSQL calls directly).
pub fn raise(err: impl Into<Error>) -> ! {
    ErrorReport::from(err.into()).report(PgLogLevel::ERROR);
    unreachable!("ERROR report returned")
}

/// `?` on a module's error inside a function that returns `Result<_, ErrorReport>` — the
/// `#[pg_extern]` functions and triggers, where errors leave the extension.
macro_rules! reported_as_sql_error {
    ($($error:ty),+ $(,)?) => {$(
        impl From<$error> for pgrx::pg_sys::panic::ErrorReport {
            fn from(err: $error) -> Self {
                $crate::pg::error::report(&err)
            }
        }
    )+};
}
pub(crate) use reported_as_sql_error;

pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T, E: SqlError + 'static> OrRaise<T> for Result<T, E> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e))
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
