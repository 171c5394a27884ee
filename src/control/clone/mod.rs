//! sync_clone: a schema and its data, all of it or a referentially complete subset, made again
//! in another database — the peer's (`to_peer`) or this one from the peer's (`from_peer`):
//! [`ends`] says which node reads and which makes.
//!
//! The source lists what to bring ([`plan`]: schemas, types, sequences, tables, their keys
//! and indexes, foreign keys, functions, views, triggers, from the catalog's own deparsers)
//! and which rows ([`rows`]: up to `max_rows` per table, then every row a chosen row
//! references, until no foreign key of the copied rows points outside them). The target makes
//! each object in a subtransaction of its own, as the role the source reaches it as, and
//! takes the rows in batches, halving a batch it refuses until the refused rows are found
//! ([`target`]): what fails is reported with the statement or the row's key and the error,
//! and the rest goes on. An object the target has already is compared, never made again; rows
//! present by key are left. Rows of a table made now travel in COPY's own format and go in
//! through COPY FROM (`crate::pg::copy`).
//!
//! Order: schemas, types, functions (bodies unchecked, as a restore does; before the tables,
//! whose defaults and checks may call them), sequences, tables, rows, then keys, indexes and
//! foreign keys (loading into a table without indexes is faster, and foreign keys are checked
//! once every table has its rows), sequences moved past the highest value copied, views (each
//! tried again once what it needs is there), triggers last so that loading fired none.
//!
//! The whole clone is one transaction on each node: a failure that stops it (the peer gone)
//! leaves nothing on either — postgres_fdw commits the peer's part only with the caller's
//! transaction, and a connection lost in the middle makes that commit fail — and running it
//! again starts over. The error says which table's rows it was copying.

pub mod ends;
pub mod plan;
pub mod rows;
pub mod target;

use crate::catalog::definition::{Ddl, Kind};
use crate::pg::error::{notice, Result, SqlError};
use crate::rpc::{ObjectOutcome, Outgoing};
use ends::{Chosen, Ends};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

#[derive(thiserror::Error, Debug)]
pub enum CloneError {
    #[error("unknown object kind {}", crate::pg::args::shown(.0))]
    UnknownKind(String),
    #[error("unknown clone direction {}", crate::pg::args::shown(.0))]
    UnknownDirection(String),
    #[error("max_rows must be 0 or more, not {0}")]
    NegativeMaxRows(i64),
    #[error("table {} does not exist", crate::pg::args::shown(.0))]
    NoSuchTable(String),
    #[error("this node does not know which role peer \"{0}\" acts as here")]
    PeerRoleUnknown(String),
    #[error("peer \"{0}\" offered table {1}, which this clone did not ask for")]
    NotAsked(String, String),
    #[error("sync_clone stopped while copying the rows of {table} ({rows} copied): {cause}")]
    Stopped {
        table: String,
        rows: i64,
        cause: crate::pg::error::Error,
    },
}

