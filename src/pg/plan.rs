//! Statements the apply path runs for every change record, planned to suit the record's size.
//!
//! A change record is usually one row, sometimes a hundred thousand. Left to itself the plan
//! cache plans such a statement afresh on every call (an array parameter of known length
//! always looks cheaper planned with its value), and planning the checked apply statement
//! costs more than running it for one row; after a few calls it may also settle on a plan
//! costed for a hundred rows and use it for a hundred thousand. So each statement has two
//! plans: a generic one, made once per session with joins by index, for small records; and
//! one made for each large record with its real size in view.

use pgrx::prelude::*;
use pgrx::spi::{SpiError, SpiErrorCodes};
use std::cell::OnceCell;
use std::ffi::{CStr, CString};
use std::ptr::NonNull;

/// Records up to this many bytes (as text) use the generic plan: up to some tens of
/// thousands of rows, where probing the key indexes row by row costs about what hashing
/// them would, and stays bounded by the record's size where a hash join's scan grows with
/// the table. Whole capture chunks (5,000 rows) fall below it.
const SMALL_BYTES: usize = 4 << 20;

/// Planner settings for the generic plan. It is made for an array of unknown length and
/// kept for the session, whatever the tables grow to; joins by index stay right for any
/// table size, where a hash join chosen while the table was small would scan all of it later.
const GENERIC_HINTS: [(&CStr, &CStr); 5] = [
    (c"enable_hashjoin", c"off"),
    (c"enable_mergejoin", c"off"),
    (c"enable_seqscan", c"off"),
    (c"enable_bitmapscan", c"off"),
    (c"jit", c"off"),
];

/// Run `f`, which executes a prepared statement kept for the session, so that the plan
/// cache uses one generic plan for it, made under GENERIC_HINTS. For the queue's statements:
/// the outbox is empty one moment and holds a million records the next, so its statistics
/// say little, and a plan made from them could scan the whole table at every wake-up.
pub fn with_kept_plan<T>(f: impl FnOnce() -> T) -> T {
    let mut settings = GENERIC_HINTS.to_vec();
    settings.push((c"plan_cache_mode", c"force_generic_plan"));
    with_settings(&settings, f)
}

/// Settings for planning and running a large record's plan. Its estimated cost is high
/// enough for JIT compilation, which would compile every record's statement afresh: tens
/// of milliseconds, more than the statement takes to run.
const CUSTOM_SETTINGS: [(&CStr, &CStr); 1] = [(c"jit", c"off")];

type Plan = NonNull<pg_sys::_SPI_plan>;

pub struct Statement {
    sql: CString,
    types: Vec<pg_sys::Oid>,
    generic: OnceCell<Plan>,
    custom: OnceCell<Plan>,
}

impl Statement {
    /// A statement with parameters of `types`, prepared when first run.
    pub fn new(sql: &str, types: &[pg_sys::Oid]) -> Statement {
        Statement {
            // A statement is made of Rust literals and of names and values read from
            // PostgreSQL, whose text values cannot hold a NUL byte.
            sql: CString::new(sql).expect("generated SQL has no NUL"),
            types: types.to_vec(),
            generic: OnceCell::new(),
            custom: OnceCell::new(),
        }
    }

    /// Run the statement for a record of `bytes` bytes; the first column of its first row,
    /// if it returns one. Must run inside an SPI connection.
    pub fn run(&self, bytes: usize, args: &[pg_sys::Datum]) -> Result<Option<i64>, SpiError> {
        self.execute(bytes, args)?;
        // SAFETY: after a successful run SPI_tuptable is this statement's result or NULL
        // (checked), valid until the next SPI call; with a row and a column, its first tuple
        // may be read at column 1. As an i64 the datum's bits are taken as they are: nothing
        // is dereferenced, whatever the column's type.
        unsafe {
            let table = pg_sys::SPI_tuptable;
            if table.is_null() || pg_sys::SPI_processed == 0 || (*(*table).tupdesc).natts < 1 {
                return Ok(None);
            }
            let mut isnull = false;
            let datum = pg_sys::SPI_getbinval(*(*table).vals, (*table).tupdesc, 1, &mut isnull);
            Ok(i64::from_datum(datum, isnull))
        }
    }

