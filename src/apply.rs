//! The receiving side: a change record delivered into `synclink.inbox` is applied here,
//! set-based, as an upsert or delete by the link's key. Applying is idempotent, so a record
//! delivered twice leaves the table as once.
//!
//! While a record is applied, the backend remembers which node it came from; the capture
//! triggers that fire on the applied rows ask `applying_from()` and do not send the rows back.
//! This marker lives in backend memory and only this function sets it, so unlike a GUC it
//! cannot be set by an application role to silence replication.

use crate::error::{OrRaise, SqlError};
use crate::sql::{ident, join, qualified};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

#[derive(thiserror::Error, Debug)]
pub enum ApplyError {
    #[error("change from unknown node \"{0}\"")]
    UnknownSender(String),
    #[error("table {schema}.{table} is not linked with node \"{node}\"")]
    NotLinked {
        schema: String,
        table: String,
        node: String,
    },
    #[error("unknown change operation \"{0}\"")]
    BadOp(String),
}

impl SqlError for ApplyError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            ApplyError::UnknownSender(_) | ApplyError::NotLinked { .. } => {
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT
            }
            ApplyError::BadOp(_) => PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            ApplyError::UnknownSender(_) => {
                "Register the sending database here with sync_add_peer().".into()
            }
            ApplyError::NotLinked { .. } => {
                "Link the table again with sync_link_table() on either node.".into()
            }
            ApplyError::BadOp(_) => {
                "The sending node runs an incompatible synclink version.".into()
            }
        })
    }
}

#[derive(Clone)]
struct Applying {
    origin: String,
    sender: String,
}

thread_local! {
    static APPLYING: RefCell<Option<Applying>> = const { RefCell::new(None) };
}

/// The node a change being applied right now started on, if any: captures during apply
/// keep that origin so a hub forwards it without sending it back.
pub fn current_origin() -> Option<String> {
    APPLYING.with(|a| a.borrow().as_ref().map(|x| x.origin.clone()))
}

/// True while synclink applies a change that came from, or started on, `node`.
#[pg_extern(stable, parallel_restricted, schema = "synclink")]
fn applying_from(node: &str) -> bool {
    APPLYING.with(|a| {
        a.borrow()
            .as_ref()
            .is_some_and(|x| x.origin == node || x.sender == node)
    })
}

pub struct ApplySpec<'a> {
    pub table: String,
    pub row_type: &'a str,
    pub columns: &'a [String],
    pub key: &'a [String],
    /// Columns whose type has no equality operator (json, point, …): compared as text.
    pub text_compare: &'a [String],
}

fn compared(spec: &ApplySpec, alias: &str, col: &str) -> String {
    if spec.text_compare.iter().any(|c| c == col) {
        format!("{alias}.{}::text", ident(col))
    } else {
        format!("{alias}.{}", ident(col))
    }
}

/// Insert the rows; fails on a key that exists already.
pub fn insert_sql(spec: &ApplySpec) -> String {
    format!(
        "INSERT INTO {table} ({cols}) OVERRIDING SYSTEM VALUE\nSELECT {select} FROM unnest($1::{row}[]) r",
        table = spec.table,
        cols = join(spec.columns, ", ", |c| ident(c)),
        select = join(spec.columns, ", ", |c| format!("r.{}", ident(c))),
        row = spec.row_type,
    )
}

/// Insert the rows, or update the row with the same key when it differs.
pub fn upsert_sql(spec: &ApplySpec) -> String {
    let cols = join(spec.columns, ", ", |c| ident(c));
    let select = join(spec.columns, ", ", |c| format!("r.{}", ident(c)));
    let keys = join(spec.key, ", ", |c| ident(c));
    let rest: Vec<String> = spec
        .columns
        .iter()
        .filter(|c| !spec.key.contains(c))
        .cloned()
        .collect();
    let action = if rest.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!(
            "DO UPDATE SET {}\n WHERE ({}) IS DISTINCT FROM ({})",
            join(&rest, ", ", |c| format!("{c} = EXCLUDED.{c}", c = ident(c))),
            join(&rest, ", ", |c| compared(spec, "t", c)),
            join(&rest, ", ", |c| compared(spec, "EXCLUDED", c)),
        )
    };
    format!(
        "INSERT INTO {table} AS t ({cols}) OVERRIDING SYSTEM VALUE\n\
         SELECT {select} FROM unnest($1::{row}[]) r\n\
         ON CONFLICT ({keys}) {action}",
        table = spec.table,
        row = spec.row_type,
    )
}

/// Delete the rows whose key is in the record.
pub fn delete_sql(spec: &ApplySpec) -> String {
    format!(
        "DELETE FROM {table} t USING unnest($1::{row}[]) r WHERE {cond}",
        table = spec.table,
        row = spec.row_type,
        cond = join(spec.key, " AND ", |k| format!(
            "t.{k} = r.{k}",
            k = ident(k)
        )),
    )
}

