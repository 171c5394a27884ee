//! The rows sync_clone copies: every row of each table, or up to `max_rows` of each (in key
//! order) and then every row a chosen row references through a foreign key between the
//! tables copied, transitively — multi-column keys, a table referencing itself (a tree) and
//! tables referencing each other (a cycle) alike — until no foreign key of a copied row
//! points outside the copy, so that every foreign key validates on the peer.
//!
//! The rows chosen are copied into temporary tables first (dropped at commit), so that what
//! is sent is what the closure saw. They leave in batches ([`read`]): in COPY's format for a
//! table the target made now, else as the text of an array of the table's row type with each
//! row's key for the report.

use crate::pg::error::Result;
use crate::pg::sql::{ident, join};
use crate::rpc::{CloneRowsRequest, CopyRowsRequest, Outgoing};
use pgrx::prelude::*;

/// Rows sent in one request at most, and the text they may weigh.
const BATCH_ROWS: usize = 5_000;
const BATCH_BYTES: usize = 4 << 20;
/// What a batch in COPY's format weighs at most (but for one row that weighs more): enough
/// that a request's round trip is small next to the rows it carries.
pub const BULK_BYTES: usize = 8 << 20;

/// Where one table's rows are read from, and how many of them are there because copied rows
/// reference them.
pub struct Choice {
    pub relid: pg_sys::Oid,
    pub table: String,
    pub source: String,
    pub by_reference: i64,
}

fn display(relid: pg_sys::Oid) -> Result<String> {
    Ok(crate::pg::spi::maybe_one::<String>(
        "SELECT $1::pg_catalog.regclass::text",
        &[relid.into()],
    )?
    .unwrap_or_default())
}

/// The temporary table holding the rows of `relid` chosen for the copy.
fn pick(relid: pg_sys::Oid) -> String {
    format!(
        "pg_temp.{}",
        ident(&format!("synclink$pick_{}", u32::from(relid)))
    )
}

/// The primary key's columns of `relid`, if it has one.
fn primary_key(relid: pg_sys::Oid) -> Result<Vec<String>> {
    Ok(crate::pg::spi::column::<String>(
        "SELECT a.attname::text FROM pg_catalog.pg_constraint k \
           CROSS JOIN LATERAL pg_catalog.unnest(k.conkey) WITH ORDINALITY u(attnum, i) \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum \
          WHERE k.conrelid = $1 AND k.contype = 'p' ORDER BY u.i",
        &[relid.into()],
    )?)
}

