//! The rows sync_clone copies: every row of each table, or up to `max_rows` of each (in key
//! order) and then every row a chosen row references through a foreign key between the
//! tables copied, transitively — multi-column keys, a table referencing itself (a tree) and
//! tables referencing each other (a cycle) alike — until no foreign key of a copied row
//! points outside the copy, so that every foreign key validates on the peer.
//!
//! The rows chosen are copied into temporary tables first (dropped at commit), so that what
//! is sent is what the closure saw; rows then travel in their row type's text form, in
//! batches, each with its key for the report.

use crate::catalog::peer::Peer;
use crate::pg::error::{notice, Result};
use crate::pg::sql::{ident, join};
use crate::rpc::{CloneRowsReply, CloneRowsRequest, CopyRowsRequest};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Rows sent in one request at most, and the text they may weigh.
const BATCH_ROWS: usize = 5_000;
const BATCH_BYTES: usize = 4 << 20;
/// What a batch in COPY's format should weigh: enough that a request's round trip is small
/// next to the rows it carries.
const BULK_BYTES: usize = 8 << 20;
/// How often a long table's copy says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Where one table's rows are read from, and how many of them are there because copied rows
/// reference them.
pub struct Choice {
    pub relid: pg_sys::Oid,
    pub table: String,
    source: String,
    pub by_reference: i64,
}

