//! The receiving end of sync_clone (and of a link's `create_missing`): objects and rows made
//! here from another node's definitions, as a given role — the role the other node connects
//! as, or the caller's when this node clones the other — each object and each batch of rows
//! in a subtransaction of its own so that what this database refuses is reported and the rest
//! goes on.

use crate::catalog::definition::{self, Ddl, Kind};
use crate::pg::error::{Result, SqlError};
use crate::pg::sql::ident;
use crate::rpc::{
    Body, CloneRowsReply, CloneRowsRequest, CopyRowsReply, CopyRowsRequest, ObjectOutcome,
};
use pgrx::prelude::*;

/// Why a statement failed here: its SQLSTATE and message.
pub struct Refusal {
    pub sqlstate: PgSqlErrorCode,
    pub message: String,
}

impl Refusal {
    fn text(&self) -> String {
        format!(
            "ERROR {}: {}",
            crate::pg::remote::sqlstate_text(self.sqlstate as isize),
            self.message
        )
    }
}

/// Run `sql` as the role this session logged in as (for a peer's request, the role of its
/// connection string), in a subtransaction: a failure is rolled back and returned.
pub fn run_as_session_role(sql: &str) -> std::result::Result<(), Refusal> {
    run_as(crate::pg::privilege::session_role(), sql)
}

/// Run `sql` as `role`, in a subtransaction: a failure is rolled back and returned.
fn run_as(role: pg_sys::Oid, sql: &str) -> std::result::Result<(), Refusal> {
    run_with(role, sql, Vec::new())
}

/// [`run_as`] with arguments.
fn run_with(
    role: pg_sys::Oid,
    sql: &str,
    args: Vec<pgrx::datum::DatumWithOid<'static>>,
) -> std::result::Result<(), Refusal> {
    let run = crate::pg::subxact::run(|| {
        crate::pg::privilege::as_role_restricted(role, || Spi::run_with_args(sql, &args))
    });
    match run {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Refusal {
            sqlstate: SqlError::sqlstate(&e),
            message: e.to_string(),
        }),
        Err(f) => Err(Refusal {
            sqlstate: f.sqlstate,
            message: f.message,
        }),
    }
}

/// Where two statements part, with a little of what comes before, for a DETAIL.
fn difference(here: &str, sent: &str) -> String {
    let start = here
        .char_indices()
        .zip(sent.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| here.len().min(sent.len()));
    let from = here[..start]
        .char_indices()
        .rev()
        .nth(30)
        .map_or(0, |(i, _)| i);
    let excerpt = |s: &str| {
        let part: String = s.get(from..).unwrap_or("").chars().take(80).collect();
        format!("\"{}{part}\"", if from > 0 { "…" } else { "" })
    };
    format!(
        "here {} where the source has {}",
        excerpt(here),
        excerpt(sent)
    )
}

