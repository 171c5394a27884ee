//! Objects as the statements that make them again in another database: types (enums, domains,
//! composites), sequences, tables with their columns, defaults, generated and identity
//! columns, NOT NULL and CHECK, their primary, unique and exclusion keys, indexes, foreign
//! keys, functions and procedures, views and triggers.
//!
//! The text comes from PostgreSQL's own deparsers (format_type, pg_get_expr,
//! pg_get_constraintdef, pg_get_indexdef, pg_get_viewdef, pg_get_functiondef,
//! pg_get_triggerdef), read under search_path pg_catalog, so every name outside pg_catalog is
//! written schema-qualified, as pg_dump writes them. The same query makes an object's
//! statement on the node that has it and, for the object of that name on the other node,
//! the statement that would make it: equal texts mean the same object.

use crate::pg::spi::need;
use pgrx::prelude::*;
use serde::{Deserialize, Serialize};

/// One statement of a definition, with what it makes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ddl {
    pub kind: Kind,
    /// the object's name as a report shows it: schema-qualified; a function with its argument
    /// types; a key, foreign key or trigger after its table's name
    pub name: String,
    pub sql: String,
    /// a key, foreign key or trigger: its table, and its own name there; a sequence moved past
    /// a column's values: the column's table and name; a sequence moved to a value: the value
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub member: Option<String>,
    /// a SECURITY DEFINER function: the role it runs as here (made elsewhere by another role,
    /// it would run as that one)
    #[serde(default)]
    pub runs_as: Option<String>,
}

/// What a statement makes, in the order objects are made: a table's keys and indexes after its
/// rows (loading into a table without indexes is faster), foreign keys once every table has
/// its rows, functions before the views that may call them, triggers last so that loading rows
/// fires none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Schema,
    Type,
    Sequence,
    Table,
    /// a sequence made for a column (serial) becoming the column's: after the table
    SequenceOwner,
    Key,
    Index,
    ForeignKey,
    /// a sequence moved past the highest value its column holds once rows are in
    SequenceValue,
    Function,
    View,
    Trigger,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Schema => "schema",
            Kind::Type => "type",
            Kind::Sequence => "sequence",
            Kind::Table => "table",
            Kind::SequenceOwner => "sequence owner",
            Kind::Key => "key",
            Kind::Index => "index",
            Kind::ForeignKey => "foreign key",
            Kind::SequenceValue => "sequence",
            Kind::Function => "function",
            Kind::View => "view",
            Kind::Trigger => "trigger",
        }
    }
}

/// The user-defined types that the columns of the tables `$1` and the types `$2` need, each
/// once, those they need first: an element type before its array, a domain's base type before
/// the domain, a composite's attribute types before it. Types of extensions come with their
/// extension and are left out.
const NEEDED_TYPES: &str = r#"
WITH RECURSIVE needed(oid, depth) AS (
    SELECT s.oid, 0
      FROM (SELECT a.atttypid
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = ANY ($1) AND a.attnum > 0 AND NOT a.attisdropped
            UNION ALL
            SELECT pg_catalog.unnest($2::pg_catalog.oid[])) s(oid)
    UNION ALL
    SELECT d.oid, n.depth + 1
      FROM needed n
      JOIN pg_catalog.pg_type t ON t.oid = n.oid
     CROSS JOIN LATERAL (
           SELECT t.typelem WHERE t.typcategory = 'A' AND t.typelem <> 0
           UNION ALL
           SELECT t.typbasetype WHERE t.typtype = 'd'
           UNION ALL
           SELECT a.atttypid
             FROM pg_catalog.pg_attribute a
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid AND c.relkind = 'c'
            WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
         ) d(oid)
     WHERE n.depth < 32
)
SELECT t.oid
  FROM (SELECT n.oid, pg_catalog.max(n.depth) AS depth FROM needed n GROUP BY n.oid) n
  JOIN pg_catalog.pg_type t ON t.oid = n.oid
  LEFT JOIN pg_catalog.pg_class c ON c.oid = t.typrelid
 WHERE t.typnamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace, 'information_schema'::pg_catalog.regnamespace)
   AND (t.typtype IN ('e', 'd') OR t.typtype = 'c' AND c.relkind = 'c')
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend x
                    WHERE x.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND x.objid = t.oid
                      AND x.deptype = 'e')
 ORDER BY n.depth DESC, t.oid::pg_catalog.regtype::text"#;