/// A link's apply statements, planned once per backend. Link ids are never reused, so a
/// cached entry can only go stale by its link being dropped, and then no record finds it.
struct Compiled {
    table: String,
    insert: OwnedPreparedStatement,
    upsert: OwnedPreparedStatement,
    delete: OwnedPreparedStatement,
}

thread_local! {
    static COMPILED: RefCell<HashMap<i32, Rc<Compiled>>> = RefCell::new(HashMap::new());
}

/// Columns of a composite type whose type has no default equality operator.
fn text_compare_columns(row_type: &str) -> Vec<String> {
    let typed: Vec<(String, pg_sys::Oid)> = Spi::connect(|c| {
        c.select(
            "SELECT a.attname::text, a.atttypid FROM pg_attribute a \
             WHERE a.attrelid = (SELECT typrelid FROM pg_type WHERE oid = $1::regtype) \
               AND a.attnum > 0 AND NOT a.attisdropped",
            None,
            &[row_type.into()],
        )
        .unwrap()
        .map(|r| {
            (
                r.get::<String>(1).unwrap().unwrap(),
                r.get::<pg_sys::Oid>(2).unwrap().unwrap(),
            )
        })
        .collect()
    });
    typed
        .into_iter()
        .filter(|(_, oid)| unsafe {
            // The type cache knows whether '=' exists, including for arrays and domains.
            let tc = pg_sys::lookup_type_cache(*oid, pg_sys::TYPECACHE_EQ_OPR as i32);
            (*tc).eq_opr == pg_sys::InvalidOid
        })
        .map(|(n, _)| n)
        .collect()
}

/// (sender node, schema, table) of a record.
type LinkKey = (String, String, String);

thread_local! {
    // Within one transaction a delivery brings many records for the same link, and links do
    // not change under it; the answer is kept for the transaction (its local id) only.
    static LINK_IDS: RefCell<HashMap<LinkKey, (u32, i32)>> = RefCell::new(HashMap::new());
    // Per sender, the floor below which applied seqs were already forgotten.
    static PRUNED_BELOW: RefCell<HashMap<String, i64>> = RefCell::new(HashMap::new());
}

/// The link a record is for: the one between its sender and the named table here.
fn link_id(sender: &str, schema: &str, table: &str) -> Result<i32, ApplyError> {
    let key = (sender.to_string(), schema.to_string(), table.to_string());
    let xact = crate::db::local_xact();
    if let Some((x, id)) = LINK_IDS.with(|m| m.borrow().get(&key).copied()) {
        if x == xact {
            return Ok(id);
        }
    }
    let id = lookup_link_id(sender, schema, table)?;
    LINK_IDS.with(|m| m.borrow_mut().insert(key, (xact, id)));
    Ok(id)
}

fn lookup_link_id(sender: &str, schema: &str, table: &str) -> Result<i32, ApplyError> {
    let id = crate::db::maybe_one::<i32>(
        "SELECT l.link_id FROM synclink.link l JOIN synclink.peer p USING (peer_name) \
         WHERE p.node_name = $1 AND l.relid = to_regclass(format('%I.%I', $2::text, $3::text))",
        &[sender.into(), schema.into(), table.into()],
    );
    id.ok_or_else(|| match crate::peer::find_by_node(sender) {
        None => ApplyError::UnknownSender(sender.into()),
        Some(_) => ApplyError::NotLinked {
            schema: schema.into(),
            table: table.into(),
            node: sender.into(),
        },
    })
}

fn compile(id: i32, schema: &str, table: &str) -> Rc<Compiled> {
    if let Some(c) = COMPILED.with(|m| m.borrow().get(&id).cloned()) {
        return c;
    }
    let (row_type, columns, key) = Spi::get_three_with_args::<String, Vec<String>, Vec<String>>(
        "SELECT row_type, columns, key_columns FROM synclink.link WHERE link_id = $1",
        &[id.into()],
    )
    .unwrap();
    let (row_type, columns, key) = (row_type.unwrap(), columns.unwrap(), key.unwrap());
    let text_compare = text_compare_columns(&row_type);
    let spec = ApplySpec {
        table: qualified(schema, table),
        row_type: &row_type,
        columns: &columns,
        key: &key,
        text_compare: &text_compare,
    };
    let text = [PgOid::from(pg_sys::TEXTOID)];
    let compiled = Spi::connect(|c| Compiled {
        table: spec.table.clone(),
        insert: c
            .prepare_mut(insert_sql(&spec).as_str(), &text)
            .unwrap()
            .keep(),
        upsert: c
            .prepare_mut(upsert_sql(&spec).as_str(), &text)
            .unwrap()
            .keep(),
        delete: c
            .prepare_mut(delete_sql(&spec).as_str(), &text)
            .unwrap()
            .keep(),
    });
    let compiled = Rc::new(compiled);
    COMPILED.with(|m| m.borrow_mut().insert(id, compiled.clone()));
    compiled
}

