//! Small SPI conveniences.
//!
//! Every function here returns a `Result`: a failed SPI call is an error with a SQLSTATE
//! (`impl SqlError for SpiError` in [`crate::pg::error`]), and a NULL or missing row where
//! synclink's own catalog guarantees a value is [`Missing`], never a panic.

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiError, SpiTupleTable};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A value synclink's catalog guarantees (a NOT NULL column, the row of a link being used)
/// was not there: the catalog was changed by hand, or changed under a running statement.
#[derive(thiserror::Error, Debug)]
#[error("synclink's catalog has no {0} where it must have one")]
pub struct Missing(pub &'static str);

impl crate::pg::error::SqlError for Missing {
    fn sqlstate(&self) -> PgSqlErrorCode {
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
    }
    fn hint(&self) -> Option<String> {
        Some(
            "synclink's catalog may have been changed by hand; SELECT * FROM sync_status shows \
             each link's state, and sync_unlink_table() followed by sync_link_table() makes a link anew."
                .into(),
        )
    }
}

/// Column `ordinal` (1-based) of a row synclink reads from its own catalog, which must not be
/// NULL there: `what` names it in the error if it is.
pub fn need<T: FromDatum + IntoDatum>(
    row: &pgrx::spi::SpiHeapTupleData,
    ordinal: usize,
    what: &'static str,
) -> crate::pg::error::Result<T> {
    Ok(row.get::<T>(ordinal)?.ok_or(Missing(what))?)
}

/// The first column of the first row, or None when the query returns no row or NULL.
/// (pgrx reports "no row" as an error; for a catalog lookup it is an ordinary answer.)
pub fn maybe_one<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid],
) -> Result<Option<T>, SpiError> {
    no_row_is_none(Spi::get_one_with_args::<T>(sql, args))
}

/// The first column of the first row of `table`, or None when it has no row or NULL there.
pub fn first_of<T: FromDatum + IntoDatum>(table: SpiTupleTable) -> Result<Option<T>, SpiError> {
    no_row_is_none(table.first().get_one::<T>())
}

fn no_row_is_none<T>(value: Result<Option<T>, SpiError>) -> Result<Option<T>, SpiError> {
    match value {
        Err(SpiError::InvalidPosition) => Ok(None),
        other => other,
    }
}

/// The first column of every row (rows where it is NULL left out).
pub fn column<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid],
) -> Result<Vec<T>, SpiError> {
    Spi::connect(|c| {
        c.select(sql, None, args)?
            .filter_map(|r| r.get::<T>(1).transpose())
            .collect()
    })
}

thread_local! {
    static PLANS: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// Run a statement that writes, planned once per backend and kept across transactions, and
/// read its rows with `read`. For the statements the delivery worker and the apply path
/// repeat on every round, where planning would cost more than running. One generic plan is
/// used (crate::pg::plan explains how it is made). The text is the cache key; a plan whose
/// objects were dropped and made again is re-planned by PostgreSQL on its next use.
pub fn prepared<R>(
    sql: &str,
    types: &[PgOid],
    args: &[DatumWithOid],
    read: impl FnOnce(SpiTupleTable) -> R,
) -> Result<R, SpiError> {
    kept(sql, types, args, true, read)
}

/// Like `prepared`, for a statement that only reads. It does not make the transaction take
/// a transaction id, so a transaction of nothing but reads (the worker finding nothing to
/// do) commits without a WAL record and without waiting for a flush.
pub fn prepared_read<R>(
    sql: &str,
    types: &[PgOid],
    args: &[DatumWithOid],
    read: impl FnOnce(SpiTupleTable) -> R,
) -> Result<R, SpiError> {
    kept(sql, types, args, false, read)
}

fn kept<R>(
    sql: &str,
    types: &[PgOid],
    args: &[DatumWithOid],
    writes: bool,
    read: impl FnOnce(SpiTupleTable) -> R,
) -> Result<R, SpiError> {
    Spi::connect_mut(|c| {
        // A shared handle, not a borrow of the cache: the statement may fire a trigger that
        // runs prepared statements of its own, and an error inside it must not free the plan.
        let plan = match PLANS.with(|p| p.borrow().get(sql).cloned()) {
            Some(plan) => plan,
            None => {
                let made = if writes {
                    c.prepare_mut(sql, types)
                } else {
                    c.prepare(sql, types)
                };
                let plan = Rc::new(made?.keep());
                PLANS.with(|p| p.borrow_mut().insert(sql.to_string(), plan.clone()));
                plan
            }
        };
        crate::pg::plan::with_kept_plan(|| {
            let rows = if writes {
                c.update(&*plan, None, args)
            } else {
                c.select(&*plan, None, args)
            };
            Ok(read(rows?))
        })
    })
}