/// CREATE TYPE / CREATE DOMAIN for the types `$1`, in that order.
const TYPES: &str = r#"
SELECT t.oid::pg_catalog.regtype::text,
       CASE t.typtype
       WHEN 'e' THEN pg_catalog.format('CREATE TYPE %s AS ENUM (%s)', t.oid::pg_catalog.regtype,
                (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                   FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid))
       WHEN 'd' THEN pg_catalog.format('CREATE DOMAIN %s AS %s', t.oid::pg_catalog.regtype,
                                       pg_catalog.format_type(t.typbasetype, t.typtypmod))
             || CASE WHEN t.typcollation <> 0 AND t.typcollation <> b.typcollation
                     THEN ' COLLATE ' || t.typcollation::pg_catalog.regcollation::text ELSE '' END
             || coalesce(' DEFAULT ' || pg_catalog.pg_get_expr(t.typdefaultbin, 0), '')
             || CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END
             || coalesce((SELECT pg_catalog.string_agg(pg_catalog.format(' CONSTRAINT %I %s', k.conname,
                                                                     pg_catalog.pg_get_constraintdef(k.oid)), '' ORDER BY k.conname)
                            FROM pg_catalog.pg_constraint k WHERE k.contypid = t.oid AND k.contype = 'c'), '')
       ELSE pg_catalog.format('CREATE TYPE %s AS (%s)', t.oid::pg_catalog.regtype,
                (SELECT pg_catalog.string_agg(pg_catalog.format('%I %s', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod))
                        || CASE WHEN a.attcollation <> 0 AND a.attcollation <> at.typcollation
                                THEN ' COLLATE ' || a.attcollation::pg_catalog.regcollation::text ELSE '' END,
                        ', ' ORDER BY a.attnum)
                   FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type at ON at.oid = a.atttypid
                  WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped))
       END,
       NULL::text, NULL::text
  FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY u(oid, n)
  JOIN pg_catalog.pg_type t ON t.oid = u.oid
  LEFT JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype
 ORDER BY u.n"#;

/// CREATE SEQUENCE for the sequences `$1`, with their options.
/// CREATE SCHEMA for the schemas `$1` (owned by the role that makes them).
const SCHEMAS: &str = r#"
SELECT pg_catalog.quote_ident(n.nspname), pg_catalog.format('CREATE SCHEMA %I', n.nspname), NULL::text, NULL::text
  FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY u(oid, k)
  JOIN pg_catalog.pg_namespace n ON n.oid = u.oid
 ORDER BY u.k"#;

const SEQUENCES: &str = r#"
SELECT s.oid::pg_catalog.regclass::text,
       pg_catalog.format('CREATE SEQUENCE %s AS %s INCREMENT BY %s MINVALUE %s MAXVALUE %s START WITH %s CACHE %s%s',
                         s.oid::pg_catalog.regclass, pg_catalog.format_type(q.seqtypid, NULL),
                         q.seqincrement, q.seqmin, q.seqmax, q.seqstart, q.seqcache,
                         CASE WHEN q.seqcycle THEN ' CYCLE' ELSE ' NO CYCLE' END),
       NULL::text, NULL::text
  FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY u(oid, n)
  JOIN pg_catalog.pg_class s ON s.oid = u.oid
  JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid
 ORDER BY u.n"#;

/// The sequences the columns of the tables `$1` own (serial columns; an identity column's
/// sequence comes with the column), and the statement that makes each its column's.
const OWNED_SEQUENCES: &str = r#"
SELECT s.oid,
       pg_catalog.format('ALTER SEQUENCE %s OWNED BY %s.%I', s.oid::pg_catalog.regclass,
                         d.refobjid::pg_catalog.regclass, a.attname)
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.refobjid = ANY ($1) AND d.deptype = 'a'
 ORDER BY s.oid::pg_catalog.regclass::text"#;