    /// Run the statement as `run` does; every column of its first row in text form (none
    /// when it returns no row), written under `settings` (the statement itself runs under the
    /// session's own).
    pub fn run_texts(
        &self,
        bytes: usize,
        args: &[pg_sys::Datum],
        settings: &[(&CStr, &CStr)],
    ) -> Result<Vec<Option<String>>, SpiError> {
        self.execute(bytes, args)?;
        // SAFETY: as in `run`, SPI_tuptable is this statement's result or NULL (checked);
        // SPI_getvalue reads column n (1..=natts) of its first tuple through the column's
        // output function and returns NULL or a palloc'd C string, copied here at once.
        let texts = with_settings(settings, || unsafe {
            let table = pg_sys::SPI_tuptable;
            if table.is_null() || pg_sys::SPI_processed == 0 {
                return Vec::new();
            }
            let natts = (*(*table).tupdesc).natts;
            (1..=natts)
                .map(|n| {
                    let text = pg_sys::SPI_getvalue(*(*table).vals, (*table).tupdesc, n);
                    (!text.is_null()).then(|| CStr::from_ptr(text).to_bytes().to_vec())
                })
                .collect::<Vec<_>>()
        });
        texts
            .into_iter()
            .map(|t| t.map(String::from_utf8).transpose())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                // Text a String cannot hold: refused with the SQLSTATE for it, never mangled.
                pgrx::ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
                    "a row to pass on is not valid UTF-8 text",
                    "synclink passes rows on as UTF-8 text: use a UTF-8 database."
                );
            })
    }

    /// Execute with the plan that suits a record of `bytes` bytes.
    fn execute(&self, bytes: usize, args: &[pg_sys::Datum]) -> Result<(), SpiError> {
        self.check_arguments(args)?;
        let small = bytes <= SMALL_BYTES;
        let plan = if small {
            let plan = self.plan(&self.generic, pg_sys::CURSOR_OPT_GENERIC_PLAN)?;
            plan_generic(plan);
            plan
        } else {
            self.plan(&self.custom, pg_sys::CURSOR_OPT_CUSTOM_PLAN)?
        };
        let mut values = args.to_vec();
        let nulls = vec![b' ' as std::ffi::c_char; args.len()];
        let settings: &[(&CStr, &CStr)] = if small { &[] } else { &CUSTOM_SETTINGS };
        // SAFETY: `plan` is a kept plan this statement made and has not freed; `values` and
        // `nulls` hold one entry per parameter (checked above) and outlive the call, which
        // only reads them. The caller is inside an SPI connection, as SPI_execute_plan
        // requires.
        let rc = with_settings(settings, || unsafe {
            pg_sys::SPI_execute_plan(plan.as_ptr(), values.as_mut_ptr(), nulls.as_ptr(), false, 0)
        });
        if rc < 0 {
            return Err(failed(rc));
        }
        Ok(())
    }

    /// Run the statement, which only reads, with the latest snapshot rather than the
    /// transaction's; the first column (bigint) of every row. Under REPEATABLE READ
    /// (postgres_fdw's remote transactions) a statement sees nothing committed after the
    /// transaction began, but some checks must see what a transaction they waited for has
    /// just committed. Uses the generic plan; must run inside an SPI connection.
    pub fn read_latest(&self, args: &[pg_sys::Datum]) -> Result<Vec<i64>, SpiError> {
        self.check_arguments(args)?;
        let plan = self.plan(&self.generic, pg_sys::CURSOR_OPT_GENERIC_PLAN)?;
        plan_generic(plan);
        let mut values = args.to_vec();
        let nulls = vec![b' ' as std::ffi::c_char; args.len()];
        // SAFETY: as in `run` for the plan and the arguments. GetLatestSnapshot returns a
        // snapshot PostgreSQL keeps for at least this statement; read_only is true, so SPI
        // neither copies nor needs to register it.
        let rc = unsafe {
            pg_sys::SPI_execute_snapshot(
                plan.as_ptr(),
                values.as_mut_ptr(),
                nulls.as_ptr(),
                pg_sys::GetLatestSnapshot(),
                std::ptr::null_mut(),
                true,
                false,
                0,
            )
        };
        if rc < 0 {
            return Err(failed(rc));
        }
        // SAFETY: after a successful execution SPI_tuptable is this statement's result (NULL
        // checked), valid until the next SPI call, with SPI_processed tuples in `vals`, each
        // read at column 1 of the statement's own descriptor; reading a datum as an i64
        // dereferences nothing, as in `run`.
        unsafe {
            let table = pg_sys::SPI_tuptable;
            if table.is_null() {
                return Ok(Vec::new());
            }
            Ok((0..pg_sys::SPI_processed as usize)
                .filter_map(|i| {
                    let mut isnull = false;
                    let row = *(*table).vals.add(i);
                    let datum = pg_sys::SPI_getbinval(row, (*table).tupdesc, 1, &mut isnull);
                    i64::from_datum(datum, isnull)
                })
                .collect())
        }
    }

    fn check_arguments(&self, args: &[pg_sys::Datum]) -> Result<(), SpiError> {
        if args.len() != self.types.len() {
            return Err(SpiError::PreparedStatementArgumentMismatch {
                expected: self.types.len(),
                got: args.len(),
            });
        }
        Ok(())
    }

    /// The plan kept in `cell`, made with `options` on first use.
    fn plan(&self, cell: &OnceCell<Plan>, options: u32) -> Result<Plan, SpiError> {
        if let Some(plan) = cell.get() {
            return Ok(*plan);
        }
        let plan = self.prepare(options)?;
        // Nothing else fills the cell meanwhile: preparing runs no code of this statement's.
        Ok(*cell.get_or_init(|| plan))
    }

    fn prepare(&self, options: u32) -> Result<Plan, SpiError> {
        let mut types = self.types.clone();
        // SAFETY: `sql` is NUL-terminated and `types` holds one OID per parameter, both alive
        // for the call, which copies what it keeps; a statement PostgreSQL rejects raises an
        // ERROR.
        let plan = unsafe {
            pg_sys::SPI_prepare_cursor(
                self.sql.as_ptr(),
                types.len() as i32,
                types.as_mut_ptr(),
                options as i32,
            )
        };
        let Some(plan) = NonNull::new(plan) else {
            // SAFETY: SPI_result is the plain int SPI set for the call just made.
            return Err(failed(unsafe { pg_sys::SPI_result }));
        };
        // SAFETY: `plan` is the plan just made; SPI_keepplan moves it out of the SPI
        // connection's memory, so that it lives until Drop frees it.
        unsafe { pg_sys::SPI_keepplan(plan.as_ptr()) };
        Ok(plan)
    }
}