/// What copying one table's rows came to.
pub struct Copied {
    pub table: String,
    pub inserted: i64,
    pub present: i64,
    pub by_reference: i64,
    pub refused: Vec<(String, String)>,
    pub skipped: Option<String>,
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

/// Send the chosen rows of one table to `peer`, in batches; says in a NOTICE how many and how
/// long it took, and every little while how far a long table got. A table the peer made in
/// this clone (`made`: empty, no keys yet) takes them through COPY; one it had already
/// through an insert that leaves the rows it has.
pub fn copy(peer: &Peer, choice: &Choice, made: bool) -> Result<Copied> {
    let started = Instant::now();
    let copied = if made {
        copy_in_bulk(peer, choice, started)?
    } else {
        insert_missing(peer, choice, started)?
    };
    notice(&format!(
        "sync_clone: {} rows of {} copied to peer \"{}\" in {:.2} s{}{}",
        copied.inserted,
        choice.table,
        peer.name,
        started.elapsed().as_secs_f64(),
        if copied.present > 0 {
            format!(", {} there already", copied.present)
        } else {
            String::new()
        },
        if copied.refused.is_empty() {
            String::new()
        } else {
            format!(", {} refused", copied.refused.len())
        },
    ));
    Ok(copied)
}

/// Every little while, how far a long table got.
fn progress(said: &mut Instant, started: Instant, copied: &Copied) {
    if said.elapsed() >= PROGRESS_EVERY {
        *said = Instant::now();
        notice(&format!(
            "sync_clone: {} rows of {} copied so far ({:.0} s)",
            copied.inserted,
            copied.table,
            started.elapsed().as_secs_f64()
        ));
    }
}

/// The rows in batches of COPY's format ([`crate::pg::copy`]), each the payload of one
/// request, sized to weigh about [`BULK_BYTES`].
fn copy_in_bulk(peer: &Peer, choice: &Choice, started: Instant) -> Result<Copied> {
    let written: Vec<(String, String)> = crate::catalog::definition::columns(choice.relid)?
        .into_iter()
        .filter(|c| !c.2)
        .map(|(name, type_name, _)| (name, type_name))
        .collect();
    let key = primary_key(choice.relid)?;
    let positions = key
        .iter()
        .filter_map(|k| written.iter().position(|(n, _)| n == k))
        .collect();
    // Values through the types' send or output functions, never a cast (see `insert_missing`).
    let query = format!(
        "SELECT {} FROM {} t",
        join(&written, ", ", |(n, _)| format!("t.{}", ident(n))),
        choice.source
    );
    let encoding = crate::pg::spi::maybe_one::<String>(
        "SELECT pg_catalog.getdatabaseencoding()::pg_catalog.text",
        &[],
    )?
    .unwrap_or_default();
    let client_encoding = std::ffi::CString::new(encoding.as_str()).unwrap_or_default();
    let mut copied = Copied {
        table: choice.table.clone(),
        inserted: 0,
        present: 0,
        by_reference: choice.by_reference,
        refused: Vec::new(),
        skipped: None,
    };
    let cursor = Spi::connect(|c| c.open_cursor(query.as_str(), &[]).detach_into_name());
    let mut writer = crate::pg::copy::Writer::new(positions);
    let mut said = started;
    let mut limit: i64 = 1_000;
    loop {
        // Text written as the peer reads it back (crate::data::wire), and a binary value's
        // text (textsend) in this database's encoding, which the batch names.
        let sent = crate::pg::plan::with_settings(
            &[(c"client_encoding", client_encoding.as_c_str())],
            || {
                crate::data::wire::compared(|| {
                    writer.next(&cursor, limit, |batch, key_of| -> Result<_> {
                        let reply: CloneRowsReply = crate::rpc::call_with_payload(
                            peer,
                            &CopyRowsRequest {
                                table: choice.table.clone(),
                                columns: written.clone(),
                                format: batch.format,
                                encoding: encoding.clone(),
                                count: batch.rows as i32,
                            },
                            &batch.data,
                        )?;
                        let refused: Vec<(String, String)> = reply
                            .refused
                            .iter()
                            .map(|(at, error)| {
                                let shown = usize::try_from(at - 1)
                                    .ok()
                                    .and_then(|i| key_of(i))
                                    .map(|k| format!("({}) = ({k})", key.join(", ")))
                                    .unwrap_or_else(|| format!("row {at} of a batch"));
                                (shown, error.clone())
                            })
                            .collect();
                        Ok((batch.rows, batch.data.len(), reply, refused))
                    })
                })
            },
        )?;
        let Some(sent) = sent else { break };
        let (rows, bytes, reply, refused) = sent?;
        copied.inserted += reply.inserted;
        copied.present += reply.present;
        copied.refused.extend(refused);
        if let Some(why) = reply.skipped {
            copied.skipped = Some(why);
            break;
        }
        progress(&mut said, started, &copied);
        let per_row = (bytes / rows.max(1)).max(1);
        limit = (BULK_BYTES / per_row).clamp(100, 200_000) as i64;
    }
    Spi::connect(|c| -> std::result::Result<(), pgrx::spi::SpiError> {
        drop(c.find_cursor(&cursor)?);
        Ok(())
    })?;
    Ok(copied)
}

/// The rows as the text of an array of the table's row type per batch, inserted on the peer
/// by one statement that leaves the rows it has by key.
fn insert_missing(peer: &Peer, choice: &Choice, started: Instant) -> Result<Copied> {
    let columns: Vec<(String, String)> = crate::catalog::definition::columns(choice.relid)?
        .into_iter()
        .map(|(name, type_name, _)| (name, type_name))
        .collect();
    // Text through the types' output functions (record_out), never through a cast: a cast
    // from the row type (or a key's type) is code its owner may have written, and this runs
    // as the caller.
    let row = format!(
        "pg_catalog.textin(pg_catalog.record_out(ROW({})::{}))",
        join(&columns, ", ", |(n, _)| format!("t.{}", ident(n))),
        choice.table
    );
    let key = match primary_key(choice.relid)?.as_slice() {
        [] => "NULL::pg_catalog.text".to_string(),
        key => format!(
            "{} || ' = ' || pg_catalog.textin(pg_catalog.record_out(ROW({})))",
            crate::pg::sql::literal(&format!("({})", key.join(", "))),
            join(key, ", ", |k| format!("t.{}", ident(k)))
        ),
    };
    let query = format!("SELECT {row}, {key} FROM {} t", choice.source);
    let mut said = started;
    let mut copied = Copied {
        table: choice.table.clone(),
        inserted: 0,
        present: 0,
        by_reference: choice.by_reference,
        refused: Vec::new(),
        skipped: None,
    };
    // Values are written as they travel between nodes (crate::data::wire), whatever this
    // session's settings, so that the peer reads back what was here.
    let cursor = Spi::connect(|c| c.open_cursor(query.as_str(), &[]).detach_into_name());
    loop {
        let (rows, keys) = next_batch(&cursor)?;
        if keys.is_empty() {
            break;
        }
        let reply: CloneRowsReply = crate::rpc::call_for(
            peer,
            &CloneRowsRequest {
                table: choice.table.clone(),
                columns: columns.clone(),
                rows,
                count: keys.len() as i32,
            },
        )?;
        copied.inserted += reply.inserted;
        copied.present += reply.present;
        for (at, error) in reply.refused {
            let key = usize::try_from(at - 1)
                .ok()
                .and_then(|i| keys.get(i).cloned().flatten())
                .unwrap_or_else(|| format!("row {at} of a batch"));
            copied.refused.push((key, error));
        }
        if let Some(why) = reply.skipped {
            copied.skipped = Some(why);
            break;
        }
        progress(&mut said, started, &copied);
    }
    Spi::connect(|c| -> std::result::Result<(), pgrx::spi::SpiError> {
        drop(c.find_cursor(&cursor)?);
        Ok(())
    })?;
    Ok(copied)
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