/// Record that a queued record from `sender` is applied; false if it was already. Entries below
/// the sender's floor (the lowest seq it still holds) can never be delivered again.
fn first_delivery(sender: &str, seq: i64, floor: Option<i64>) -> bool {
    let done = PRUNED_BELOW.with(|m| m.borrow().get(sender).copied());
    if let Some(floor) = floor.filter(|f| done.is_none_or(|d| *f > d)) {
        Spi::run_with_args(
            "DELETE FROM synclink.applied WHERE sender = $1 AND seq < $2",
            &[sender.into(), floor.into()],
        )
        .unwrap();
        PRUNED_BELOW.with(|m| m.borrow_mut().insert(sender.to_string(), floor));
    }
    crate::db::maybe_one::<i64>(
        "INSERT INTO synclink.applied (sender, seq) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING seq",
        &[sender.into(), seq.into()],
    )
    .is_some()
}

fn execute(stmt: &OwnedPreparedStatement, rows: &str) {
    Spi::connect_mut(|c| {
        c.update(stmt, None, &[rows.into()]).unwrap();
    })
}

/// Apply one change record. Called by the inbox trigger on behalf of a peer.
#[pg_extern(schema = "synclink")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)]
fn apply(
    origin: &str,
    sender: &str,
    target_schema: &str,
    target_table: &str,
    op: i8,
    new_rows: Option<&str>,
    old_rows: Option<&str>,
    seq: default!(Option<i64>, "NULL"),
    floor_seq: default!(Option<i64>, "NULL"),
) {
    let id = link_id(sender, target_schema, target_table).or_raise();
    if let Some(seq) = seq {
        if !first_delivery(sender, seq, floor_seq) {
            return;
        }
    }
    let plans = compile(id, target_schema, target_table);
    APPLYING.with(|a| {
        *a.borrow_mut() = Some(Applying {
            origin: origin.into(),
            sender: sender.into(),
        })
    });
    PgTryBuilder::new(|| match (op as u8, new_rows, old_rows) {
        // A queued record takes the upsert at once: a delivery brings up to a thousand of them
        // in one transaction, and a subtransaction each would overflow the backend's subxid
        // cache, which slows every other session's snapshots.
        (b'I', Some(rows), _) if seq.is_some() => execute(&plans.upsert, rows),
        // Most inserts are new rows: a plain INSERT is a third cheaper than ON CONFLICT.
        // A record delivered again, or a row that exists already, takes the upsert.
        (b'I', Some(rows), _) => {
            if let Err(f) = crate::subxact::run(|| execute(&plans.insert, rows)) {
                if f.sqlstate != PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION {
                    crate::remote::reraise(f);
                }
                execute(&plans.upsert, rows);
            }
        }
        (b'U', Some(rows), _) => execute(&plans.upsert, rows),
        (b'D' | b'K', _, Some(rows)) => execute(&plans.delete, rows),
        (b'T', _, _) => Spi::run(&format!("DELETE FROM {}", plans.table)).unwrap(),
        (b'I' | b'U' | b'D' | b'K', _, _) => {}
        (other, _, _) => crate::error::raise(ApplyError::BadOp((other as char).to_string())),
    })
    .finally(|| APPLYING.with(|a| *a.borrow_mut() = None))
    .execute()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn upsert_updates_only_changed_rows() {
        let cols = strings(&["id", "name", "doc"]);
        let key = strings(&["id"]);
        let tc = strings(&["doc"]);
        let spec = ApplySpec {
            table: "\"public\".\"p\"".into(),
            row_type: "synclink.\"p_row\"",
            columns: &cols,
            key: &key,
            text_compare: &tc,
        };
        let sql = upsert_sql(&spec);
        assert!(sql.contains("ON CONFLICT (\"id\") DO UPDATE SET \"name\" = EXCLUDED.\"name\", \"doc\" = EXCLUDED.\"doc\""), "{sql}");
        assert!(sql.contains("(t.\"name\", t.\"doc\"::text) IS DISTINCT FROM (EXCLUDED.\"name\", EXCLUDED.\"doc\"::text)"), "{sql}");
        assert!(sql.contains("OVERRIDING SYSTEM VALUE"));
    }

    #[test]
    fn upsert_of_key_only_table_does_nothing_on_conflict() {
        let cols = strings(&["a", "b"]);
        let spec = ApplySpec {
            table: "t".into(),
            row_type: "r",
            columns: &cols,
            key: &cols,
            text_compare: &[],
        };
        assert!(upsert_sql(&spec).ends_with("ON CONFLICT (\"a\", \"b\") DO NOTHING"));
    }

    #[test]
    fn delete_matches_every_key_column() {
        let cols = strings(&["a", "b", "v"]);
        let key = strings(&["a", "b"]);
        let spec = ApplySpec {
            table: "t".into(),
            row_type: "r",
            columns: &cols,
            key: &key,
            text_compare: &[],
        };
        assert_eq!(
            delete_sql(&spec),
            "DELETE FROM t t USING unnest($1::r[]) r WHERE t.\"a\" = r.\"a\" AND t.\"b\" = r.\"b\""
        );
    }
}
