//! The arguments of the functions users call. SQL lets any argument be NULL and any regclass
//! name an OID that no longer exists; each gets a clear error here instead of a silent NULL
//! result or an internal error, and user input is never echoed back at length.

use crate::pg::error::SqlError;
use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::prelude::*;

#[derive(thiserror::Error, Debug)]
pub enum ArgError {
    #[error("{function}: argument \"{argument}\" must not be NULL")]
    Null {
        function: &'static str,
        argument: &'static str,
    },
    #[error("{function}: argument \"{argument}\" must not contain NULL")]
    NullElement {
        function: &'static str,
        argument: &'static str,
    },
    #[error("relation with OID {0} does not exist")]
    NoRelation(u32),
}

impl SqlError for ArgError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            ArgError::Null { .. } | ArgError::NullElement { .. } => {
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED
            }
            ArgError::NoRelation(_) => PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            ArgError::Null { .. } => {
                "Pass a value; an argument with a default can be left out instead.".into()
            }
            ArgError::NullElement { .. } => "Pass column names only.".into(),
            ArgError::NoRelation(_) => {
                "The table was dropped; name an existing table, e.g. 'public.products'.".into()
            }
        })
    }
}

crate::pg::error::reported_as_sql_error!(ArgError);

/// A `regclass` argument, taken as the OID it is: the function checks that the relation
/// exists, rather than failing with an internal error while the argument is read.
pub struct RegClass(pg_sys::Oid);

impl FromDatum for RegClass {
    // SAFETY: callers: `datum` is a regclass datum or NULL, as FromDatum promises.
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<RegClass> {
        if is_null {
            return None;
        }
        // SAFETY: a regclass datum is an OID passed by value, and not NULL here.
        unsafe { pg_sys::Oid::from_datum(datum, false) }.map(RegClass)
    }
}

// SAFETY: the value is read with FromDatum above, which handles NULL; a NULL reaching
// unbox_arg_unchecked (never, for the Option<RegClass> arguments used here) panics as pgrx's
// own argument types do.
unsafe impl<'fcx> ArgAbi<'fcx> for RegClass {
    // SAFETY: callers: `arg` is this function's argument of type regclass (pgrx's generated
    // wrapper passes each argument to the type declared for it).
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: `arg` holds a regclass datum or NULL, as the caller guarantees, which is
        // what FromDatum for RegClass reads.
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    // SAFETY: callers: `arg` is this function's argument of type regclass.
    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: as in unbox_arg_unchecked.
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

pgrx::impl_sql_translatable!(RegClass, "regclass");

/// A value that must be given.
pub fn required<T>(
    value: Option<T>,
    function: &'static str,
    argument: &'static str,
) -> Result<T, ArgError> {
    value.ok_or(ArgError::Null { function, argument })
}

/// A relation that must be given and must exist; locked against a concurrent DROP for the
/// rest of the transaction, as naming it in a statement would.
pub fn relation(
    value: Option<RegClass>,
    function: &'static str,
    argument: &'static str,
) -> Result<pg_sys::Oid, ArgError> {
    let oid = required(value, function, argument)?.0;
    // SAFETY: LockRelationOid waits for and takes an AccessShareLock; the syscache probe
    // afterwards sees the relation as it is once the lock is held.
    let exists = unsafe {
        pg_sys::LockRelationOid(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        pg_sys::SearchSysCacheExists(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            oid.into(),
            0.into(),
            0.into(),
            0.into(),
        )
    };
    if !exists {
        return Err(ArgError::NoRelation(oid.to_u32()));
    }
    Ok(oid)
}

/// A list of names, each given.
pub fn names(
    value: Option<Vec<Option<String>>>,
    function: &'static str,
    argument: &'static str,
) -> Result<Option<Vec<String>>, ArgError> {
    value
        .map(|v| {
            v.into_iter()
                .map(|n| n.ok_or(ArgError::NullElement { function, argument }))
                .collect()
        })
        .transpose()
}

/// User input as an error message may show it: at most 64 characters, quoted, so that a
/// megabyte of input is not written back into the message and the server log.
pub fn shown(input: &str) -> String {
    const MAX: usize = 64;
    match input.char_indices().nth(MAX) {
        None => format!("\"{input}\""),
        Some((cut, _)) => format!("\"{}\"… ({} bytes)", &input[..cut], input.len()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_input_is_cut() {
        assert_eq!(super::shown("abc"), "\"abc\"");
        let long = "é".repeat(100);
        let s = super::shown(&long);
        assert!(s.starts_with(&format!("\"{}\"…", "é".repeat(64))), "{s}");
        assert!(s.ends_with("(200 bytes)"), "{s}");
    }
}
