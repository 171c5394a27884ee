//! Small SPI conveniences.

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiError, SpiTupleTable};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The first column of the first row, or None when the query returns no row or NULL.
/// (pgrx reports "no row" as an error; for a catalog lookup it is an ordinary answer.)
pub fn maybe_one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    match Spi::get_one_with_args::<T>(sql, args) {
        Ok(v) => v,
        Err(SpiError::InvalidPosition) => None,
        Err(e) => panic!("{e}"),
    }
}

/// The first column of every row.
pub fn column<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Vec<T> {
    Spi::connect(|c| {
        c.select(sql, None, args)
            .unwrap()
            .filter_map(|r| r.get::<T>(1).unwrap())
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
) -> R {
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
) -> R {
    kept(sql, types, args, false, read)
}

fn kept<R>(
    sql: &str,
    types: &[PgOid],
    args: &[DatumWithOid],
    writes: bool,
    read: impl FnOnce(SpiTupleTable) -> R,
) -> R {
    Spi::connect_mut(|c| {
        // A shared handle, not a borrow of the cache: the statement may fire a trigger that
        // runs prepared statements of its own, and an error inside it must not free the plan.
        let plan = PLANS.with(|p| p.borrow().get(sql).cloned());
        let plan = plan.unwrap_or_else(|| {
            let made = if writes {
                c.prepare_mut(sql, types)
            } else {
                c.prepare(sql, types)
            };
            let plan = Rc::new(made.unwrap().keep());
            PLANS.with(|p| p.borrow_mut().insert(sql.to_string(), plan.clone()));
            plan
        });
        crate::pg::plan::with_kept_plan(|| {
            let rows = if writes {
                c.update(&*plan, None, args)
            } else {
                c.select(&*plan, None, args)
            };
            read(rows.unwrap())
        })
    })
}
