//! sync_clone: a schema and its data, all of it or a referentially complete subset, made again
//! in a peer's database.
//!
//! This node lists what to bring ([`plan`]: types, sequences, tables, their keys and indexes,
//! foreign keys, functions, views, triggers, from the catalog's own deparsers) and which rows
//! ([`rows`]: up to `max_rows` per table, then every row a chosen row references, until no
//! foreign key of the copied rows points outside them). The peer makes each object in a
//! subtransaction of its own, as the role this node connects as, and takes the rows in
//! batches, halving a batch it refuses until the refused rows are found ([`target`]): what
//! fails is reported with the statement or the row's key and the error, and the rest goes on.
//! An object the peer has already is compared, never made again; rows present by key are left.
//!
//! Order: types, functions (bodies unchecked, as a restore does; before the tables, whose
//! defaults and checks may call them), sequences, tables, rows, then keys, indexes and foreign
//! keys (loading into a table without indexes is faster, and foreign keys are checked once
//! every table has its rows), sequences moved past the highest value copied, views (each
//! tried again once what it needs is there), triggers last so that loading fired none.
//!
//! The whole clone is one transaction on each node: a failure that stops it (the peer gone)
//! leaves nothing on either, and running it again starts over.

pub mod plan;
pub mod rows;
pub mod target;

use crate::catalog::definition::{Ddl, Kind};
use crate::catalog::peer::Peer;
use crate::pg::error::{Result, SqlError};
use crate::rpc::{CloneObjectsRequest, ObjectOutcome};
use pgrx::prelude::*;

#[derive(thiserror::Error, Debug)]
pub enum CloneError {
    #[error("unknown object kind {}", crate::pg::args::shown(.0))]
    UnknownKind(String),
    #[error("unknown clone direction {}", crate::pg::args::shown(.0))]
    UnknownDirection(String),
    #[error("max_rows must be 0 or more, not {0}")]
    NegativeMaxRows(i64),
    #[error("sync_clone cannot clone from the peer yet")]
    FromPeer,
}

impl SqlError for CloneError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            CloneError::FromPeer => PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            _ => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            CloneError::UnknownKind(_) => format!("objects => takes any of: {}.", KINDS.map(|(n, _)| n).join(", ")),
            CloneError::UnknownDirection(_) => "direction => 'to_peer' (the default: this database is copied into the peer's) or 'from_peer'.".into(),
            CloneError::NegativeMaxRows(_) => "max_rows => NULL copies every row; 0 copies only the rows other copied rows reference (none, when no table is limited).".into(),
            CloneError::FromPeer => "Run sync_clone on the peer with direction => 'to_peer' (the default), naming this node as its peer.".into(),
        })
    }
}

crate::pg::error::reported_as_sql_error!(CloneError);

/// The kinds a caller may ask for, by the names `objects =>` takes.
const KINDS: [(&str, What); 10] = [
    ("types", What::Types),
    ("sequences", What::Sequences),
    ("tables", What::Tables),
    ("rows", What::Rows),
    ("keys", What::Keys),
    ("indexes", What::Indexes),
    ("foreign_keys", What::ForeignKeys),
    ("functions", What::Functions),
    ("views", What::Views),
    ("triggers", What::Triggers),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    Types,
    Sequences,
    Tables,
    Rows,
    Keys,
    Indexes,
    ForeignKeys,
    Functions,
    Views,
    Triggers,
}

/// How sync_clone was called.
pub struct Options {
    /// the schemas of the caller's search path (plan::search_path)
    pub search_path: Vec<pg_sys::Oid>,
    pub tables: Option<Vec<String>>,
    pub objects: Option<Vec<String>>,
    pub max_rows: Option<i64>,
    pub direction: String,
}

/// One line of sync_clone's report.
pub struct Line {
    pub kind: String,
    pub name: String,
    pub action: String,
    pub rows: Option<i64>,
    pub detail: Option<String>,
}

fn wanted(objects: &Option<Vec<String>>) -> Result<Vec<What>> {
    match objects {
        None => Ok(KINDS.iter().map(|(_, w)| *w).collect()),
        Some(names) => names
            .iter()
            .map(|n| {
                KINDS
                    .iter()
                    .find(|(k, _)| {
                        *k == n.as_str()
                            || k.strip_suffix("es").is_some_and(|one| one == n)
                            || k.strip_suffix('s').is_some_and(|one| one == n)
                    })
                    .map(|(_, w)| *w)
                    .ok_or_else(|| CloneError::UnknownKind(n.clone()).into())
            })
            .collect(),
    }
}