/// CREATE TABLE for the tables `$1`: their columns in order and their CHECK constraints
/// (those inherited from a parent left out); keys and indexes come apart.
const TABLES: &str = r#"
SELECT c.oid::pg_catalog.regclass::text,
       pg_catalog.format('CREATE %sTABLE %s (%s)%s',
         CASE c.relpersistence WHEN 'u' THEN 'UNLOGGED ' ELSE '' END,
         c.oid::pg_catalog.regclass,
         pg_catalog.concat_ws(', ',
           (SELECT pg_catalog.string_agg(
                     pg_catalog.format('%I %s', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod))
                     || CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                             THEN ' COLLATE ' || a.attcollation::pg_catalog.regcollation::text ELSE '' END
                     || CASE WHEN a.attgenerated = 's'
                             THEN pg_catalog.format(' GENERATED ALWAYS AS (%s) STORED', pg_catalog.pg_get_expr(d.adbin, d.adrelid))
                             WHEN d.adbin IS NOT NULL
                             THEN ' DEFAULT ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid) ELSE '' END
                     || CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY'
                                           WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END
                     || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                     ', ' ORDER BY a.attnum)
              FROM pg_catalog.pg_attribute a
              JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
              LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
           (SELECT pg_catalog.string_agg(pg_catalog.format('CONSTRAINT %I %s', k.conname, pg_catalog.pg_get_constraintdef(k.oid)),
                                         ', ' ORDER BY k.conname)
              FROM pg_catalog.pg_constraint k
             WHERE k.conrelid = c.oid AND k.contype = 'c' AND k.conislocal)),
         coalesce(' WITH (' || pg_catalog.array_to_string(c.reloptions, ', ') || ')', '')),
       NULL::text, NULL::text
  FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY u(oid, n)
  JOIN pg_catalog.pg_class c ON c.oid = u.oid
 ORDER BY u.n"#;

/// The primary, unique and exclusion keys (`$2` = 'pux') or the foreign keys (`$2` = 'f') of
/// the tables `$1`, primary keys first.
const CONSTRAINTS_OF: &str = r#"
SELECT k.oid FROM pg_catalog.pg_constraint k
 WHERE k.conrelid = ANY ($1) AND pg_catalog.strpos($2, k.contype::text) > 0
 ORDER BY k.conrelid::pg_catalog.regclass::text, k.contype <> 'p', k.conname"#;

/// ALTER TABLE … ADD CONSTRAINT for the constraints `$1`.
const CONSTRAINTS: &str = r#"
SELECT pg_catalog.format('%s.%I', k.conrelid::pg_catalog.regclass, k.conname),
       pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', k.conrelid::pg_catalog.regclass,
                         k.conname, pg_catalog.pg_get_constraintdef(k.oid)),
       k.conrelid::pg_catalog.regclass::text, k.conname::text
  FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY u(oid, n)
  JOIN pg_catalog.pg_constraint k ON k.oid = u.oid
 ORDER BY u.n"#;

/// The indexes of the tables `$1` that no constraint made.
const INDEXES_OF: &str = r#"
SELECT i.indexrelid FROM pg_catalog.pg_index i
 WHERE i.indrelid = ANY ($1)
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k
                    WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                      AND k.contype IN ('p', 'u', 'x'))
 ORDER BY i.indexrelid::pg_catalog.regclass::text"#;

/// CREATE INDEX for the indexes `$1`.
const INDEXES: &str = r#"
SELECT u.oid::pg_catalog.regclass::text, pg_catalog.pg_get_indexdef(u.oid), NULL::text, NULL::text
  FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY u(oid, n)
  JOIN pg_catalog.pg_index i ON i.indexrelid = u.oid
 ORDER BY u.n"#;

