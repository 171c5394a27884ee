//! Linking a table with a peer: validation on both sides, the objects each side makes
//! (row type, capture function, statement triggers), and the request that makes the peer set
//! up its half so one call links both directions.

use crate::catalog::peer::{self, Peer, PeerError};
use crate::data::capture::statement::{self as capture, CaptureSpec};
use crate::pg::error::{notice, raise, OrRaise, SqlError};
use crate::pg::sql::{ident, join, object_name, qualified};
use crate::reconcile::resolve::Policy;
use pgrx::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(thiserror::Error, Debug)]
pub enum LinkError {
    #[error("table {0} has no primary key")]
    NoPrimaryKey(String),
    #[error("table {table} does not exist on node \"{node}\"")]
    MissingTable { table: String, node: String },
    #[error("table {table} has different columns on node \"{node}\"")]
    ColumnMismatch {
        table: String,
        node: String,
        differences: Vec<String>,
    },
    #[error("table {table} on node \"{node}\" has no primary key or unique index on ({key})")]
    KeyMismatch {
        table: String,
        node: String,
        key: String,
    },
    #[error("table {table} is not linked with peer \"{peer}\"")]
    NotLinked { table: String, peer: String },
    #[error("table {0} is already linked differently on node \"{1}\"")]
    LinkedDifferently(String, String),
    #[error("unknown request {} from a peer", crate::pg::args::shown(.0))]
    BadRequest(String),
    #[error("column {} of {table} does not exist", crate::pg::args::shown(.column))]
    NoSuchColumn { column: String, table: String },
    #[error("no unique index of {table} covers exactly ({key}) with every column NOT NULL")]
    KeyNotUnique { table: String, key: String },
    #[error("column {} cannot be both part of the key and excluded", crate::pg::args::shown(.0))]
    ExcludedKey(String),
    #[error(
        "excluded column \"{column}\" of {table} on node \"{node}\" is NOT NULL and has no default"
    )]
    ExcludedNeedsDefault {
        column: String,
        table: String,
        node: String,
    },
    #[error("{table} is {kind}; only tables can be linked")]
    NotATable { table: String, kind: &'static str },
    #[error("table {0} has row-level security, and a link mirrors every row")]
    RowSecurity(String),
    #[error("{0} belongs to synclink or to the system and cannot be linked")]
    OwnTable(String),
    #[error("table {table} has columns whose names synclink reserves")]
    ReservedColumns {
        table: String,
        reserved: Vec<String>,
    },
    #[error("key column \"{column}\" of {table} is a generated column")]
    GeneratedKey { table: String, column: String },
    #[error("{count} changes to {table} are still queued for peer \"{peer}\" on node \"{node}\"")]
    HasQueued {
        table: String,
        peer: String,
        node: String,
        count: i64,
    },
}

