//! Running a statement against a peer through postgres_fdw and classifying what went wrong.
//!
//! postgres_fdw raises connection failures as 08001 with libpq's text in DETAIL (which names
//! host, port and user but never the password) and passes a remote error's own SQLSTATE,
//! message and hint through; both are kept so the user sees the peer's own explanation.

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;

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

    pub fn is_undefined_table(&self) -> bool {
        self.sqlstate == PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE
    }

    /// One line for status views and DETAIL: message plus libpq's reason.
    pub fn summary(&self) -> String {
        match &self.detail {
            Some(d) => format!("{}: {}", self.message, d.trim()),
            None => self.message.clone(),
        }
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

/// Raise a failure caught from the peer again, as the peer reported it.
pub fn reraise(f: RemoteFailure) -> ! {
    let mut report = pgrx::pg_sys::panic::ErrorReport::new(f.sqlstate, f.message, "synclink");
    if let Some(d) = f.detail {
        report = report.set_detail(d);
    }
    if let Some(h) = f.hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!()
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
}