/// Make each object unless an object of its kind and name is here: the same (exists) or not
/// (differs, left alone). Functions are made without checking their bodies (as a restore
/// does: what they use may come later); a function or view that needs an object made after it
/// (a table's row type, another view) is tried again once the others are made. A sequence is
/// given to its column only when it was made here now. A definition is run only if it is one
/// statement that makes what it says (definition::fits), as `role` in a security-restricted
/// operation.
pub fn make_objects(objects: Vec<Ddl>, role: pg_sys::Oid) -> Result<Vec<ObjectOutcome>> {
    let role_name = crate::pg::privilege::role_name(role);
    let mut outcomes: Vec<Option<ObjectOutcome>> = vec![None; objects.len()];
    let mut pending: Vec<usize> = (0..objects.len()).collect();
    let mut made_sequences: Vec<String> = Vec::new();
    loop {
        let mut retry = Vec::new();
        for &i in &pending {
            // A function is made without OR REPLACE: one of the same signature here fails
            // and is reported, whatever signature the definition's name claims.
            let stripped;
            let object = if objects[i].kind == Kind::Function {
                stripped = Ddl {
                    sql: definition::without_replace(&objects[i].sql).into_owned(),
                    ..objects[i].clone()
                };
                &stripped
            } else {
                &objects[i]
            };
            if object.kind == Kind::SequenceOwner && !made_sequences.contains(&object.name) {
                outcomes[i] = Some(outcome("exists", None));
                continue;
            }
            // An object whose name cannot be read here (a function of a type that is not
            // here) is not here; one whose definition cannot be read is reported.
            let here = match crate::pg::subxact::run(|| definition::existing(object)) {
                Ok(Ok(here)) => here,
                Ok(Err(e)) => {
                    outcomes[i] = Some(outcome("failed", Some(e.to_string())));
                    continue;
                }
                Err(f) => {
                    outcomes[i] = Some(outcome("failed", Some(f.message)));
                    continue;
                }
            };
            if let Some(here) = here {
                outcomes[i] = Some(if here == objects[i].sql {
                    outcome("exists", None)
                } else {
                    outcome("differs", Some(difference(&here, &objects[i].sql)))
                });
                continue;
            }
            // Only what the statement's kind makes is run (a sequence's move is made here from
            // its parts): see definition::fits.
            let statement = if object.kind == Kind::SequenceValue {
                None
            } else {
                match definition::fits(object) {
                    Ok(stmt) => Some(stmt),
                    Err(why) => {
                        outcomes[i] = Some(outcome(
                            "failed",
                            Some(format!("{why}: not run — {}", object.sql)),
                        ));
                        continue;
                    }
                }
            };
            if let Some(why) = statement
                .as_ref()
                .and_then(|stmt| refused_here(object, stmt, &role_name))
            {
                outcomes[i] = Some(outcome("failed", Some(format!("{why} — {}", object.sql))));
                continue;
            }
            let run = || -> std::result::Result<(), Refusal> {
                if object.kind == Kind::SequenceValue {
                    return match definition::sequence_move(object) {
                        Ok(Some((sql, args))) => run_with(role, &sql, args),
                        Ok(None) => Err(Refusal {
                            sqlstate: PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
                            message: "a sequence's move that does not say what it is made of (sent by a synclink older than 0.7.0?): not run".into(),
                        }),
                        Err(e) => Err(Refusal {
                            sqlstate: e.sqlstate(),
                            message: e.to_string(),
                        }),
                    };
                }
                run_as(role, &object.sql)
            };
            let result = if object.kind == Kind::Function {
                crate::pg::plan::with_settings(&[(c"check_function_bodies", c"off")], run)
            } else {
                run()
            };
            match result {
                Ok(()) => {
                    if object.kind == Kind::Sequence {
                        made_sequences.push(object.name.clone());
                    }
                    outcomes[i] = Some(outcome("created", None))
                }
                Err(r) => {
                    if matches!(object.kind, Kind::View | Kind::Function) && waits_for_another(&r) {
                        retry.push(i);
                    }
                    outcomes[i] = Some(outcome(
                        "failed",
                        Some(format!("{} — {}", r.text(), object.sql)),
                    ));
                }
            }
        }
        if retry.is_empty() || retry.len() == pending.len() {
            break;
        }
        pending = retry;
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| outcome("failed", None)))
        .collect())
}

/// Why a definition that fits its kind is still not made here, if it is not: a SECURITY
/// DEFINER function that would run here as another role than its owner at the source.
fn refused_here(object: &Ddl, stmt: &crate::pg::ffi::Statement, role_name: &str) -> Option<String> {
    match object.runs_as.as_deref() {
        _ if !stmt.definer => None,
        Some(owner) if owner == role_name => None,
        owner => Some(format!(
            "a SECURITY DEFINER function, which runs as its owner: made here by role {role_name} it would run as that role, not as {}; make it here by hand as that role",
            owner.unwrap_or("its owner at the source")
        )),
    }
}

fn outcome(action: &str, detail: Option<String>) -> ObjectOutcome {
    ObjectOutcome {
        action: action.into(),
        detail,
    }
}

/// A view or function that failed on an object not there (yet): another view, a function, a
/// table's row type.
fn waits_for_another(r: &Refusal) -> bool {
    use PgSqlErrorCode::*;
    matches!(
        r.sqlstate,
        ERRCODE_UNDEFINED_TABLE | ERRCODE_UNDEFINED_FUNCTION | ERRCODE_UNDEFINED_OBJECT
    )
}