impl SqlError for LinkError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            LinkError::NoPrimaryKey(_) | LinkError::KeyMismatch { .. } => {
                ERRCODE_INVALID_TABLE_DEFINITION
            }
            LinkError::MissingTable { .. } => ERRCODE_UNDEFINED_TABLE,
            LinkError::ColumnMismatch { .. } => ERRCODE_DATATYPE_MISMATCH,
            LinkError::NotLinked { .. } => ERRCODE_UNDEFINED_OBJECT,
            LinkError::LinkedDifferently(..) => ERRCODE_DUPLICATE_OBJECT,
            LinkError::BadRequest(_) => ERRCODE_PROTOCOL_VIOLATION,
            LinkError::HasQueued { .. } => ERRCODE_OBJECT_IN_USE,
            LinkError::NoSuchColumn { .. } => ERRCODE_UNDEFINED_COLUMN,
            LinkError::KeyNotUnique { .. } => ERRCODE_INVALID_COLUMN_REFERENCE,
            LinkError::ExcludedKey(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            LinkError::ExcludedNeedsDefault { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            LinkError::NotATable { .. } => ERRCODE_WRONG_OBJECT_TYPE,
            LinkError::OwnTable(_) | LinkError::RowSecurity(_) => ERRCODE_FEATURE_NOT_SUPPORTED,
            LinkError::ReservedColumns { .. } => ERRCODE_RESERVED_NAME,
            LinkError::GeneratedKey { .. } => ERRCODE_INVALID_TABLE_DEFINITION,
        }
    }
    fn detail(&self) -> Option<String> {
        match self {
            LinkError::ColumnMismatch { differences, .. } => Some(differences.join("; ")),
            LinkError::ReservedColumns { reserved, .. } => Some(format!(
                "Column(s) {} start with \"{RESERVED_PREFIX}\".",
                reserved.join(", ")
            )),
            _ => None,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            LinkError::NoPrimaryKey(t) => format!("synclink matches rows by a primary key that is not DEFERRABLE (INSERT ... ON CONFLICT cannot use one that is): ALTER TABLE {t} ADD PRIMARY KEY (...)."),
            LinkError::MissingTable { .. } => "Create the table on that node with the same columns first (synclink copies rows, not table definitions).".into(),
            LinkError::ColumnMismatch { .. } => "Both tables need the same column names with compatible types; generated columns are recomputed on each side and must be generated on both.".into(),
            LinkError::KeyMismatch { .. } => "Give the table on that node the same primary key (not DEFERRABLE).".into(),
            LinkError::NotLinked { .. } => "sync_status lists the linked tables.".into(),
            LinkError::LinkedDifferently(..) => "Run sync_unlink_table() for it first, then link again.".into(),
            LinkError::BadRequest(_) => "Both nodes must run the same synclink version.".into(),
            LinkError::NoSuchColumn { .. } => "key => and exclude => take column names of the table.".into(),
            LinkError::KeyNotUnique { table, key } => format!("Rows are matched by the key, so it must be unique and never NULL on both nodes: CREATE UNIQUE INDEX ON {table} ({key}), and ALTER COLUMN ... SET NOT NULL for each key column."),
            LinkError::ExcludedKey(_) => "Rows are matched by the key, so it must travel; exclude other columns.".into(),
            LinkError::ExcludedNeedsDefault { column, table, .. } => format!("Rows arriving from the other node carry no value for it: ALTER TABLE {table} ALTER COLUMN \"{column}\" SET DEFAULT ... (or DROP NOT NULL), or stop excluding it."),
            LinkError::NotATable { kind, .. } if kind.contains("partition") => "A partition's rows change through the partitioned table and through the partition itself, and a statement trigger sees only one of the two: partitioned tables cannot be linked yet.".into(),
            LinkError::NotATable { .. } => "synclink links ordinary tables that every session sees; link the table a view reads from instead.".into(),
            LinkError::RowSecurity(t) => format!("Rows travel and are applied whatever the policies allow: link a table without them, or ALTER TABLE {t} DISABLE ROW LEVEL SECURITY if every row may go to the peer."),
            LinkError::OwnTable(_) => "Link the application's tables; synclink's own tables travel by themselves.".into(),
            LinkError::ReservedColumns { table, .. } => format!("Names starting with \"{RESERVED_PREFIX}\" are synclink's own in the code it generates: ALTER TABLE {table} RENAME COLUMN ... TO ... first."),
            LinkError::GeneratedKey { .. } => "Rows are matched by values sent to the peer, and generated columns are recomputed on each side instead: link with key => (other columns), or make the column an ordinary one.".into(),
            LinkError::HasQueued { peer, node, .. } => format!("Deliver them first with SELECT sync_flush('{peer}') on node \"{node}\", or pass discard_queued => true to throw them away."),
        })
    }
}

/// Names synclink gives its own columns and variables in what it generates; a table column
/// named so would be ambiguous there.
const RESERVED_PREFIX: &str = "synclink$";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WireColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub base_type: String,
    /// Everything that decides which values the column holds (crate::catalog::types::detail): two
    /// columns whose details differ would round, cut or refuse some of each other's values.
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub wire: WireColumn,
    pub generated: bool,
    pub not_null: bool,
    /// a DEFAULT or an identity: an insert that leaves it out still gets a value
    pub has_default: bool,
}

pub struct TableInfo {
    pub oid: pg_sys::Oid,
    pub schema: String,
    pub name: String,
    /// pg_class.relkind, relpersistence and relispartition
    pub kind: i8,
    pub persistence: i8,
    pub partition: bool,
    /// row-level security enabled
    pub row_security: bool,
    pub columns: Vec<Column>,
    pub primary_key: Option<Vec<String>>,
    pub unique_keys: Vec<Vec<String>>,
}

impl TableInfo {
    pub fn display(&self) -> String {
        qualified(&self.schema, &self.name)
    }
    /// Columns that travel: everything but generated and excluded columns, in the table's order.
    pub fn wire_columns(&self, excluded: &[String]) -> Vec<WireColumn> {
        self.columns
            .iter()
            .filter(|c| !c.generated && !excluded.contains(&c.wire.name))
            .map(|c| c.wire.clone())
            .collect()
    }

    /// What a link cannot be made on, found before anything is made: each of these was once
    /// accepted and then made every write fail.
    pub fn check_linkable(&self) -> Result<(), LinkError> {
        let table = self.display();
        let kind = match self.kind as u8 {
            _ if self.partition => Some("a partition"),
            b'p' => Some("a partitioned table"),
            b'r' => None,
            b'v' => Some("a view"),
            b'm' => Some("a materialized view"),
            b'f' => Some("a foreign table"),
            b'S' => Some("a sequence"),
            _ => Some("not a table"),
        };
        if let Some(kind) = kind {
            return Err(LinkError::NotATable { table, kind });
        }
        if self.persistence as u8 == b't' {
            return Err(LinkError::NotATable {
                table,
                kind: "a temporary table",
            });
        }
        if self.row_security {
            return Err(LinkError::RowSecurity(table));
        }
        if ["synclink", "pg_catalog", "information_schema", "pg_toast"]
            .contains(&self.schema.as_str())
        {
            return Err(LinkError::OwnTable(table));
        }
        let reserved: Vec<String> = self
            .columns
            .iter()
            .filter(|c| c.wire.name.starts_with(RESERVED_PREFIX))
            .map(|c| ident(&c.wire.name))
            .collect();
        if !reserved.is_empty() {
            return Err(LinkError::ReservedColumns { table, reserved });
        }
        Ok(())
    }

