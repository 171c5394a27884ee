//! A table's definition as the statements that make it again in another database: the types
//! its columns need (enums, domains, composites, in the order they depend on each other), the
//! sequences its columns own, the table with its columns, defaults, generated and identity
//! columns, NOT NULL, CHECK, primary, unique and exclusion constraints, then its other
//! indexes. Foreign keys are listed apart: they name other tables, which the other database
//! may not have.
//!
//! The text comes from PostgreSQL's own deparsers (format_type, pg_get_expr,
//! pg_get_constraintdef, pg_get_indexdef) read under search_path pg_catalog, so every name
//! outside pg_catalog is written schema-qualified, as pg_dump writes them.

use crate::pg::spi::need;
use pgrx::prelude::*;
use serde::{Deserialize, Serialize};

/// One statement of a definition, with what it makes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ddl {
    pub kind: Kind,
    /// the object's schema-qualified name, as `to_regtype` / `to_regclass` find it
    pub name: String,
    pub sql: String,
}

/// What a statement makes, in the order a definition lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Type,
    Sequence,
    Table,
    /// a sequence made for a column (serial) becoming the column's: after the table
    SequenceOwner,
    Index,
    ForeignKey,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Type => "type",
            Kind::Sequence => "sequence",
            Kind::Table => "table",
            Kind::SequenceOwner => "sequence owner",
            Kind::Index => "index",
            Kind::ForeignKey => "foreign key",
        }
    }
}

/// The user-defined types the columns of `$1` need, each once, those they need first: an
/// element type before its array, a domain's base type before the domain, a composite's
/// attribute types before it. Types of extensions come with their extension and are left out.
const NEEDED_TYPES: &str = r#"
WITH RECURSIVE needed(oid, depth) AS (
    SELECT a.atttypid, 0
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
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
       END
  FROM (SELECT n.oid, pg_catalog.max(n.depth) AS depth FROM needed n GROUP BY n.oid) n
  JOIN pg_catalog.pg_type t ON t.oid = n.oid
  LEFT JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype
  LEFT JOIN pg_catalog.pg_class c ON c.oid = t.typrelid
 WHERE t.typnamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace, 'information_schema'::pg_catalog.regnamespace)
   AND (t.typtype IN ('e', 'd') OR t.typtype = 'c' AND c.relkind = 'c')
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend x
                    WHERE x.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND x.objid = t.oid
                      AND x.deptype = 'e')
 ORDER BY n.depth DESC, 1"#;

/// The sequences the columns of `$1` own (serial columns; an identity column's sequence comes
/// with the column): each made with its options, and owned by its column once the table is
/// there.
const OWNED_SEQUENCES: &str = r#"
SELECT s.oid::pg_catalog.regclass::text,
       pg_catalog.format('CREATE SEQUENCE %s AS %s INCREMENT BY %s MINVALUE %s MAXVALUE %s START WITH %s CACHE %s%s',
                         s.oid::pg_catalog.regclass, pg_catalog.format_type(q.seqtypid, NULL),
                         q.seqincrement, q.seqmin, q.seqmax, q.seqstart, q.seqcache,
                         CASE WHEN q.seqcycle THEN ' CYCLE' ELSE ' NO CYCLE' END),
       pg_catalog.format('ALTER SEQUENCE %s OWNED BY %s.%I', s.oid::pg_catalog.regclass,
                         d.refobjid::pg_catalog.regclass, a.attname)
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid
  JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.refobjid = $1 AND d.deptype = 'a'
 ORDER BY 1"#;

/// CREATE TABLE for `$1`: its columns in order, then its primary key, unique and exclusion
/// constraints and its CHECK constraints (those inherited from a parent are left out).
const CREATE_TABLE: &str = r#"
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
                                         ', ' ORDER BY pg_catalog.strpos('pux', k.contype::text) = 0, pg_catalog.strpos('pux', k.contype::text), k.conname)
              FROM pg_catalog.pg_constraint k
             WHERE k.conrelid = c.oid AND k.contype IN ('p', 'u', 'x', 'c') AND k.conislocal)),
         coalesce(' WITH (' || pg_catalog.array_to_string(c.reloptions, ', ') || ')', ''))
  FROM pg_catalog.pg_class c WHERE c.oid = $1"#;

/// The indexes of `$1` that no constraint made.
const INDEXES: &str = r#"
SELECT i.indexrelid::pg_catalog.regclass::text, pg_catalog.pg_get_indexdef(i.indexrelid)
  FROM pg_catalog.pg_index i
 WHERE i.indrelid = $1
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k
                    WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                      AND k.contype IN ('p', 'u', 'x'))
 ORDER BY 1"#;

/// The foreign keys of `$1`, as ALTER TABLE … ADD CONSTRAINT.
const FOREIGN_KEYS: &str = r#"
SELECT pg_catalog.format('%s.%I', k.conrelid::pg_catalog.regclass, k.conname),
       pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', k.conrelid::pg_catalog.regclass,
                         k.conname, pg_catalog.pg_get_constraintdef(k.oid))
  FROM pg_catalog.pg_constraint k
 WHERE k.conrelid = $1 AND k.contype = 'f'
 ORDER BY k.conname"#;

/// The statements that make `relid` again, in the order they must run, with its foreign keys
/// last.
pub fn of_table(relid: pg_sys::Oid) -> Result<Vec<Ddl>, crate::pg::error::Error> {
    let pairs = |sql: &str, kind: Kind| -> Result<Vec<Ddl>, crate::pg::error::Error> {
        Spi::connect(|c| {
            c.select(sql, None, &[relid.into()])?
                .map(|r| {
                    Ok(Ddl {
                        kind,
                        name: need(&r, 1, "name of an object")?,
                        sql: need(&r, 2, "definition of an object")?,
                    })
                })
                .collect()
        })
    };
    let mut all = pairs(NEEDED_TYPES, Kind::Type)?;
    let sequences = Spi::connect(|c| {
        c.select(OWNED_SEQUENCES, None, &[relid.into()])?
            .map(|r| {
                Ok::<_, crate::pg::error::Error>((
                    need::<String>(&r, 1, "name of a sequence")?,
                    need::<String>(&r, 2, "definition of a sequence")?,
                    need::<String>(&r, 3, "owner of a sequence")?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    for (name, make, _) in &sequences {
        all.push(Ddl {
            kind: Kind::Sequence,
            name: name.clone(),
            sql: make.clone(),
        });
    }
    all.extend(pairs(CREATE_TABLE, Kind::Table)?);
    for (name, _, own) in sequences {
        all.push(Ddl {
            kind: Kind::SequenceOwner,
            name,
            sql: own,
        });
    }
    all.extend(pairs(INDEXES, Kind::Index)?);
    all.extend(pairs(FOREIGN_KEYS, Kind::ForeignKey)?);
    Ok(all)
}