/// CREATE FUNCTION / PROCEDURE for the functions `$1` (not aggregates).
const FUNCTIONS: &str = r#"
SELECT p.oid::pg_catalog.regprocedure::text, pg_catalog.pg_get_functiondef(p.oid), NULL::text, NULL::text,
       CASE WHEN p.prosecdef THEN (SELECT r.rolname::text FROM pg_catalog.pg_roles r WHERE r.oid = p.proowner) END
  FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY u(oid, n)
  JOIN pg_catalog.pg_proc p ON p.oid = u.oid
 WHERE p.prokind IN ('f', 'p')
 ORDER BY u.n"#;

/// CREATE VIEW for the views `$1`, with their options.
const VIEWS: &str = r#"
SELECT c.oid::pg_catalog.regclass::text,
       pg_catalog.format('CREATE VIEW %s%s AS%s', c.oid::pg_catalog.regclass,
                         coalesce(' WITH (' || pg_catalog.array_to_string(c.reloptions, ', ') || ')', ''),
                         pg_catalog.rtrim(pg_catalog.pg_get_viewdef(c.oid), ';')),
       NULL::text, NULL::text
  FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY u(oid, n)
  JOIN pg_catalog.pg_class c ON c.oid = u.oid AND c.relkind = 'v'
 ORDER BY u.n"#;

/// The triggers of the tables `$1` that a user made (not a constraint's, not synclink's).
const TRIGGERS_OF: &str = r#"
SELECT g.oid FROM pg_catalog.pg_trigger g
  JOIN pg_catalog.pg_proc p ON p.oid = g.tgfoid
 WHERE g.tgrelid = ANY ($1) AND NOT g.tgisinternal
   AND p.pronamespace <> 'synclink'::pg_catalog.regnamespace
 ORDER BY g.tgrelid::pg_catalog.regclass::text, g.tgname"#;

/// CREATE TRIGGER for the triggers `$1`.
const TRIGGERS: &str = r#"
SELECT pg_catalog.format('%s.%I', g.tgrelid::pg_catalog.regclass, g.tgname),
       pg_catalog.pg_get_triggerdef(g.oid),
       g.tgrelid::pg_catalog.regclass::text, g.tgname::text
  FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY u(oid, n)
  JOIN pg_catalog.pg_trigger g ON g.oid = u.oid
 ORDER BY u.n"#;

/// The statements that make the objects `oids` of `kind` (in that order).
pub fn statements(kind: Kind, oids: &[pg_sys::Oid]) -> crate::pg::error::Result<Vec<Ddl>> {
    let sql = match kind {
        Kind::Schema => SCHEMAS,
        Kind::Type => TYPES,
        Kind::Sequence => SEQUENCES,
        Kind::Table => TABLES,
        Kind::Key | Kind::ForeignKey => CONSTRAINTS,
        Kind::Index => INDEXES,
        Kind::Function => FUNCTIONS,
        Kind::View => VIEWS,
        Kind::Trigger => TRIGGERS,
        Kind::SequenceOwner | Kind::SequenceValue => return Ok(Vec::new()),
    };
    Spi::connect(|c| {
        c.select(sql, None, &[oids.to_vec().into()])?
            .map(|r| {
                Ok(Ddl {
                    kind,
                    name: need(&r, 1, "name of an object")?,
                    sql: need(&r, 2, "definition of an object")?,
                    table: r.get(3)?,
                    member: r.get(4)?,
                    runs_as: if kind == Kind::Function {
                        r.get(5)?
                    } else {
                        None
                    },
                })
            })
            .collect()
    })
}

/// The oids a query over `$1` (and `$2`) yields.
fn oids(
    sql: &str,
    args: Vec<pgrx::datum::DatumWithOid>,
) -> crate::pg::error::Result<Vec<pg_sys::Oid>> {
    Ok(crate::pg::spi::column::<pg_sys::Oid>(sql, &args)?)
}

/// The user-defined types the tables `tables` and the types `types` need, in the order they
/// can be made.
pub fn needed_types(
    tables: &[pg_sys::Oid],
    types: &[pg_sys::Oid],
) -> crate::pg::error::Result<Vec<pg_sys::Oid>> {
    oids(
        NEEDED_TYPES,
        vec![tables.to_vec().into(), types.to_vec().into()],
    )
}