/// sync_clone: bring this database's objects and rows into `peer`'s, and say what became of
/// each.
pub fn clone(peer_name: Option<&str>, options: Options) -> Result<Vec<Line>> {
    let what = wanted(&options.objects)?;
    match options.direction.as_str() {
        "to_peer" => {}
        "from_peer" => return Err(CloneError::FromPeer.into()),
        other => return Err(CloneError::UnknownDirection(other.into()).into()),
    }
    if let Some(n) = options.max_rows.filter(|n| *n < 0) {
        return Err(CloneError::NegativeMaxRows(n).into());
    }
    let peer = crate::catalog::peer::resolve(peer_name)?;
    let plan = plan::plan(options.tables.as_deref(), &options.search_path)?;
    let mut report = Vec::new();
    let has = |w: What| what.contains(&w);

    let mut tables_made: Vec<(String, usize)> = Vec::new();
    // the tables made now, empty and without keys until the rows are in
    let mut fresh: Vec<String> = Vec::new();
    // Functions come right after the types, since a table's defaults and checks may call
    // them; one that needs a table's row type is tried again once the tables are there.
    let first = asked(
        &has,
        [
            (What::Types, &plan.types),
            (What::Functions, &plan.functions),
            (What::Sequences, &plan.sequences),
            (What::Tables, &plan.tables),
            (What::Tables, &plan.sequence_owners),
        ],
    );
    for (ddl, outcome) in make(&peer, first)? {
        if quiet(ddl.kind) && outcome.action != "failed" {
            continue;
        }
        if ddl.kind == Kind::Table {
            tables_made.push((ddl.name.clone(), report.len()));
            if outcome.action == "created" {
                fresh.push(ddl.name.clone());
            }
        }
        report.push(line(&ddl, outcome));
    }

    if has(What::Rows) {
        for choice in rows::choose(&plan.table_oids, options.max_rows)? {
            let copied = rows::copy(&peer, &choice, fresh.contains(&choice.table))?;
            let name = copied.table.clone();
            let referenced = (copied.by_reference > 0).then(|| {
                format!(
                    "+{} rows referenced by other copied rows",
                    copied.by_reference
                )
            });
            let skipped = copied.skipped.clone();
            let detail = joined(referenced, skipped.clone());
            match tables_made.iter().find(|(n, _)| *n == name) {
                Some((_, at)) => {
                    let l: &mut Line = &mut report[*at];
                    l.rows = Some(copied.inserted);
                    l.detail = joined(l.detail.take(), detail);
                }
                None => report.push(Line {
                    kind: "rows".into(),
                    name: name.clone(),
                    action: if skipped.is_some() {
                        "failed"
                    } else {
                        "copied"
                    }
                    .into(),
                    rows: Some(copied.inserted),
                    detail,
                }),
            }
            for (key, error) in copied.refused {
                report.push(Line {
                    kind: "row".into(),
                    name: format!("{name} {key}"),
                    action: "failed".into(),
                    rows: None,
                    detail: Some(error),
                });
            }
        }
    }

    let rest = asked(
        &has,
        [
            (What::Keys, &plan.keys),
            (What::Indexes, &plan.indexes),
            (What::ForeignKeys, &plan.foreign_keys),
            (What::Rows, &plan.sequence_values),
            (What::Views, &plan.views),
            (What::Triggers, &plan.triggers),
        ],
    );
    for (ddl, outcome) in make(&peer, rest)? {
        if quiet(ddl.kind) && outcome.action != "failed" {
            continue;
        }
        report.push(line(&ddl, outcome));
    }
    Ok(report)
}

/// The statements of the kinds asked for, in the order given.
fn asked<const N: usize>(has: &dyn Fn(What) -> bool, lists: [(What, &Vec<Ddl>); N]) -> Vec<Ddl> {
    lists
        .into_iter()
        .filter(|(w, _)| has(*w))
        .flat_map(|(_, list)| list.iter().cloned())
        .collect()
}

/// Statements that make no object of their own (a sequence given to its column, moved on):
/// reported only when they fail.
fn quiet(kind: Kind) -> bool {
    matches!(kind, Kind::SequenceOwner | Kind::SequenceValue)
}

/// Have the peer make `objects`, in one request (a function or view that needs another object
/// of the request is tried again there); each with what became of it.
fn make(peer: &Peer, objects: Vec<Ddl>) -> Result<Vec<(Ddl, ObjectOutcome)>> {
    if objects.is_empty() {
        return Ok(Vec::new());
    }
    let outcomes: Vec<ObjectOutcome> = crate::rpc::call_for(
        peer,
        &CloneObjectsRequest {
            objects: objects.clone(),
        },
    )?;
    Ok(objects.into_iter().zip(outcomes).collect())
}

/// Two remarks as one DETAIL.
fn joined(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

fn line(ddl: &Ddl, outcome: ObjectOutcome) -> Line {
    Line {
        kind: ddl.kind.label().into(),
        name: ddl.name.clone(),
        action: outcome.action,
        rows: None,
        detail: outcome.detail,
    }
}