impl SqlError for CloneError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            CloneError::NoSuchTable(_) => PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            CloneError::PeerRoleUnknown(_) => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            CloneError::NotAsked(..) => PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
            CloneError::Stopped { cause, .. } => cause.sqlstate(),
            _ => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        }
    }
    fn detail(&self) -> Option<String> {
        match self {
            CloneError::Stopped { cause, .. } => cause.detail(),
            _ => None,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            CloneError::Stopped { cause, .. } => format!(
                "{}A clone is one transaction on each node: nothing of this run is kept, and running it again starts over (what the target had before is reported as exists). To keep what each part copied, clone a few tables at a time (tables => …): each call commits on its own.",
                cause.hint().map(|h| format!("{h} ")).unwrap_or_default()
            ),
            CloneError::UnknownKind(_) => format!("objects => takes any of: {}.", KINDS.map(|(n, _)| n).join(", ")),
            CloneError::UnknownDirection(_) => "direction => 'to_peer' (the default: this database is copied into the peer's) or 'from_peer'.".into(),
            CloneError::NegativeMaxRows(_) => "max_rows => NULL copies every row; 0 copies only the rows other copied rows reference (none, when no table is limited).".into(),
            CloneError::NoSuchTable(_) => "The table was dropped or renamed while it was cloned: run sync_clone again.".into(),
            CloneError::PeerRoleUnknown(peer) => format!("A clone from the peer makes its objects here as the role the peer connects to this node as, which this node learns when the peer first reaches it (a change or a request), so that the peer's definitions can do here only what that role could do anyway. Let the peer reach this node once, or say which role it acts as: UPDATE synclink.peer SET inbound_role = 'some_role'::regrole WHERE peer_name = '{peer}' (a role that may create in the schemas cloned, best not a superuser)."),
            CloneError::NotAsked(..) => "The peer runs another synclink version, or is not behaving as a peer should: nothing of the clone is kept.".into(),
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

/// sync_clone: bring this database's objects and rows into `peer`'s (`to_peer`), or the
/// peer's into this one (`from_peer`), and say what became of each.
pub fn clone(peer_name: Option<&str>, options: Options) -> Result<Vec<Line>> {
    let what = wanted(&options.objects)?;
    if !["to_peer", "from_peer"].contains(&options.direction.as_str()) {
        return Err(CloneError::UnknownDirection(options.direction.clone()).into());
    }
    if let Some(n) = options.max_rows.filter(|n| *n < 0) {
        return Err(CloneError::NegativeMaxRows(n).into());
    }
    let peer = crate::catalog::peer::resolve(peer_name)?;
    let ends = if options.direction == "to_peer" {
        Ends::ToPeer(&peer)
    } else {
        // made here as the role the peer reaches this node as: no more than it could do
        let role = peer
            .inbound_role
            .ok_or_else(|| CloneError::PeerRoleUnknown(peer.name.clone()))?;
        Ends::FromPeer(&peer, role)
    };
    let plan = ends.plan(options.tables.as_deref(), &options.search_path)?;
    let mut report = Vec::new();
    let has = |w: What| what.contains(&w);

    let mut tables_made: Vec<(String, usize)> = Vec::new();
    // the tables made now, empty and without keys until the rows are in, and the sequences
    let mut fresh: Vec<String> = Vec::new();
    // Functions come right after the types, since a table's defaults and checks may call
    // them; one that needs a table's row type is tried again once the tables are there.
    let first = asked(
        &has,
        [
            (What::Tables, &plan.schemas),
            (What::Types, &plan.types),
            (What::Functions, &plan.functions),
            (What::Sequences, &plan.sequences),
            (What::Tables, &plan.tables),
            (What::Tables, &plan.sequence_owners),
        ],
    );
    for (ddl, outcome) in ends.make(first)? {
        if quiet(ddl.kind) && outcome.action != "failed"
            || ddl.kind == Kind::Schema && outcome.action == "exists"
        {
            continue;
        }
        if ddl.kind == Kind::Table {
            tables_made.push((ddl.name.clone(), report.len()));
        }
        if matches!(ddl.kind, Kind::Table | Kind::Sequence) && outcome.action == "created" {
            fresh.push(ddl.name.clone());
        }
        report.push(line(&ddl, outcome));
    }

    if has(What::Rows) {
        for chosen in ends.choose(&plan.table_names, options.max_rows)? {
            // rows only of the tables planned, and in bulk only into those made now
            if !plan.table_names.contains(&chosen.table) {
                return Err(CloneError::NotAsked(peer.name.clone(), chosen.table).into());
            }
            let copied = copy(&ends, &peer.name, &chosen, fresh.contains(&chosen.table))?;
            let name = chosen.table.clone();
            let referenced = (chosen.by_reference > 0).then(|| {
                format!(
                    "+{} rows referenced by other copied rows",
                    chosen.by_reference
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
    for (ddl, outcome) in ends.make(rest)? {
        if quiet(ddl.kind) && outcome.action != "failed" {
            continue;
        }
        report.push(line(&ddl, outcome));
    }
    Ok(report)
}

/// What copying one table's rows came to.
struct Copied {
    inserted: i64,
    present: i64,
    refused: Vec<(String, String)>,
    skipped: Option<String>,
}

/// How often a long table's copy says how far it got (synclink.clone_progress_interval).
static PROGRESS_EVERY_MS: pgrx::GucSetting<i32> = pgrx::GucSetting::<i32>::new(10_000);

pub fn init_gucs() {
    pgrx::GucRegistry::define_int_guc(
        c"synclink.clone_progress_interval",
        c"How often sync_clone says how far the copy of a long table got.",
        c"A NOTICE with the rows copied so far, at the end of the first batch after each interval.",
        &PROGRESS_EVERY_MS,
        0,
        3_600_000,
        pgrx::GucContext::Userset,
        pgrx::GucFlags::UNIT_MS,
    );
}

/// Copy the chosen rows of one table, batch by batch; says in a NOTICE how many and how long
/// it took, and every little while how far a long table got. A table the target made in this
/// clone (`made`: empty, no keys yet) takes them through COPY; one it had already through an
/// insert that leaves the rows it has.
fn copy(ends: &Ends, peer: &str, chosen: &Chosen, made: bool) -> Result<Copied> {
    let started = Instant::now();
    let mut said = started;
    let mut copied = Copied {
        inserted: 0,
        present: 0,
        refused: Vec::new(),
        skipped: None,
    };
    let mut limit: i64 = 1_000;
    let stopped = |copied: &Copied, cause| CloneError::Stopped {
        table: chosen.table.clone(),
        rows: copied.inserted,
        cause,
    };
    let mut first = true;
    loop {
        let read = ends.read(chosen, made, limit, first);
        first = false;
        let Some((out, data)) = read.map_err(|e| stopped(&copied, e))? else {
            break;
        };
        let (rows, bytes) = match &out {
            Outgoing::Copy(req) => (req.count as usize, data.len()),
            Outgoing::Rows(req, _) => (req.count as usize, req.rows.len()),
        };
        let taken = ends
            .take(out, data, made)
            .map_err(|e| stopped(&copied, e))?;
        copied.inserted += taken.inserted;
        copied.present += taken.present;
        copied.refused.extend(taken.refused);
        if let Some(why) = taken.skipped {
            copied.skipped = Some(why);
            break;
        }
        let every = Duration::from_millis(PROGRESS_EVERY_MS.get().max(0) as u64);
        if said.elapsed() >= every {
            said = Instant::now();
            notice(&format!(
                "sync_clone: {} rows of {} copied so far ({:.0} s)",
                copied.inserted,
                chosen.table,
                started.elapsed().as_secs_f64()
            ));
        }
        let per_row = (bytes / rows.max(1)).max(1);
        limit = (rows::BULK_BYTES / per_row).clamp(100, 200_000) as i64;
    }
    notice(&format!(
        "sync_clone: {} rows of {} copied {} peer \"{peer}\" in {:.2} s{}{}",
        copied.inserted,
        chosen.table,
        if matches!(ends, Ends::ToPeer(_)) {
            "to"
        } else {
            "from"
        },
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