/// Choose the rows of `tables`: all of them (`max_rows` NULL), or up to `max_rows` of each and
/// then, until nothing more is found, every row that a chosen row references.
pub fn choose(tables: &[pg_sys::Oid], max_rows: Option<i64>) -> Result<Vec<Choice>> {
    let Some(limit) = max_rows else {
        return tables
            .iter()
            .map(|&relid| {
                let table = display(relid)?;
                Ok(Choice {
                    relid,
                    source: table.clone(),
                    table,
                    by_reference: 0,
                })
            })
            .collect();
    };
    let mut choices = Vec::new();
    for &relid in tables {
        let table = display(relid)?;
        let order = match primary_key(relid)?.as_slice() {
            [] => "t.ctid".to_string(),
            key => join(key, ", ", |k| format!("t.{}", ident(k))),
        };
        // (a clone earlier in this transaction made it; dropped only when there, so that
        // nothing is said about one that is not)
        if crate::pg::spi::maybe_one::<bool>(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[pick(relid).as_str().into()],
        )?
        .unwrap_or(false)
        {
            Spi::run(&format!("DROP TABLE {}", pick(relid)))?;
        }
        Spi::run(&format!(
            "CREATE TEMPORARY TABLE {pick} ON COMMIT DROP AS \
             SELECT t.ctid AS \"synclink$ctid\", t.* FROM {table} t ORDER BY {order} LIMIT {limit}",
            pick = pick(relid),
        ))?;
        choices.push(Choice {
            relid,
            source: pick(relid),
            table,
            by_reference: 0,
        });
    }
    // The foreign keys between the tables copied: (child, its columns, parent, its columns).
    let keys = Spi::connect(|c| {
        c.select(
            "SELECT k.conrelid, k.confrelid, \
                    ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(k.conkey) WITH ORDINALITY u(n, i) \
                            JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i), \
                    ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(k.confkey) WITH ORDINALITY u(n, i) \
                            JOIN pg_catalog.pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.i), \
                    ARRAY(SELECT pg_catalog.format('OPERATOR(%I.%s)', n.nspname, o.oprname) \
                            FROM pg_catalog.unnest(k.conpfeqop) WITH ORDINALITY u(op, i) \
                            JOIN pg_catalog.pg_operator o ON o.oid = u.op \
                            JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace ORDER BY u.i) \
               FROM pg_catalog.pg_constraint k \
              WHERE k.contype = 'f' AND k.conrelid = ANY ($1) AND k.confrelid = ANY ($1) \
              ORDER BY k.oid",
            None,
            &[tables.to_vec().into()],
        )?
        .map(|r| {
            Ok::<_, crate::pg::error::Error>((
                crate::pg::spi::need::<pg_sys::Oid>(&r, 1, "a foreign key's table")?,
                crate::pg::spi::need::<pg_sys::Oid>(&r, 2, "a foreign key's referenced table")?,
                crate::pg::spi::need::<Vec<String>>(&r, 3, "a foreign key's columns")?,
                crate::pg::spi::need::<Vec<String>>(&r, 4, "a foreign key's referenced columns")?,
                crate::pg::spi::need::<Vec<String>>(&r, 5, "a foreign key's operators")?,
            ))
        })
        .collect::<Result<Vec<_>>>()
    })?;
    let closing: Vec<(String, i64)> = keys
        .iter()
        .map(|(child, parent, from, to, ops)| -> Result<(String, i64)> {
            // compared by the key's own operators (referenced = referencing), schema-qualified
            let matched = to
                .iter()
                .zip(from)
                .zip(ops)
                .map(|((t, f), op)| format!("p.{} {op} c.{}", ident(t), ident(f)))
                .collect::<Vec<_>>()
                .join(" AND ");
            // A row is chosen once: by where it lies, and by the unique key the foreign key
            // names (a row updated since it was chosen lies elsewhere now, with that key).
            let known = to
                .iter()
                .zip(ops)
                .map(|(t, op)| format!("x.{t} {op} p.{t}", t = ident(t)))
                .collect::<Vec<_>>()
                .join(" AND ");
            Ok((
                format!(
                    "INSERT INTO {parent_pick} SELECT p.ctid, p.* FROM {parent} p \
                      WHERE EXISTS (SELECT FROM {child_pick} c WHERE {matched}) \
                        AND NOT EXISTS (SELECT FROM {parent_pick} x \
                                         WHERE x.\"synclink$ctid\" OPERATOR(pg_catalog.=) p.ctid OR ({known}))",
                    parent_pick = pick(*parent),
                    parent = display(*parent)?,
                    child_pick = pick(*child),
                ),
                choices
                    .iter()
                    .position(|c| c.relid == *parent)
                    .unwrap_or_default() as i64,
            ))
        })
        .collect::<Result<_>>()?;
    loop {
        let mut found = 0;
        for (sql, parent) in &closing {
            let added = Spi::connect_mut(|c| c.update(sql, None, &[]).map(|t| t.len() as i64))?;
            choices[*parent as usize].by_reference += added;
            found += added;
        }
        if found == 0 {
            break;
        }
    }
    Ok(choices)
}

/// A table whose chosen rows [`read`] is sending: its cursor, and what every batch of it says
/// of the table (looked up once, when the cursor is opened).
#[derive(Clone)]
struct Reading {
    relid: pg_sys::Oid,
    cursor: String,
    table: String,
    /// the columns the batches carry: name and type
    columns: Vec<(String, String)>,
    key: Vec<String>,
    /// this database's encoding, which the text of a batch in COPY's format is in
    encoding: String,
}

