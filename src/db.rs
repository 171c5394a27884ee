//! Small SPI conveniences.

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum};
use pgrx::prelude::*;
use pgrx::spi::SpiError;

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

/// This backend's local id of the current transaction: a key for per-transaction caches.
pub fn local_xact() -> u32 {
    unsafe { (*pgrx::pg_sys::MyProc).lxid }
}
