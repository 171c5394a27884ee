//! Linking a table with a peer: validation on both sides, the objects each side makes
//! (row type, capture function, statement triggers), and the request that makes the peer set
//! up its half so one call links both nodes.

use crate::pg::error::SqlError;
use crate::pg::spi::need;
use crate::pg::sql::{ident, qualified};
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
    #[error("table {0} is not linked")]
    NotLinkedAtAll(String),
    #[error("table {table} is already linked differently on node \"{node}\"")]
    LinkedDifferently {
        table: String,
        node: String,
        differences: Vec<String>,
    },
    #[error("table {table} is already linked with peer \"{peer}\" in another way")]
    LinkedWithOtherOptions {
        table: String,
        peer: String,
        differences: Vec<String>,
    },
    #[error("unknown direction {}", crate::pg::args::shown(.0))]
    BadDirection(String),
    #[error("peer \"{0}\" runs a synclink that cannot link a table one way")]
    PeerCannotLinkOneWay(String),
    #[error("table {table} prefers node \"{preferred}\" on node \"{node}\", not \"{asked}\"")]
    OtherPreferredNode {
        table: String,
        node: String,
        preferred: String,
        asked: String,
    },
    #[error("table {table} is linked with peer \"{peer}\" by another key ({key})")]
    KeyDiffersFromOtherLinks {
        table: String,
        peer: String,
        key: String,
    },
    #[error("table {table} is linked with peer \"{peer}\" with other columns ({columns})")]
    ColumnsDifferFromOtherLinks {
        table: String,
        peer: String,
        columns: String,
        excluded: String,
    },
    #[error("copy => '{copy}' would bring rows against the link's direction ({direction})")]
    CopyAgainstDirection {
        copy: String,
        direction: &'static str,
    },
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
            LinkError::NotLinked { .. } | LinkError::NotLinkedAtAll(_) => ERRCODE_UNDEFINED_OBJECT,
            LinkError::LinkedDifferently { .. } | LinkError::LinkedWithOtherOptions { .. } => {
                ERRCODE_DUPLICATE_OBJECT
            }
            LinkError::BadDirection(_) | LinkError::CopyAgainstDirection { .. } => {
                ERRCODE_INVALID_PARAMETER_VALUE
            }
            LinkError::PeerCannotLinkOneWay(_)
            | LinkError::KeyDiffersFromOtherLinks { .. }
            | LinkError::OtherPreferredNode { .. }
            | LinkError::ColumnsDifferFromOtherLinks { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
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
            LinkError::ColumnMismatch { differences, .. }
            | LinkError::LinkedWithOtherOptions { differences, .. }
            | LinkError::LinkedDifferently { differences, .. } => Some(differences.join("; ")),
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
            LinkError::NotLinked { .. } | LinkError::NotLinkedAtAll(_) => {
                "sync_status lists the linked tables.".into()
            }
            LinkError::LinkedDifferently { .. } => "Run sync_unlink_table() for it first, then link again.".into(),
            LinkError::LinkedWithOtherOptions { table, peer, .. } => format!(
                "The link as it is keeps working. To change it: SELECT sync_unlink_table({}, {}), then link it again with the options wanted.",
                crate::pg::sql::literal(table),
                crate::pg::sql::literal(peer)
            ),
            LinkError::ColumnsDifferFromOtherLinks { excluded, .. } => format!("A table's changes are captured once for all its links, as one set of columns: link it with exclude => '{{{excluded}}}' as its other links."),
            LinkError::OtherPreferredNode { preferred, .. } => format!("Wherever a table travels, one node can be the one whose changes win: link it with the policy that prefers \"{preferred}\" (prefer_local or prefer_peer, whichever names it) or with last_write_wins, whose links follow that node's preference too."),
            LinkError::KeyDiffersFromOtherLinks { key, .. } => format!("The links of one table match rows by one key, so that a change passed on from one peer to another names the same row: link it with key => '{{{key}}}' (the default is the primary key)."),
            LinkError::CopyAgainstDirection { .. } => "A push link copies with copy => 'to_peer', a pull link with copy => 'from_peer' (or 'none').".into(),
            LinkError::BadDirection(_) => "direction => 'both' (the default), 'push' (this node's changes go to the peer, the peer's stay there) or 'pull' (the peer's changes come here, this node's stay here).".into(),
            LinkError::PeerCannotLinkOneWay(_) => "Update synclink on the peer (ALTER EXTENSION synclink UPDATE), or link both ways.".into(),
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

crate::pg::error::reported_as_sql_error!(LinkError);

/// Which way a link carries changes, seen from this node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    Both,
    /// This node's changes go to the peer; the peer's are not sent here.
    Push,
    /// The peer's changes come here; this node's are not sent.
    Pull,
}