/// The keys ('pux') or foreign keys ('f') of `tables`.
pub fn constraints_of(
    tables: &[pg_sys::Oid],
    kinds: &str,
) -> crate::pg::error::Result<Vec<pg_sys::Oid>> {
    oids(CONSTRAINTS_OF, vec![tables.to_vec().into(), kinds.into()])
}

pub fn indexes_of(tables: &[pg_sys::Oid]) -> crate::pg::error::Result<Vec<pg_sys::Oid>> {
    oids(INDEXES_OF, vec![tables.to_vec().into()])
}

pub fn triggers_of(tables: &[pg_sys::Oid]) -> crate::pg::error::Result<Vec<pg_sys::Oid>> {
    oids(TRIGGERS_OF, vec![tables.to_vec().into()])
}

/// The sequences the columns of `tables` own, with the statement that makes each its
/// column's once the table is there.
pub fn owned_sequences(
    tables: &[pg_sys::Oid],
) -> crate::pg::error::Result<Vec<(pg_sys::Oid, String)>> {
    Spi::connect(|c| {
        c.select(OWNED_SEQUENCES, None, &[tables.to_vec().into()])?
            .map(|r| {
                Ok((
                    need(&r, 1, "a sequence")?,
                    need(&r, 2, "owner of a sequence")?,
                ))
            })
            .collect()
    })
}

/// The statements that give each sequence of `owned` (made by `made`, in the same order) to
/// its column, once the table is there.
pub fn sequence_owners(made: Vec<Ddl>, owned: Vec<(pg_sys::Oid, String)>) -> Vec<Ddl> {
    made.into_iter()
        .zip(owned)
        .map(|(ddl, (_, own))| Ddl {
            kind: Kind::SequenceOwner,
            sql: own,
            ..ddl
        })
        .collect()
}

/// The statement of `ddl`, from another node, if it is one statement that makes what `ddl`
/// says and nothing else: of the kind's own sort, naming the object `ddl` names (a key or a
/// trigger, on the table it names), not a table derived from another, not a view made over
/// one that is there. Else why not. (A sequence's move is never run as it came: see
/// [`sequence_move`].)
pub fn fits(ddl: &Ddl) -> std::result::Result<crate::pg::ffi::Statement, String> {
    use pg_sys::NodeTag::*;
    let allowed: &[pg_sys::NodeTag] = match ddl.kind {
        Kind::Schema => &[T_CreateSchemaStmt],
        Kind::Type => &[
            T_CreateEnumStmt,
            T_CompositeTypeStmt,
            T_CreateDomainStmt,
            T_CreateRangeStmt,
        ],
        Kind::Sequence => &[T_CreateSeqStmt],
        Kind::Table => &[T_CreateStmt],
        Kind::SequenceOwner => &[T_AlterSeqStmt],
        Kind::Key | Kind::ForeignKey => &[T_AlterTableStmt],
        Kind::Index => &[T_IndexStmt],
        Kind::SequenceValue => &[],
        Kind::Function => &[T_CreateFunctionStmt],
        Kind::View => &[T_ViewStmt],
        Kind::Trigger => &[T_CreateTrigStmt],
    };
    let Some(stmt) = crate::pg::ffi::statement(&ddl.sql) else {
        return Err("not one statement".into());
    };
    if !stmt.tag.is_some_and(|t| allowed.contains(&t)) {
        return Err(format!("not a statement that makes a {}", ddl.kind.label()));
    }
    let table = ddl.table.as_deref().map(name_parts).unwrap_or_default();
    // what it makes or changes, in a schema of its own: never one of the system's or synclink's
    let placed = |parts: &[String]| match parts {
        [schema, _] => !reserved_schema(schema),
        [schema] if ddl.kind == Kind::Schema => !reserved_schema(schema),
        _ => false,
    };
    let named = |parts: &[String]| placed(parts) && *parts == name_parts(&ddl.name)[..];
    let fits = !stmt.derived
        && match ddl.kind {
            Kind::Key | Kind::ForeignKey => {
                stmt.adds_only && placed(&stmt.on) && stmt.on == table && stmt.member == ddl.member
            }
            Kind::Trigger => {
                !stmt.replace && placed(&stmt.on) && stmt.on == table && stmt.member == ddl.member
            }
            Kind::View | Kind::Function => !stmt.replace && named(&stmt.target),
            _ => named(&stmt.target),
        };
    if fits {
        Ok(stmt)
    } else {
        Err(format!(
            "not a statement that makes {} {}",
            ddl.kind.label(),
            ddl.name
        ))
    }
}