/// The tables [`read`] has a cursor open for, in this transaction.
struct Open {
    xact: u32,
    readings: Vec<Reading>,
}

thread_local! {
    static OPEN: std::cell::RefCell<Open> =
        const { std::cell::RefCell::new(Open { xact: 0, readings: Vec::new() }) };
}

fn reading(relid: pg_sys::Oid) -> Option<Reading> {
    let xact = crate::pg::ffi::local_xact();
    OPEN.with(|o| {
        let o = o.borrow();
        (o.xact == xact)
            .then(|| o.readings.iter().find(|r| r.relid == relid).cloned())
            .flatten()
    })
}

/// Remember `reading` for its table (None: forget `relid`'s).
fn remember(relid: pg_sys::Oid, reading: Option<Reading>) {
    let xact = crate::pg::ffi::local_xact();
    OPEN.with(|o| {
        let mut o = o.borrow_mut();
        if o.xact != xact {
            *o = Open {
                xact,
                readings: Vec::new(),
            };
        }
        o.readings.retain(|r| r.relid != relid);
        o.readings.extend(reading);
    })
}

/// The table a name means here.
pub fn named(table: &str) -> Result<pg_sys::Oid> {
    crate::pg::spi::maybe_one::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
        &[table.into()],
    )?
    .filter(|o| *o != pg_sys::InvalidOid)
    .ok_or_else(|| super::CloneError::NoSuchTable(table.into()).into())
}

/// The next batch of the rows chosen of `table` (`limited`: chosen by [`choose`] into a
/// temporary table), from a cursor opened at the first call and closed after the last; None
/// once every row was read. `bulk` (a table the receiving node made now, empty and without
/// keys): in COPY's format, about `limit` rows; else as the text of an array of the table's
/// row type, with each row's key.
pub fn read(
    table: &str,
    limited: bool,
    bulk: bool,
    limit: i64,
    first: bool,
) -> Result<Option<(Outgoing, Vec<u8>)>> {
    let relid = named(table)?;
    if first {
        close_cursor(relid)?;
    }
    let r = match reading(relid) {
        Some(r) => r,
        None => {
            let r = open(relid, limited, bulk)?;
            remember(relid, Some(r.clone()));
            r
        }
    };
    let out = if bulk {
        let client_encoding = std::ffi::CString::new(r.encoding.as_str()).unwrap_or_default();
        // Text written as the other node reads it back (crate::data::wire); a binary
        // value's text (textsend) in this database's encoding, which the batch names.
        let batch = crate::pg::plan::with_settings(
            &[(c"client_encoding", client_encoding.as_c_str())],
            || {
                crate::data::wire::compared(|| {
                    crate::pg::copy::Writer::default().next(&r.cursor, limit, BULK_BYTES)
                })
            },
        );
        batch.map(|b| {
            (
                Outgoing::Copy(CopyRowsRequest {
                    table: r.table.clone(),
                    columns: r.columns.clone(),
                    format: b.format,
                    encoding: r.encoding.clone(),
                    count: b.rows as i32,
                    key: r.key.clone(),
                }),
                b.data,
            )
        })
    } else {
        let (rows, keys) = next_batch(&r.cursor)?;
        (!keys.is_empty()).then(|| {
            let count = keys.len() as i32;
            (
                Outgoing::Rows(
                    CloneRowsRequest {
                        table: r.table.clone(),
                        columns: r.columns.clone(),
                        rows,
                        count,
                    },
                    keys,
                ),
                Vec::new(),
            )
        })
    };
    if out.is_none() {
        close_cursor(relid)?;
    }
    Ok(out)
}