impl Direction {
    pub fn parse(text: &str) -> Result<Direction, LinkError> {
        match text {
            "both" => Ok(Direction::Both),
            "push" => Ok(Direction::Push),
            "pull" => Ok(Direction::Pull),
            other => Err(LinkError::BadDirection(other.into())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Both => "both",
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }

    /// The same link seen from the peer.
    pub fn mirrored(self) -> Direction {
        match self {
            Direction::Both => Direction::Both,
            Direction::Push => Direction::Pull,
            Direction::Pull => Direction::Push,
        }
    }

    /// Are this node's changes captured and sent?
    pub fn sends(self) -> bool {
        self != Direction::Pull
    }

    /// Does `copy => …` of sync_link_table (none, missing, to_peer, from_peer) bring rows
    /// only the way this link carries changes?
    pub fn allows_copy(self, copy: &str) -> bool {
        match self {
            Direction::Both => true,
            Direction::Push => matches!(copy, "none" | "to_peer"),
            Direction::Pull => matches!(copy, "none" | "from_peer"),
        }
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
    pub fn check_excluded(&self, excluded: &[String], node: &str) -> Result<(), LinkError> {
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
pub fn describe(oid: pg_sys::Oid) -> crate::pg::error::Result<TableInfo> {
    Spi::connect(|c| {
        let head = c
            .select(
                "SELECT n.nspname::text, cl.relname::text, cl.relkind, cl.relpersistence, \
                        cl.relispartition, cl.relrowsecurity FROM pg_class cl \
                 JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE cl.oid = $1",
                None,
                &[oid.into()],
            )?
            .next()
            .ok_or(crate::pg::args::ArgError::NoRelation(oid.to_u32()))?;
        let schema: String = need(&head, 1, "pg_namespace.nspname")?;
        let name: String = need(&head, 2, "pg_class.relname")?;
        let kind: i8 = need(&head, 3, "pg_class.relkind")?;
        let persistence: i8 = need(&head, 4, "pg_class.relpersistence")?;
        let partition: bool = need(&head, 5, "pg_class.relispartition")?;
        let row_security: bool = need(&head, 6, "pg_class.relrowsecurity")?;
        let columns = c
            .select(
                "SELECT attname::text, format_type(atttypid, atttypmod), format_type(atttypid, NULL), \
                        attgenerated <> '', attnotnull, atthasdef OR attidentity <> '', atttypid, atttypmod \
                   FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                None,
                &[oid.into()],
            )?
            .map(|r| {
                Ok(Column {
                    wire: WireColumn {
                        name: need(&r, 1, "pg_attribute.attname")?,
                        type_name: need(&r, 2, "a column's type")?,
                        base_type: need(&r, 3, "a column's type")?,
                        detail: Some(crate::catalog::types::detail(
                            need(&r, 7, "pg_attribute.atttypid")?,
                            need(&r, 8, "pg_attribute.atttypmod")?,
                        )?),
                    },
                    generated: need(&r, 4, "pg_attribute.attgenerated")?,
                    not_null: need(&r, 5, "pg_attribute.attnotnull")?,
                    has_default: need(&r, 6, "pg_attribute.atthasdef")?,
                })
            })
            .collect::<crate::pg::error::Result<Vec<Column>>>()?;
        let mut primary_key = None;
        let mut unique_keys = Vec::new();
        let keys = c.select(
            "SELECT i.indisprimary, array_agg(a.attname::text ORDER BY k.ord) \
             FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
               AND i.indisvalid AND i.indimmediate \
             GROUP BY i.indexrelid, i.indisprimary \
             HAVING bool_and(a.attnotnull)",
            None,
            &[oid.into()],
        )?;
        for r in keys {
            let is_pk: bool = need(&r, 1, "pg_index.indisprimary")?;
            let cols: Vec<String> = need(&r, 2, "an index's columns")?;
            if is_pk {
                primary_key = Some(cols.clone());
            }
            unique_keys.push(cols);
        }
        Ok(TableInfo {
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
        })
    })
}

pub fn lookup(schema: &str, table: &str) -> Result<Option<pg_sys::Oid>, pgrx::spi::SpiError> {
    crate::pg::spi::maybe_one::<pg_sys::Oid>(
        "SELECT to_regclass(format('%I.%I', $1::text, $2::text))::oid",
        &[schema.into(), table.into()],
    )
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

pub fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
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
    pub direction: Direction,
}

fn load(
    where_sql: &str,
    args: Vec<pgrx::datum::DatumWithOid>,
) -> crate::pg::error::Result<Option<Link>> {
    // direction is read through to_jsonb: this library runs against an older catalog between
    // its installation and ALTER EXTENSION UPDATE, and links made then carried changes both
    // ways.
    Spi::connect(|c| {
        c.select(
            &format!(
                "SELECT link_id, relid::oid, peer_name, peer_schema, peer_table, row_type, \
                        capture_function, triggers, version_table, \
                        coalesce(to_jsonb(l) ->> 'direction', 'both') \
                   FROM synclink.link l WHERE {where_sql}"
            ),
            None,
            &args,
        )?
        .next()
        .map(|r| {
            Ok(Link {
                id: need(&r, 1, "synclink.link.link_id")?,
                relid: need(&r, 2, "synclink.link.relid")?,
                peer_name: need(&r, 3, "synclink.link.peer_name")?,
                peer_schema: need(&r, 4, "synclink.link.peer_schema")?,
                peer_table: need(&r, 5, "synclink.link.peer_table")?,
                row_type: need(&r, 6, "synclink.link.row_type")?,
                capture_function: need(&r, 7, "synclink.link.capture_function")?,
                triggers: need(&r, 8, "synclink.link.triggers")?,
                version_table: need(&r, 9, "synclink.link.version_table")?,
                direction: Direction::parse(&need::<String>(&r, 10, "synclink.link.direction")?)?,
            })
        })
        .transpose()
    })
}

pub fn by_id(id: i32) -> crate::pg::error::Result<Option<Link>> {
    load("link_id = $1", vec![id.into()])
}

pub fn find(relid: pg_sys::Oid, peer: &str) -> crate::pg::error::Result<Option<Link>> {
    load(
        "relid = $1 AND peer_name = $2",
        vec![relid.into(), peer.into()],
    )
}

/// The columns and key a link with `peer` compares, if the table is linked with it.
pub fn columns_and_key(
    relid: pg_sys::Oid,
    peer: &str,
) -> crate::pg::error::Result<Option<(Vec<String>, Vec<String>)>> {
    let Some(link) = find(relid, peer)? else {
        return Ok(None);
    };
    let found = Spi::get_two_with_args::<Vec<String>, Vec<String>>(
        "SELECT columns, key_columns FROM synclink.link WHERE link_id = $1",
        &[link.id.into()],
    );
    match found {
        Ok((Some(columns), Some(key))) => Ok(Some((columns, key))),
        // No row: the link was removed since it was found, so the table is not linked.
        Ok(_) | Err(pgrx::spi::SpiError::InvalidPosition) => Ok(None),
        Err(e) => Err(e.into()),
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
    fn a_one_way_link_is_the_other_way_round_on_the_peer() {
        for (text, sends, receives) in [
            ("both", true, true),
            ("push", true, false),
            ("pull", false, true),
        ] {
            let d = Direction::parse(text).unwrap();
            assert_eq!(d.as_str(), text);
            // the peer sends what this node receives
            assert_eq!((d.sends(), d.mirrored().sends()), (sends, receives));
            assert_eq!(d.mirrored().mirrored(), d);
        }
        assert!(matches!(
            Direction::parse("Push"),
            Err(LinkError::BadDirection(_))
        ));
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
