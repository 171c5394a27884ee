//! Statements the apply path runs for every change record, planned to suit the record's size.
//!
//! A change record is usually one row, sometimes a hundred thousand. Left to itself the plan
//! cache plans such a statement afresh on every call (an array parameter of known length
//! always looks cheaper planned with its value), and planning the checked apply statement
//! costs more than running it for one row. So each statement is prepared twice: a generic
//! plan, made once per session with joins by index, for small records; and a plan made for
//! each large record with its real size in view.

use pgrx::prelude::*;
use pgrx::IntoDatum;
use std::ffi::{CStr, CString};
use std::ptr::NonNull;

/// Records up to this many bytes of arguments use the generic plan: a few thousand rows,
/// where probing the key indexes row by row is still the right join whatever the table's size.
const SMALL_BYTES: usize = 256 << 10;

/// Planner settings for the generic plan. It is made for an array of unknown length and
/// kept for the session, whatever the tables grow to; joins by index stay right for any
/// table size, where a hash join chosen while the table was small would scan all of it later.
const GENERIC_HINTS: [(&CStr, &CStr); 3] = [
    (c"enable_hashjoin", c"off"),
    (c"enable_mergejoin", c"off"),
    (c"enable_seqscan", c"off"),
];

pub struct Statement {
    generic: NonNull<pg_sys::_SPI_plan>,
    custom: NonNull<pg_sys::_SPI_plan>,
}

impl Statement {
    /// Prepare `sql`, whose parameters are all text, for the session. Must run inside an SPI
    /// connection.
    pub fn prepare(sql: &str, nargs: usize) -> Statement {
        Statement {
            generic: keep(sql, nargs, pg_sys::CURSOR_OPT_GENERIC_PLAN),
            custom: keep(sql, nargs, pg_sys::CURSOR_OPT_CUSTOM_PLAN),
        }
    }

    /// Run the statement with text arguments; the first column of its first row, if it
    /// returns one. Must run inside an SPI connection.
    pub fn run(&self, args: &[&str]) -> Option<i64> {
        let bytes: usize = args.iter().map(|a| a.len()).sum();
        let plan = if bytes <= SMALL_BYTES {
            self.plan_generic();
            self.generic
        } else {
            self.custom
        };
        let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.into_datum().unwrap()).collect();
        let nulls = vec![b' ' as std::ffi::c_char; args.len()];
        unsafe {
            let rc = pg_sys::SPI_execute_plan(
                plan.as_ptr(),
                values.as_mut_ptr(),
                nulls.as_ptr(),
                false,
                0,
            );
            if rc < 0 {
                panic!("SPI_execute_plan failed: {rc}");
            }
            let table = pg_sys::SPI_tuptable;
            if table.is_null() || pg_sys::SPI_processed == 0 || (*(*table).tupdesc).natts < 1 {
                return None;
            }
            let mut isnull = false;
            let datum = pg_sys::SPI_getbinval(*(*table).vals, (*table).tupdesc, 1, &mut isnull);
            i64::from_datum(datum, isnull)
        }
    }

    /// Make the generic plan under GENERIC_HINTS unless a valid one is kept. An invalidation
    /// (DDL, ANALYZE) drops it; the next call makes it again.
    fn plan_generic(&self) {
        unsafe {
            let sources = pg_sys::SPI_plan_get_plan_sources(self.generic.as_ptr());
            let source = pg_sys::list_nth(sources, 0) as *mut pg_sys::CachedPlanSource;
            let kept = (*source).gplan;
            if (*source).is_valid && !kept.is_null() && (*kept).is_valid {
                return;
            }
            let level = pg_sys::NewGUCNestLevel();
            for (name, value) in GENERIC_HINTS {
                pg_sys::set_config_option(
                    name.as_ptr(),
                    value.as_ptr(),
                    pg_sys::GucContext::PGC_USERSET,
                    pg_sys::GucSource::PGC_S_SESSION,
                    pg_sys::GucAction::GUC_ACTION_SAVE,
                    true,
                    0,
                    false,
                );
            }
            let plan = pg_sys::SPI_plan_get_cached_plan(self.generic.as_ptr());
            if !plan.is_null() {
                pg_sys::ReleaseCachedPlan(plan, pg_sys::CurrentResourceOwner);
            }
            // On an error above, the (sub)transaction's abort restores the settings.
            pg_sys::AtEOXact_GUC(true, level);
        }
    }
}

fn keep(sql: &str, nargs: usize, options: u32) -> NonNull<pg_sys::_SPI_plan> {
    let sql = CString::new(sql).expect("generated SQL has no NUL");
    let mut types = vec![pg_sys::TEXTOID; nargs];
    unsafe {
        let plan = pg_sys::SPI_prepare_cursor(
            sql.as_ptr(),
            nargs as i32,
            types.as_mut_ptr(),
            options as i32,
        );
        let code = pg_sys::SPI_result;
        let plan =
            NonNull::new(plan).unwrap_or_else(|| panic!("SPI_prepare_cursor failed: {code}"));
        pg_sys::SPI_keepplan(plan.as_ptr());
        plan
    }
}

impl Drop for Statement {
    fn drop(&mut self) {
        unsafe {
            pg_sys::SPI_freeplan(self.generic.as_ptr());
            pg_sys::SPI_freeplan(self.custom.as_ptr());
        }
    }
}