/// The schemas no clone makes anything in: the system's and synclink's.
fn reserved_schema(schema: &str) -> bool {
    ["pg_catalog", "information_schema", "synclink"].contains(&schema)
        || schema.starts_with("pg_toast")
        || schema.starts_with("pg_temp")
}

/// A function's definition as it is made: without OR REPLACE (pg_get_functiondef writes it),
/// so that one of the same signature here is reported, never replaced.
pub fn without_replace(sql: &str) -> std::borrow::Cow<'_, str> {
    for made in ["FUNCTION ", "PROCEDURE "] {
        if let Some(rest) = sql.strip_prefix(&format!("CREATE OR REPLACE {made}")) {
            return format!("CREATE {made}{rest}").into();
        }
    }
    sql.into()
}

/// The parts of a qualified name as PostgreSQL prints it (`public."Order"`, a function's
/// `public.f(integer)` up to its arguments), as the parser reads them: quotes taken off, an
/// unquoted part folded to lower case.
pub fn name_parts(name: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = name.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        let c = match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                '"'
            }
            '"' => {
                quoted = !quoted;
                continue;
            }
            '.' if !quoted => {
                parts.push(String::new());
                continue;
            }
            '(' if !quoted => break,
            c if quoted => c,
            c => c.to_ascii_lowercase(),
        };
        if let Some(p) = parts.last_mut() {
            p.push(c)
        }
    }
    parts
}

/// The statement that moves a sequence as `ddl` (a [`Kind::SequenceValue`] from another node)
/// asks, made here from its parts — never its text: to the value it names, or past the
/// highest value of the column it names; never back.
pub fn sequence_move(
    ddl: &Ddl,
) -> crate::pg::error::Result<Option<(String, Vec<pgrx::datum::DatumWithOid<'static>>)>> {
    match (&ddl.table, &ddl.member) {
        (Some(table), Some(column)) => {
            let Some(table) = crate::pg::spi::maybe_one::<String>(
                "SELECT pg_catalog.to_regclass($1)::pg_catalog.text",
                &[table.as_str().into()],
            )?
            else {
                return Ok(None);
            };
            Ok(Some((
                format!(
                    "SELECT pg_catalog.setval(x.s, x.m) FROM (SELECT pg_catalog.pg_get_serial_sequence($1, $2)::pg_catalog.regclass AS s, \
                            (SELECT pg_catalog.max(t.{col}) FROM {table} t) AS m) x \
                      WHERE x.m IS NOT NULL AND x.m OPERATOR(pg_catalog.>) coalesce(pg_catalog.pg_sequence_last_value(x.s), 0)",
                    col = crate::pg::sql::ident(column),
                ),
                vec![table.clone().into(), column.clone().into()],
            )))
        }
        (None, Some(value)) => {
            let Ok(value) = value.parse::<i64>() else {
                return Ok(None);
            };
            Ok(Some((
                "SELECT pg_catalog.setval(q.seqrelid, $2) FROM pg_catalog.pg_sequence q \
                  WHERE q.seqrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)::pg_catalog.oid \
                    AND $2 OPERATOR(pg_catalog.>) coalesce(pg_catalog.pg_sequence_last_value(q.seqrelid), q.seqstart OPERATOR(pg_catalog.-) 1)"
                    .to_string(),
                vec![ddl.name.clone().into(), value.into()],
            )))
        }
        _ => Ok(None),
    }
}