/// Insert the rows of `req` into the table of that name, which must have the source's columns
/// in the same order: rows whose key (or another unique value) is here already are left as
/// they are. The whole batch is parsed and inserted by one statement; a batch that fails is
/// halved until the rows that fail are found, each reported with its place and the error,
/// the others inserted.
pub fn take_rows(req: CloneRowsRequest, role: pg_sys::Oid) -> Result<CloneRowsReply> {
    let (relid, table, columns) = match receiving(&req.table, &req.columns, role, false)? {
        Ok(found) => found,
        Err(why) => return Ok(skipped(why)),
    };
    let written: Vec<&String> = columns.iter().filter(|c| !c.2).map(|c| &c.0).collect();
    let list = written
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let insert = |source: &str| {
        format!(
            "INSERT INTO {table} AS t ({list}) OVERRIDING SYSTEM VALUE \
             SELECT {picked} FROM pg_catalog.unnest({source}) r \
             ON CONFLICT DO NOTHING",
            table = table,
            picked = written
                .iter()
                .map(|c| format!("r.{}", ident(c)))
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    let whole = insert(&format!("$1::{table}[]"));
    let part = insert(&format!("((($1::pg_catalog.text[])[$2:$3])::{table}[])"));
    Ok(halving(req.count, |lo, hi| {
        crate::pg::privilege::as_owner_of(relid, || {
            Spi::connect_mut(|c| {
                let rows = req.rows.as_str();
                if (lo, hi) == (1, req.count) {
                    c.update(&whole, None, &[rows.into()])
                } else {
                    c.update(&part, None, &[rows.into(), lo.into(), hi.into()])
                }
                .map(|t| t.len() as i64)
            })
        })?
        .map_err(Into::into)
    }))
}

/// Take the rows of `req`, a batch in one of COPY's formats (`payload`), into a table this
/// clone made (see [`crate::pg::copy`]): COPY FROM takes the batch whole, as the table's owner;
/// a batch it refuses is halved until the rows it refuses are found.
pub fn take_copy(req: CopyRowsRequest, payload: &[u8], role: pg_sys::Oid) -> Result<CopyRowsReply> {
    let (relid, _, columns) = match receiving(&req.table, &req.columns, role, true)? {
        Ok(found) => found,
        Err(why) => {
            return Ok(CopyRowsReply {
                skipped: Some(why),
                ..CopyRowsReply::default()
            })
        }
    };
    let written: Vec<String> = columns
        .iter()
        .filter(|c| !c.2)
        .map(|c| c.0.clone())
        .collect();
    let types = written_types(relid)?;
    let bounds = crate::pg::copy::rows_of(req.format, payload)
        .filter(|b| b.len() == usize::try_from(req.count).unwrap_or(0))
        .ok_or_else(|| crate::rpc::RpcError::BadRequest(CopyRowsRequest::ACTION.into()))?;
    // COPY passes by a table's rules (an INSERT would follow them)
    let rules = crate::pg::spi::maybe_one::<bool>(
        "SELECT c.relhasrules FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1",
        &[relid.into()],
    )?
    .unwrap_or(false);
    if rules {
        return Ok(CopyRowsReply {
            skipped: Some(format!(
                "table {} has rules: its rows are not copied",
                req.table
            )),
            ..CopyRowsReply::default()
        });
    }
    let taken = halving(req.count, |lo, hi| {
        let part;
        let rows = if (lo, hi) == (1, req.count) {
            payload
        } else {
            part = crate::pg::copy::part(req.format, payload, &bounds, lo as usize, hi as usize);
            &part
        };
        crate::pg::privilege::as_owner_of(relid, || {
            crate::pg::copy::copy_from(relid, &written, req.format, &req.encoding, rows)
        })?
        .map(|n| n as i64)
        .map_err(Into::into)
    });
    // A refused row is named by its key, read from the batch with this database's types.
    let key: Vec<(usize, pg_sys::Oid)> = req
        .key
        .iter()
        .filter_map(|k| written.iter().position(|w| w == k))
        .map(|at| (at, types.get(at).copied().unwrap_or(pg_sys::InvalidOid)))
        .collect();
    // (read as the table's owner: a domain's receive function runs its checks, the owner's code)
    let refused = taken
        .refused
        .into_iter()
        .map(|(at, error)| {
            let row = usize::try_from(at - 1)
                .ok()
                .and_then(|i| bounds.get(i))
                .and_then(|(from, to)| payload.get(*from..*to));
            let values: Option<Vec<String>> = row.and_then(|row| {
                crate::pg::privilege::as_owner_of(relid, || {
                    key.iter()
                        .map(|(position, typid)| {
                            crate::pg::copy::field_text(req.format, row, *position, *typid)
                        })
                        .collect()
                })
                .ok()
                .flatten()
            });
            let shown = match values {
                Some(values) if !key.is_empty() => {
                    format!("({}) = ({})", req.key.join(", "), values.join(", "))
                }
                _ => format!("row {at} of a batch"),
            };
            (shown, error)
        })
        .collect();
    Ok(CopyRowsReply {
        inserted: taken.inserted,
        present: taken.present,
        refused,
        skipped: taken.skipped,
    })
}

/// A table that takes rows: its oid, name and columns (name, type, generated).
type Receiving = (pg_sys::Oid, String, Vec<(String, String, bool)>);

/// The table named `name` that rows for it go into: its oid, name and columns (name, type,
/// generated); or why it cannot take them (not here, not the sender's to write, other
/// columns than the sender's `shape`).
fn receiving(
    name: &str,
    shape: &[(String, String)],
    role: pg_sys::Oid,
    written_only: bool,
) -> Result<std::result::Result<Receiving, String>> {
    // a table: rows written into a view or a foreign table would go on as its owner
    let here = crate::pg::spi::maybe_one::<pg_sys::Oid>(
        "SELECT c.oid FROM pg_catalog.pg_class c \
          WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)::pg_catalog.oid \
            AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::\"char\"[])",
        &[name.into()],
    )?;
    let Some(relid) = here else {
        return Ok(Err(format!("table {name} is not here")));
    };
    // The rows go in as the table's owner (its triggers, defaults and checks run as the
    // owner, as for changes a link applies), for a role that may insert into it.
    let may = crate::pg::spi::maybe_one::<bool>(
        "SELECT pg_catalog.has_table_privilege($1, $2, 'INSERT')",
        &[role.into(), relid.into()],
    )?
    .unwrap_or(false);
    if !may {
        return Ok(Err(format!(
            "role {} may not insert into table {name} here",
            crate::pg::privilege::role_name(role),
        )));
    }
    // The rows go in as the owner, past the policies that would hold the role back.
    // SAFETY: check_enable_rls reads the table's flags and the role's rights; with noError it
    // raises for nothing.
    let rls = unsafe { pg_sys::check_enable_rls(relid, role, true) };
    if rls == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 {
        return Ok(Err(format!(
            "table {name} has row-level security for role {}: its rows are not copied",
            crate::pg::privilege::role_name(role),
        )));
    }
    let table = crate::pg::spi::maybe_one::<String>(
        "SELECT $1::pg_catalog.regclass::text",
        &[relid.into()],
    )?
    .unwrap_or_default();
    let columns = definition::columns(relid)?;
    let mine: Vec<(String, String)> = columns
        .iter()
        .map(|(n, t, _)| (n.clone(), t.clone()))
        .collect();
    // (a batch in COPY's format carries only the columns that are written)
    let written: Vec<(String, String)> = columns
        .iter()
        .filter(|c| !c.2)
        .map(|(n, t, _)| (n.clone(), t.clone()))
        .collect();
    if (if written_only { written } else { mine.clone() }) != shape {
        return Ok(Err(format!(
            "table {name} has other columns here: {}",
            mine.iter()
                .map(|(n, t)| format!("{} {t}", ident(n)))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(Ok((relid, table, columns)))
}

/// The types of `relid`'s written (not generated) columns, in order.
fn written_types(relid: pg_sys::Oid) -> Result<Vec<pg_sys::Oid>> {
    Ok(crate::pg::spi::column::<pg_sys::Oid>(
        "SELECT a.atttypid FROM pg_catalog.pg_attribute a \
          WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 \
            AND NOT a.attisdropped AND a.attgenerated OPERATOR(pg_catalog.=) '' ORDER BY a.attnum",
        &[relid.into()],
    )?)
}

/// Insert rows `1..=count` with `attempt(lo, hi)` (how many it inserted), each attempt in a
/// subtransaction of its own; a range that fails is halved until the rows that fail are found,
/// each reported with its place and the error, the others inserted.
fn halving(count: i32, mut attempt: impl FnMut(i32, i32) -> Result<i64>) -> CloneRowsReply {
    let mut reply = CloneRowsReply::default();
    let mut todo = vec![(1i32, count)];
    while let Some((lo, hi)) = todo.pop() {
        if lo > hi {
            continue;
        }
        let run = match crate::pg::subxact::run(|| attempt(lo, hi)) {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err((e.sqlstate(), e.to_string())),
            Err(f) => Err((f.sqlstate, f.message)),
        };
        match run {
            Ok(n) => {
                reply.inserted += n;
                reply.present += i64::from(hi - lo + 1) - n;
            }
            Err((code, message)) => {
                let why = format!(
                    "ERROR {}: {message}",
                    crate::pg::remote::sqlstate_text(code as isize)
                );
                // An error about the table rather than a row (a right, a resource, an
                // interruption, a feature) would be met by every row: said once, nothing
                // more tried.
                if ["42", "53", "54", "57", "08", "25", "40", "0A"].contains(&&why[6..8]) {
                    reply.skipped = Some(why);
                    break;
                }
                if lo == hi {
                    reply.refused.push((lo, why));
                } else {
                    let mid = lo + (hi - lo) / 2;
                    // the upper half first on the stack, so the lower half is tried first
                    todo.push((mid + 1, hi));
                    todo.push((lo, mid));
                }
            }
        }
    }
    reply
}

fn skipped(why: String) -> CloneRowsReply {
    CloneRowsReply {
        skipped: Some(why),
        ..CloneRowsReply::default()
    }
}