/// Open the cursor over the chosen rows of `relid`: for `bulk`, the columns that are written
/// (not generated), each value through its type's send or output function, never a cast;
/// else each row as the text of the table's row type with its key.
fn open(relid: pg_sys::Oid, limited: bool, bulk: bool) -> Result<Reading> {
    let table = display(relid)?;
    let all = crate::catalog::definition::columns(relid)?;
    let key = primary_key(relid)?;
    let source = if limited { pick(relid) } else { table.clone() };
    let query = if bulk {
        format!(
            "SELECT {} FROM {source} t",
            join(
                &all.iter().filter(|c| !c.2).collect::<Vec<_>>(),
                ", ",
                |(n, ..)| format!("t.{}", ident(n))
            )
        )
    } else {
        array_query(&all, &key, &table, &source)
    };
    let cursor = Spi::connect(|c| c.open_cursor(query.as_str(), &[]).detach_into_name());
    let encoding = crate::pg::spi::maybe_one::<String>(
        "SELECT pg_catalog.getdatabaseencoding()::pg_catalog.text",
        &[],
    )?
    .unwrap_or_default();
    Ok(Reading {
        relid,
        cursor,
        table,
        columns: all
            .into_iter()
            .filter(|c| !bulk || !c.2)
            .map(|(n, t, _)| (n, t))
            .collect(),
        key,
        encoding,
    })
}

/// Close the cursor [`read`] has open for `relid` in this transaction, if it is still there
/// (a subtransaction rolled back since may have closed it).
fn close_cursor(relid: pg_sys::Oid) -> Result<()> {
    if let Some(r) = reading(relid) {
        Spi::connect(|c| {
            if let Ok(open) = c.find_cursor(&r.cursor) {
                drop(open);
            }
        });
        remember(relid, None);
    }
    Ok(())
}

/// Each row as the text of the table's row type, and its key as a report names it.
fn array_query(
    columns: &[(String, String, bool)],
    key: &[String],
    table: &str,
    source: &str,
) -> String {
    // Text through the types' output functions (record_out), never through a cast: a cast
    // from the row type (or a key's type) is code its owner may have written, and this runs
    // as the caller.
    let row = format!(
        "pg_catalog.textin(pg_catalog.record_out(ROW({})::{table}))",
        join(columns, ", ", |(n, ..)| format!("t.{}", ident(n))),
    );
    let key = match key {
        [] => "NULL::pg_catalog.text".to_string(),
        key => format!(
            "{} || ' = ' || pg_catalog.textin(pg_catalog.record_out(ROW({})))",
            crate::pg::sql::literal(&format!("({})", key.join(", "))),
            join(key, ", ", |k| format!("t.{}", ident(k)))
        ),
    };
    format!("SELECT {row}, {key} FROM {source} t")
}

/// The next batch from the open cursor `name`: its rows as the text of one array of the table's
/// row type (each element quoted as array_out quotes it), and each row's key.
fn next_batch(name: &str) -> Result<(String, Vec<Option<String>>)> {
    let (mut rows, mut keys) = (String::from("{"), Vec::new());
    while keys.len() < BATCH_ROWS && rows.len() < BATCH_BYTES {
        let fetched = crate::data::wire::compared(|| {
            Spi::connect(|c| -> Result<Vec<(String, Option<String>)>> {
                let mut cursor = c.find_cursor(name)?;
                let table = cursor.fetch(1_000)?;
                let got = table
                    .map(|r| {
                        Ok((
                            crate::pg::spi::need::<String>(&r, 1, "a row's text")?,
                            r.get::<String>(2)?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let _ = cursor.detach_into_name();
                Ok(got)
            })
        })?;
        if fetched.is_empty() {
            break;
        }
        for (row, key) in fetched {
            if !keys.is_empty() {
                rows.push(',');
            }
            rows.push('"');
            for ch in row.chars() {
                if ch == '"' || ch == '\\' {
                    rows.push('\\');
                }
                rows.push(ch);
            }
            rows.push('"');
            keys.push(key);
        }
    }
    rows.push('}');
    Ok((rows, keys))
}