/// The error for a negative SPI result code.
fn failed(code: i32) -> SpiError {
    // SPI's codes are the ones SpiErrorCodes lists; any other would be a new PostgreSQL's,
    // reported as an unknown operation.
    SpiError::SpiError(SpiErrorCodes::try_from(code).unwrap_or(SpiErrorCodes::OpUnknown))
}

/// Make the generic plan under GENERIC_HINTS unless a valid one is kept. An invalidation
/// (DDL, ANALYZE) drops it; the next call makes it again.
fn plan_generic(plan: Plan) {
    // SAFETY: `plan` is a kept plan, so its plan-source list and the CachedPlanSource in it
    // live until SPI_freeplan; a plan made by SPI_prepare_cursor from one statement has
    // exactly one source. gplan is read only after checking it is not NULL. A cached plan
    // fetched here is released at once to the current resource owner it was taken with.
    unsafe {
        let sources = pg_sys::SPI_plan_get_plan_sources(plan.as_ptr());
        let source = pg_sys::list_nth(sources, 0) as *mut pg_sys::CachedPlanSource;
        let kept = (*source).gplan;
        if (*source).is_valid && !kept.is_null() && (*kept).is_valid {
            return;
        }
        with_settings(&GENERIC_HINTS, || {
            let made = pg_sys::SPI_plan_get_cached_plan(plan.as_ptr());
            if !made.is_null() {
                pg_sys::ReleaseCachedPlan(made, pg_sys::CurrentResourceOwner);
            }
        });
    }
}

/// How long a setting made by `set` lasts.
pub enum Lasting {
    /// to the end of the transaction (or of the savepoint it is made in), as SET LOCAL
    Transaction,
    /// for the session, as SET
    Session,
}

/// Change a setting for the rest of the transaction or session, as SET (LOCAL) would.
pub fn set(name: &CStr, value: &CStr, lasting: Lasting) {
    let action = match lasting {
        Lasting::Transaction => pg_sys::GucAction::GUC_ACTION_LOCAL,
        Lasting::Session => pg_sys::GucAction::GUC_ACTION_SET,
    };
    // SAFETY: set_config_option copies both NUL-terminated strings; an invalid value raises
    // an ordinary error.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            0,
            false,
        );
    }
}

/// Run `f` with settings changed, as a function's SET clause would: restored after it, and
/// by the (sub)transaction's abort if it raises an error.
pub fn with_settings<T>(settings: &[(&CStr, &CStr)], f: impl FnOnce() -> T) -> T {
    if settings.is_empty() {
        return f();
    }
    // SAFETY: NewGUCNestLevel opens a nesting level that AtEOXact_GUC closes again, undoing
    // the settings made at it (GUC_ACTION_SAVE); set_config_option copies both
    // NUL-terminated strings. If `f` raises an ERROR the (sub)transaction's abort closes the
    // level instead.
    unsafe {
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in settings {
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
        let result = f();
        pg_sys::AtEOXact_GUC(true, level);
        result
    }
}

/// Parse `text` as a value of type `oid`, once, so that several statements can take it.
/// The value lives in the current memory context.
pub fn parse(oid: pg_sys::Oid, text: &str) -> pg_sys::Datum {
    // The text is a change record's, read from a PostgreSQL text value, which cannot hold
    // a NUL byte.
    let text = CString::new(text).expect("array text has no NUL");
    // SAFETY: getTypeInputInfo only writes the two locals (an unknown type raises an ERROR);
    // the input function copies the NUL-terminated text, which outlives the call, into a
    // value in the current memory context.
    unsafe {
        let mut input = pg_sys::InvalidOid;
        let mut ioparam = pg_sys::InvalidOid;
        pg_sys::getTypeInputInfo(oid, &mut input, &mut ioparam);
        pg_sys::OidInputFunctionCall(input, text.as_ptr() as *mut _, ioparam, -1)
    }
}

// A plan is either kept or not yet made; an error while making one leaves nothing half-set.
impl std::panic::RefUnwindSafe for Statement {}

impl Drop for Statement {
    fn drop(&mut self) {
        for plan in [self.generic.get(), self.custom.get()]
            .into_iter()
            .flatten()
        {
            // SAFETY: the plan was kept by `prepare` and is freed once, here, when the last
            // user of the statement is gone.
            unsafe { pg_sys::SPI_freeplan(plan.as_ptr()) };
        }
    }
}