/// A table's columns (not dropped), in order: name, type, and whether it is generated — what
/// another node compares before it takes the table's rows.
pub fn columns(relid: pg_sys::Oid) -> crate::pg::error::Result<Vec<(String, String, bool)>> {
    Spi::connect(|c| {
        c.select(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attgenerated <> '' \
               FROM pg_catalog.pg_attribute a \
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            None,
            &[relid.into()],
        )?
        .map(|r| {
            Ok((
                need(&r, 1, "a column's name")?,
                need(&r, 2, "a column's type")?,
                need(&r, 3, "a column's kind")?,
            ))
        })
        .collect()
    })
}

/// The statements that make `relid` again in order: the types it needs, its serial
/// sequences, the table, the sequences' owner, its keys and indexes, then its foreign keys.
pub fn of_table(relid: pg_sys::Oid) -> crate::pg::error::Result<Vec<Ddl>> {
    let table = [relid];
    let mut all = statements(Kind::Type, &needed_types(&table, &[])?)?;
    let owned = owned_sequences(&table)?;
    let sequences: Vec<pg_sys::Oid> = owned.iter().map(|(s, _)| *s).collect();
    let made = statements(Kind::Sequence, &sequences)?;
    all.extend(made.iter().cloned());
    all.extend(statements(Kind::Table, &table)?);
    all.extend(sequence_owners(made, owned));
    all.extend(statements(Kind::Key, &constraints_of(&table, "pux")?)?);
    all.extend(statements(Kind::Index, &indexes_of(&table)?)?);
    all.extend(statements(Kind::ForeignKey, &constraints_of(&table, "f")?)?);
    Ok(all)
}

/// The statement that would make again the object of `ddl`'s kind and name on this node, if
/// there is one: what a statement from another node is compared with.
pub fn existing(ddl: &Ddl) -> crate::pg::error::Result<Option<String>> {
    let lookup = match ddl.kind {
        Kind::Schema => {
            "SELECT n.oid FROM pg_catalog.pg_namespace n \
              WHERE pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.=) $1"
        }
        Kind::Type => "SELECT pg_catalog.to_regtype($1)::pg_catalog.oid",
        Kind::Function => "SELECT pg_catalog.to_regprocedure($1)::pg_catalog.oid",
        Kind::Key | Kind::ForeignKey => {
            "SELECT k.oid FROM pg_catalog.pg_constraint k \
              WHERE k.conrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($2)::pg_catalog.oid \
                AND k.conname OPERATOR(pg_catalog.=) $3::pg_catalog.name"
        }
        Kind::Trigger => {
            "SELECT g.oid FROM pg_catalog.pg_trigger g \
              WHERE g.tgrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($2)::pg_catalog.oid \
                AND g.tgname OPERATOR(pg_catalog.=) $3::pg_catalog.name"
        }
        Kind::SequenceOwner | Kind::SequenceValue => return Ok(None),
        _ => "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
    };
    // A name this node cannot read (a function whose argument type is not here) names
    // nothing here.
    let found = crate::pg::subxact::run(|| {
        crate::pg::spi::maybe_one::<pg_sys::Oid>(
            lookup,
            &[
                ddl.name.as_str().into(),
                ddl.table.as_deref().into(),
                ddl.member.as_deref().into(),
            ],
        )
    })
    .ok()
    .transpose()?
    .flatten();
    let Some(oid) = found.filter(|o| *o != pg_sys::InvalidOid) else {
        return Ok(None);
    };
    Ok(statements(ddl.kind, &[oid])?
        .into_iter()
        .next()
        .map(|d| d.sql))
}

#[cfg(test)]
mod tests {
    use super::name_parts;

    #[test]
    fn a_printed_name_comes_apart_without_its_quotes() {
        assert_eq!(name_parts("public.orders"), ["public", "orders"]);
        assert_eq!(
            name_parts(r#"public."Odd ""name"".x""#),
            ["public", r#"Odd "name".x"#]
        );
        assert_eq!(
            name_parts("public.total_of(integer, text)"),
            ["public", "total_of"]
        );
        assert_eq!(name_parts(r#""a(b".c"#), ["a(b", "c"]);
        assert_eq!(name_parts(r#"public.Victim"#), ["public", "victim"]);
        assert_eq!(name_parts(r#"public."Victim""#), ["public", "Victim"]);
    }
}