    /// Rows are matched by the key's values as sent, and generated columns are not sent.
    pub fn check_key_travels(&self, key: &[String]) -> Result<(), LinkError> {
        if let Some(c) = self
            .columns
            .iter()
            .find(|c| c.generated && key.contains(&c.wire.name))
        {
            return Err(LinkError::GeneratedKey {
                table: self.display(),
                column: c.wire.name.clone(),
            });
        }
        Ok(())
    }

    /// Excluded columns get no value from the other node, so an insert from there needs each
    /// to be nullable or to have a default here.
    fn check_excluded(&self, excluded: &[String], node: &str) -> Result<(), LinkError> {
        for name in excluded {
            if let Some(c) = self.columns.iter().find(|c| &c.wire.name == name) {
                if c.not_null && !c.has_default && !c.generated {
                    return Err(LinkError::ExcludedNeedsDefault {
                        column: name.clone(),
                        table: self.display(),
                        node: node.into(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Catalog facts about a table. Types are printed with search_path = pg_catalog (set on every
/// synclink function), so a user type shows schema-qualified on both nodes.
pub fn describe(oid: pg_sys::Oid) -> TableInfo {
    Spi::connect(|c| {
        let head = c
            .select(
                "SELECT n.nspname::text, cl.relname::text, cl.relkind, cl.relpersistence, \
                        cl.relispartition, cl.relrowsecurity FROM pg_class cl \
                 JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE cl.oid = $1",
                None,
                &[oid.into()],
            )
            .unwrap()
            .first();
        let schema: String = head.get(1).unwrap().unwrap();
        let name: String = head.get(2).unwrap().unwrap();
        let kind: i8 = head.get(3).unwrap().unwrap();
        let persistence: i8 = head.get(4).unwrap().unwrap();
        let partition: bool = head.get(5).unwrap().unwrap();
        let row_security: bool = head.get(6).unwrap().unwrap();
        let columns: Vec<Column> = c
            .select(
                "SELECT attname::text, format_type(atttypid, atttypmod), format_type(atttypid, NULL), \
                        attgenerated <> '', attnotnull, atthasdef OR attidentity <> '', atttypid, atttypmod \
                   FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                None,
                &[oid.into()],
            )
            .unwrap()
            .map(|r| Column {
                wire: WireColumn {
                    name: r.get(1).unwrap().unwrap(),
                    type_name: r.get(2).unwrap().unwrap(),
                    base_type: r.get(3).unwrap().unwrap(),
                    detail: Some(crate::catalog::types::detail(
                        r.get(7).unwrap().unwrap(),
                        r.get(8).unwrap().unwrap(),
                    )),
                },
                generated: r.get(4).unwrap().unwrap(),
                not_null: r.get(5).unwrap().unwrap(),
                has_default: r.get(6).unwrap().unwrap(),
            })
            .collect();
        let mut primary_key = None;
        let mut unique_keys = Vec::new();
        let keys = c
            .select(
                "SELECT i.indisprimary, array_agg(a.attname::text ORDER BY k.ord) \
                 FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
                   AND i.indisvalid AND i.indimmediate \
                 GROUP BY i.indexrelid, i.indisprimary \
                 HAVING bool_and(a.attnotnull)",
                None,
                &[oid.into()],
            )
            .unwrap();
        for r in keys {
            let is_pk: bool = r.get(1).unwrap().unwrap();
            let cols: Vec<String> = r.get(2).unwrap().unwrap();
            if is_pk {
                primary_key = Some(cols.clone());
            }
            unique_keys.push(cols);
        }
        TableInfo {
            oid,
            schema,
            name,
            kind,
            persistence,
            partition,
            row_security,
            columns,
            primary_key,
            unique_keys,
        }
    })
}

pub fn lookup(schema: &str, table: &str) -> Option<pg_sys::Oid> {
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT to_regclass(format('%I.%I', $1::text, $2::text))::oid",
        &[schema.into(), table.into()],
    )
    .unwrap()
}

/// Types that carry the same values in text form either way.
fn compatible(a: &str, b: &str) -> bool {
    let strings = ["text", "character varying"];
    a == b || (strings.contains(&a) && strings.contains(&b))
}

/// Compare the columns a peer sends with ours; every difference is listed, not just the first.
pub fn column_differences(local: &[Column], wire: &[WireColumn]) -> Vec<String> {
    let mut diffs = Vec::new();
    for w in wire {
        match local.iter().find(|c| c.wire.name == w.name) {
            None => diffs.push(format!("column \"{}\" is missing", w.name)),
            Some(c) if c.generated => diffs.push(format!(
                "column \"{}\" is generated on one side only",
                w.name
            )),
            Some(c) if !compatible(&c.wire.base_type, &w.base_type) => diffs.push(format!(
                "column \"{}\" is {} here but {} on the other side",
                w.name, c.wire.type_name, w.type_name
            )),
            Some(c) if c.wire.detail.is_some() && w.detail.is_some() && c.wire.detail != w.detail => {
                diffs.push(format!(
                    "column \"{}\" is {} here but {} on the other side, which would round, cut or refuse some values",
                    w.name,
                    c.wire.detail.as_deref().unwrap_or_default(),
                    w.detail.as_deref().unwrap_or_default()
                ))
            }
            Some(_) => {}
        }
    }
    for c in local.iter().filter(|c| !c.generated) {
        if !wire.iter().any(|w| w.name == c.wire.name) {
            diffs.push(format!("column \"{}\" exists only here", c.wire.name));
        }
    }
    diffs
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

#[derive(Debug, Serialize, Deserialize)]
struct LinkRequest {
    schema: String,
    table: String,
    columns: Vec<WireColumn>,
    key: Vec<String>,
    initiator: String,
    from_schema: String,
    from_table: String,
    #[serde(default = "sync_mode")]
    mode: String,
    /// columns neither sent nor overwritten; each node keeps its own values
    #[serde(default)]
    exclude: Vec<String>,
    /// the conflict policy as stored (see crate::reconcile::resolve::Policy::stored)
    #[serde(default = "last_write_wins")]
    conflict: String,
    #[serde(default)]
    prefer_node: Option<String>,
    #[serde(default)]
    version_column: Option<String>,
}

fn last_write_wins() -> String {
    "last_write_wins".into()
}

fn sync_mode() -> String {
    "sync".into()
}

#[derive(Debug, Serialize, Deserialize)]
struct UnlinkRequest {
    schema: String,
    table: String,
    #[serde(default)]
    discard_queued: bool,
}

pub struct Link {
    pub id: i32,
    pub relid: pg_sys::Oid,
    pub peer_name: String,
    pub peer_schema: String,
    pub peer_table: String,
    pub row_type: String,
    pub capture_function: String,
    pub triggers: Vec<String>,
    pub version_table: String,
}

fn load(where_sql: &str, args: Vec<pgrx::datum::DatumWithOid>) -> Option<Link> {
    Spi::connect(|c| {
        c.select(
            &format!(
                "SELECT link_id, relid::oid, peer_name, peer_schema, peer_table, row_type, \
                        capture_function, triggers, version_table FROM synclink.link WHERE {where_sql}"
            ),
            None,
            &args,
        )
        .unwrap()
        .next()
        .map(|r| Link {
            id: r.get(1).unwrap().unwrap(),
            relid: r.get(2).unwrap().unwrap(),
            peer_name: r.get(3).unwrap().unwrap(),
            peer_schema: r.get(4).unwrap().unwrap(),
            peer_table: r.get(5).unwrap().unwrap(),
            row_type: r.get(6).unwrap().unwrap(),
            capture_function: r.get(7).unwrap().unwrap(),
            triggers: r.get(8).unwrap().unwrap(),
            version_table: r.get(9).unwrap().unwrap(),
        })
    })
}

pub fn find(relid: pg_sys::Oid, peer: &str) -> Option<Link> {
    load(
        "relid = $1 AND peer_name = $2",
        vec![relid.into(), peer.into()],
    )
}

/// A name in schema synclink not yet taken by a type or function.
fn free_name(base: &str, suffix: &str, id: i32) -> String {
    let taken = |n: &str| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_type WHERE typname = $1 AND typnamespace = 'synclink'::regnamespace) \
                 OR EXISTS (SELECT 1 FROM pg_proc WHERE proname = $1 AND pronamespace = 'synclink'::regnamespace)",
            &[n.into()],
        )
        .unwrap()
        .unwrap_or(false)
    };
    let name = object_name(base, suffix, id);
    if !taken(&name) {
        return name;
    }
    object_name(&format!("{base}_{id}"), suffix, id)
}

/// Make this node's half of a link and record it. Both sides use the same wire column order.
/// `req` describes the link as the initiating node sent it; `peer_table` is the peer's
/// (schema, table) as seen from this node.
fn create_local(info: &TableInfo, peer: &Peer, req: &LinkRequest, peer_table: (&str, &str)) -> i32 {
    let (wire, key) = (&req.columns, &req.key[..]);
    let (initiator, mode) = (req.initiator.as_str(), req.mode.as_str());
    let (peer_schema, peer_table) = peer_table;
    let id = Spi::get_one::<i32>("SELECT nextval('synclink.link_link_id_seq')::int")
        .unwrap()
        .unwrap();
    let base = format!("{}_{}", info.name, peer.name);
    let row_type = qualified("synclink", &free_name(&base, "row", id));
    let function = qualified("synclink", &free_name(&base, "capture", id));
    let version_table = qualified("synclink", &free_name(&base, "version", id));
    // Our own column types, in the agreed order: the peer's text form is parsed into these.
    let attrs = join(wire, ", ", |w| {
        let local = info
            .columns
            .iter()
            .find(|c| c.wire.name == w.name)
            .expect("validated column");
        format!("{} {}", ident(&w.name), local.wire.type_name)
    });
    Spi::run(&format!("CREATE TYPE {row_type} AS ({attrs})")).unwrap();
    let type_of = |name: &String| {
        let c = info.columns.iter().find(|c| &c.wire.name == name);
        c.expect("validated key").wire.type_name.clone()
    };
    Spi::run(&format!(
        "CREATE TABLE {version_table} ({keys}, \"synclink$at\" bigint NOT NULL, \
         \"synclink$node\" text NOT NULL, \"synclink$base_at\" bigint, \"synclink$base_node\" text, \
         PRIMARY KEY ({key_list}))",
        keys = join(key, ", ", |k| format!("{} {}", ident(k), type_of(k))),
        key_list = join(key, ", ", |k| ident(k)),
    ))
    .unwrap();
    // Changes from the peer are applied as the table's owner, in one statement that also
    // writes the versions: the owner may use the versions of this table, and nobody else.
    for stmt in version_table_access(&version_table, info.oid) {
        Spi::run(&stmt).unwrap();
    }
    Spi::run(&format!(
        "COMMENT ON TABLE {version_table} IS {}",
        crate::pg::sql::literal(&format!(
            "synclink: per key of {}, the version of the row here (microseconds since 1970, node) \
             and, after a change made here, the version it replaced",
            info.display()
        ))
    ))
    .unwrap();
    let columns: Vec<String> = wire.iter().map(|w| w.name.clone()).collect();
    let table = info.display();
    let spec = CaptureSpec {
        link_id: id,
        function: &function,
        table_display: &format!("{}.{}", info.schema, info.name),
        peer_name: &peer.name,
        row_type: &row_type,
        columns: &columns,
        key,
        pair_by: info.primary_key.as_deref().filter(|pk| !same_set(pk, key)),
        queue_only: mode == "async",
        node: &crate::catalog::node::local_name(),
        version_table: &version_table,
    };
    Spi::run(&capture::function_sql(&spec)).unwrap();
    Spi::run(&format!("REVOKE ALL ON FUNCTION {function}() FROM PUBLIC")).unwrap();
    let mut triggers = Vec::new();
    for (name, sql) in capture::trigger_sqls(&table, &spec, &peer.node_name) {
        Spi::run(&sql).unwrap();
        triggers.push(name);
    }
    Spi::run_with_args(
        "INSERT INTO synclink.link (link_id, relid, peer_name, peer_schema, peer_table, columns, \
             key_columns, initiator, row_type, capture_function, triggers, mode, excluded, \
             version_table, conflict, prefer_node, version_column) \
         VALUES ($1, $2::oid::regclass, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        &[
            id.into(),
            info.oid.into(),
            peer.name.as_str().into(),
            peer_schema.into(),
            peer_table.into(),
            columns.into(),
            key.to_vec().into(),
            initiator.into(),
            row_type.as_str().into(),
            function.as_str().into(),
            triggers.into(),
            mode.into(),
            req.exclude.clone().into(),
            version_table.as_str().into(),
            req.conflict.as_str().into(),
            req.prefer_node.clone().into(),
            req.version_column.clone().into(),
        ],
    )
    .unwrap();
    id
}

/// Row-level security on a link's version table: open to whoever holds the rights of the
/// linked table's owner (`relid`), whoever owns it now.
fn version_table_access(version_table: &str, relid: pg_sys::Oid) -> [String; 3] {
    [
        format!("ALTER TABLE {version_table} ENABLE ROW LEVEL SECURITY"),
        format!(
            "CREATE POLICY owner_of_the_table ON {version_table}\n\
             \x20   USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c\n\
             \x20                                   WHERE c.oid OPERATOR(pg_catalog.=) {relid}::pg_catalog.oid), 'USAGE'))",
            relid = relid.to_u32()
        ),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {version_table} TO PUBLIC"),
    ]
}

/// Remove exactly what create_local made.
fn drop_local(link: &Link) {
    crate::control::removal::removing(|| drop_objects(link))
}

fn drop_objects(link: &Link) {
    let table = crate::pg::spi::maybe_one::<String>(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[link.relid.into()],
    );
    if let Some(table) = table {
        for t in &link.triggers {
            Spi::run(&format!("DROP TRIGGER IF EXISTS {} ON {table}", ident(t))).unwrap();
        }
    }
    Spi::run(&format!(
        "DROP FUNCTION IF EXISTS {}()",
        link.capture_function
    ))
    .unwrap();
    Spi::run(&format!("DROP TYPE IF EXISTS {}", link.row_type)).unwrap();
    Spi::run(&format!("DROP TABLE IF EXISTS {}", link.version_table)).unwrap();
    // Open conflicts cannot be settled without the link: closed, not left open for ever.
    Spi::run_with_args(
        "UPDATE synclink.conflict SET outcome = 'unlinked', resolved_at = clock_timestamp() \
          WHERE link_id = $1 AND outcome = 'open'",
        &[link.id.into()],
    )
    .unwrap();
    Spi::run_with_args(
        "DELETE FROM synclink.link WHERE link_id = $1",
        &[link.id.into()],
    )
    .unwrap();
}

/// Ask the peer to act on its half. A connection failure becomes a clear error; an error the
/// peer raises (its table is missing, its columns differ…) reaches the user unchanged.
/// The peer's handler may answer; its reply comes back through RETURNING.
pub fn request(
    peer: &Peer,
    action: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, PeerError> {
    peer.check_foreign("request")?;
    let sql = format!(
        "INSERT INTO {} (from_node, action, body) VALUES ($1, $2, $3) RETURNING reply",
        peer.foreign("request")
    );
    let local = crate::catalog::node::local_name();
    let body = pgrx::JsonB(body);
    // In a subtransaction: callers that step over an unreachable peer carry on with SQL.
    match crate::pg::subxact::run(|| {
        Spi::connect_mut(|c| {
            c.update(
                sql.as_str(),
                None,
                &[local.as_str().into(), action.into(), body.into()],
            )
            .and_then(|t| t.first().get::<pgrx::JsonB>(1))
        })
    }) {
        Ok(r) => Ok(r.unwrap().map_or(serde_json::Value::Null, |j| j.0)),
        Err(f) if f.is_connection() => Err(peer::unreachable(&peer.name, f)),
        Err(f) => crate::pg::remote::reraise(f),
    }
}

/// The key rows are matched by: the given columns, which a unique index over NOT NULL
/// columns must cover exactly, or else the primary key.
fn choose_key(info: &TableInfo, key: Option<Vec<String>>) -> Result<Vec<String>, LinkError> {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return info
            .primary_key
            .clone()
            .ok_or_else(|| LinkError::NoPrimaryKey(info.display()));
    };
    check_columns(info, &key)?;
    if !info.unique_keys.iter().any(|k| same_set(k, &key)) {
        return Err(LinkError::KeyNotUnique {
            table: info.display(),
            key: join(&key, ", ", |c| ident(c)),
        });
    }
    Ok(key)
}

fn check_columns(info: &TableInfo, names: &[String]) -> Result<(), LinkError> {
    match names
        .iter()
        .find(|n| !info.columns.iter().any(|c| &c.wire.name == *n))
    {
        Some(n) => Err(LinkError::NoSuchColumn {
            column: n.clone(),
            table: info.display(),
        }),
        None => Ok(()),
    }
}

fn link_table(
    relid: pg_sys::Oid,
    peer_name: Option<&str>,
    mode: &str,
    key: Option<Vec<String>>,
    exclude: Vec<String>,
    copy: &str,
    conflict: (&str, Option<&str>),
) -> bool {
    crate::data::queue::check_mode(mode).or_raise();
    crate::reconcile::diff::check_copy(copy).or_raise();
    let peer = peer::resolve(peer_name).or_raise();
    let info = describe(relid);
    info.check_linkable().or_raise();
    let key = choose_key(&info, key).or_raise();
    info.check_key_travels(&key).or_raise();
    check_columns(&info, &exclude).or_raise();
    if let Some(k) = exclude.iter().find(|c| key.contains(c)) {
        raise(LinkError::ExcludedKey(k.clone()));
    }
    let local = crate::catalog::node::local_name();
    info.check_excluded(&exclude, &local).or_raise();
    let policy = Policy::parse(conflict.0, conflict.1, &local, &peer.node_name).or_raise();
    let sent: Vec<String> = info
        .wire_columns(&exclude)
        .into_iter()
        .map(|c| c.name)
        .collect();
    if let Some(vc) = conflict.1 {
        crate::reconcile::resolve::check_version_column(relid, vc, &sent).or_raise();
    }
    let (conflict, prefer_node, version_column) = policy.stored();
    if find(relid, &peer.name).is_some() {
        notice(&format!(
            "table {} is already linked with peer \"{}\", skipping",
            info.display(),
            peer.name
        ));
        return false;
    }
    let body = LinkRequest {
        schema: info.schema.clone(),
        table: info.name.clone(),
        columns: info.wire_columns(&exclude),
        key,
        initiator: local,
        from_schema: info.schema.clone(),
        from_table: info.name.clone(),
        mode: mode.into(),
        exclude,
        conflict: conflict.into(),
        prefer_node,
        version_column,
    };
    // Existing rows first, while neither side has its triggers yet: none of it is captured.
    crate::reconcile::diff::copy_for_link(
        &peer,
        &body.schema,
        &body.table,
        body.columns.iter().map(|c| c.name.clone()).collect(),
        body.key.clone(),
        copy,
    );
    // Links pair tables of the same name, so the peer's table is called as ours.
    create_local(&info, &peer, &body, (&body.schema, &body.table));
    request(&peer, "link", serde_json::to_value(&body).unwrap()).or_raise();
    true
}

/// Mirror a table with a peer, both directions. Returns false when it was already linked.
/// `key`: match rows by these columns instead of the primary key; `exclude`: columns neither
/// sent nor overwritten, each node keeping its own (a primary key that differs between the
/// nodes, say); `copy`: bring the rows already there together first; `conflict`: what happens
/// when both nodes change a row before either change arrives (crate::reconcile::resolve), with
/// `version_column` as the first thing last_write_wins compares.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)]
fn sync_link_table(
    tbl: Option<crate::pg::args::RegClass>,
    peer: default!(Option<&str>, "NULL"),
    mode: default!(Option<&str>, "'sync'"),
    key: default!(Option<Vec<Option<String>>>, "NULL"),
    exclude: default!(Option<Vec<Option<String>>>, "NULL"),
    copy: default!(Option<&str>, "'none'"),
    conflict: default!(Option<&str>, "'last_write_wins'"),
    version_column: default!(Option<&str>, "NULL"),
) -> bool {
    use crate::pg::args::{names, relation, required};
    const F: &str = "sync_link_table";
    link_table(
        relation(tbl, F, "tbl"),
        peer,
        required(mode, F, "mode"),
        names(key, F, "key"),
        names(exclude, F, "exclude").unwrap_or_default(),
        required(copy, F, "copy"),
        (required(conflict, F, "conflict"), version_column),
    )
}

/// Changes still queued for one link are never dropped quietly: refused, or with `discard`
/// removed and reported.
fn settle_queue(link: &Link, discard: bool) -> Result<(), LinkError> {
    let count = Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM synclink.outbox WHERE link_id = $1",
        &[link.id.into()],
    )
    .unwrap()
    .unwrap_or(0);
    if count == 0 {
        return Ok(());
    }
    let table = format!("{}.{}", ident(&link.peer_schema), ident(&link.peer_table));
    if !discard {
        return Err(LinkError::HasQueued {
            table,
            peer: link.peer_name.clone(),
            node: crate::catalog::node::local_name(),
            count,
        });
    }
    Spi::run_with_args(
        "DELETE FROM synclink.outbox WHERE link_id = $1",
        &[link.id.into()],
    )
    .unwrap();
    crate::pg::error::warning(
        &format!(
            "discarded {count} queued changes to {table} for peer \"{}\"",
            link.peer_name
        ),
        "Compare the two tables before linking them again.",
    );
    Ok(())
}

/// The columns and key a link with `peer` compares, if the table is linked with it.
pub fn columns_and_key(relid: pg_sys::Oid, peer: &str) -> Option<(Vec<String>, Vec<String>)> {
    let link = find(relid, peer)?;
    Spi::get_two_with_args::<Vec<String>, Vec<String>>(
        "SELECT columns, key_columns FROM synclink.link WHERE link_id = $1",
        &[link.id.into()],
    )
    .ok()
    .and_then(|(c, k)| Some((c?, k?)))
}

/// Undo a link on the peer and here. With `tolerate_unreachable`, a peer that cannot be
/// reached is warned about and only this node's half is removed.
pub fn unlink_by_id(id: i32, tolerate_unreachable: bool, discard: bool) {
    let link = load("link_id = $1", vec![id.into()]).expect("link exists");
    let peer = peer::find(&link.peer_name).expect("link has its peer");
    settle_queue(&link, discard).or_raise();
    let body = UnlinkRequest {
        schema: link.peer_schema.clone(),
        table: link.peer_table.clone(),
        discard_queued: discard,
    };
    for seq in crate::control::sequence::shared_for_table(link.relid, &link.peer_name) {
        crate::control::sequence::unshare_by_seq(seq, tolerate_unreachable);
    }
    match request(&peer, "unlink", serde_json::to_value(body).unwrap()) {
        Ok(_) => {}
        // Damaged here, the peer cannot be asked, now or later: this half goes regardless.
        Err(e)
            if (tolerate_unreachable && Peer::tolerable(&e))
                || matches!(e, PeerError::Damaged { .. }) =>
        {
            crate::pg::error::warning(
                &format!("{e}; its half of the link to this node is left in place"),
                "Run SELECT sync_unlink_table(...) on the peer once it is back.",
            )
        }
        Err(e) => raise(e),
    }
    drop_local(&link);
    // Dropping the triggers waited for writers still inside a transaction; a change one of
    // them queued meanwhile is settled now, or the whole unlink (the peer's half too) fails.
    settle_queue(&link, discard).or_raise();
}

fn unlink_table(relid: pg_sys::Oid, peer_name: Option<&str>, discard: bool) -> bool {
    let peer = peer::resolve(peer_name).or_raise();
    let link = find(relid, &peer.name).unwrap_or_else(|| {
        raise(LinkError::NotLinked {
            table: describe(relid).display(),
            peer: peer.name.clone(),
        })
    });
    unlink_by_id(link.id, false, discard);
    true
}

/// Stop mirroring a table with a peer, on both nodes. The table and its rows stay as they are.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn sync_unlink_table(
    tbl: Option<crate::pg::args::RegClass>,
    peer: default!(Option<&str>, "NULL"),
    discard_queued: default!(Option<bool>, false),
) -> bool {
    const F: &str = "sync_unlink_table";
    unlink_table(
        crate::pg::args::relation(tbl, F, "tbl"),
        peer,
        crate::pg::args::required(discard_queued, F, "discard_queued"),
    )
}

fn handle_link(from: &Peer, req: LinkRequest) -> Result<(), LinkError> {
    let node = crate::catalog::node::local_name();
    let display = format!("{}.{}", ident(&req.schema), ident(&req.table));
    let oid = lookup(&req.schema, &req.table).ok_or_else(|| LinkError::MissingTable {
        table: display.clone(),
        node: node.clone(),
    })?;
    // Linking sends this table's rows to the peer and applies the peer's changes to it.
    crate::pg::privilege::peer_may(oid, crate::pg::privilege::READ_WRITE, "link").or_raise();
    let info = describe(oid);
    info.check_linkable()?;
    info.check_key_travels(&req.key)?;
    info.check_excluded(&req.exclude, &node)?;
    let kept: Vec<Column> = info
        .columns
        .iter()
        .filter(|c| !req.exclude.contains(&c.wire.name))
        .cloned()
        .collect();
    let differences = column_differences(&kept, &req.columns);
    if !differences.is_empty() {
        return Err(LinkError::ColumnMismatch {
            table: display,
            node,
            differences,
        });
    }
    if let Some(vc) = &req.version_column {
        let sent: Vec<String> = req.columns.iter().map(|c| c.name.clone()).collect();
        if let Err(e) = crate::reconcile::resolve::check_version_column(oid, vc, &sent) {
            raise(e);
        }
    }
    if !info.unique_keys.iter().any(|k| same_set(k, &req.key)) {
        return Err(LinkError::KeyMismatch {
            table: display,
            node,
            key: req.key.join(", "),
        });
    }
    if let Some(existing) = find(oid, &from.name) {
        let (cols, key) = Spi::get_two_with_args::<Vec<String>, Vec<String>>(
            "SELECT columns, key_columns FROM synclink.link WHERE link_id = $1",
            &[existing.id.into()],
        )
        .unwrap();
        let wanted: Vec<String> = req.columns.iter().map(|c| c.name.clone()).collect();
        if cols.as_deref() == Some(&wanted[..]) && key.as_deref() == Some(&req.key[..]) {
            return Ok(());
        }
        return Err(LinkError::LinkedDifferently(display, node));
    }
    create_local(&info, from, &req, (&req.from_schema, &req.from_table));
    Ok(())
}

fn handle_unlink(from: &Peer, req: UnlinkRequest) -> Result<(), LinkError> {
    if let Some(oid) = lookup(&req.schema, &req.table) {
        if let Some(link) = find(oid, &from.name) {
            crate::pg::privilege::peer_may(oid, crate::pg::privilege::READ_WRITE, "unlink")
                .or_raise();
            for seq in crate::control::sequence::shared_for_table(oid, &from.name) {
                crate::control::sequence::restore_local_only(seq);
            }
            settle_queue(&link, req.discard_queued)?;
            drop_local(&link);
            settle_queue(&link, req.discard_queued)?;
        }
    }
    Ok(())
}

/// Carry out a peer's request; called by the trigger on synclink.request.
#[pg_extern(schema = "synclink")]
#[search_path(pg_catalog, pg_temp)]
fn handle_request(from_node: &str, action: &str, body: pgrx::JsonB) -> Option<pgrx::JsonB> {
    let from = peer::find_by_node(from_node)
        .unwrap_or_else(|| raise(PeerError::UnknownNode(from_node.into())));
    from.check_inbound().or_raise();
    match action {
        "link" => {
            let req: LinkRequest = serde_json::from_value(body.0)
                .unwrap_or_else(|_| raise(LinkError::BadRequest(action.into())));
            handle_link(&from, req).or_raise();
            None
        }
        "unlink" => {
            let req: UnlinkRequest = serde_json::from_value(body.0)
                .unwrap_or_else(|_| raise(LinkError::BadRequest(action.into())));
            handle_unlink(&from, req).or_raise();
            None
        }
        "diff" => Some(pgrx::JsonB(crate::reconcile::diff::handle_request(
            &from, body.0,
        ))),
        "resolve" => Some(pgrx::JsonB(crate::reconcile::resolve::handle_request(
            &from, body.0,
        ))),
        "share_sequence" | "unshare_sequence" => Some(pgrx::JsonB(
            crate::control::sequence::handle_request(&from, action, body.0),
        )),
        other => raise(LinkError::BadRequest(other.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, generated: bool) -> Column {
        let base = ty.split('(').next().unwrap().to_string();
        Column {
            wire: WireColumn {
                name: name.into(),
                type_name: ty.into(),
                base_type: base,
                detail: None,
            },
            generated,
            not_null: false,
            has_default: false,
        }
    }

    #[test]
    fn identical_columns_in_another_order_match() {
        let local = vec![col("id", "bigint", false), col("name", "text", false)];
        let wire = vec![local[1].wire.clone(), local[0].wire.clone()];
        assert!(column_differences(&local, &wire).is_empty());
    }

    #[test]
    fn text_and_varchar_are_compatible_but_int_and_text_are_not() {
        let local = vec![
            col("name", "character varying(255)", false),
            col("price", "integer", false),
        ];
        let wire = vec![
            col("name", "text", false).wire,
            col("price", "text", false).wire,
        ];
        let d = column_differences(&local, &wire);
        assert_eq!(
            d,
            vec!["column \"price\" is integer here but text on the other side".to_string()]
        );
    }

    #[test]
    fn every_difference_is_reported() {
        let local = vec![
            col("id", "bigint", false),
            col("extra", "text", false),
            col("total", "numeric", true),
        ];
        let wire = vec![
            col("id", "bigint", false).wire,
            col("gone", "text", false).wire,
            col("total", "numeric", false).wire,
        ];
        let d = column_differences(&local, &wire);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d.iter().any(|x| x.contains("\"gone\" is missing")));
        assert!(d
            .iter()
            .any(|x| x.contains("\"total\" is generated on one side only")));
        assert!(d.iter().any(|x| x.contains("\"extra\" exists only here")));
    }
}
