//! What sync_clone brings: the tables asked for (names, `schema.*`, or every table of the
//! schemas in the search path), and in their schemas the types, sequences, functions and
//! views, with the tables' keys, indexes, foreign keys and triggers — each as the statement
//! that makes it ([`crate::catalog::definition`]). synclink's own schema, the system's and
//! what extensions own stay out.

use crate::catalog::definition::{self, Ddl, Kind};
use crate::pg::error::{notice, Result};
use crate::pg::spi::column;
use pgrx::prelude::*;

/// Everything to make, by kind, each list in the order it can be made.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// the tables, by their names at the source
    pub table_names: Vec<String>,
    /// the schemas of the tables, types, functions and views (made where missing)
    #[serde(default)]
    pub schemas: Vec<Ddl>,
    pub types: Vec<Ddl>,
    pub sequences: Vec<Ddl>,
    pub tables: Vec<Ddl>,
    pub sequence_owners: Vec<Ddl>,
    pub keys: Vec<Ddl>,
    pub indexes: Vec<Ddl>,
    pub foreign_keys: Vec<Ddl>,
    pub sequence_values: Vec<Ddl>,
    pub functions: Vec<Ddl>,
    pub views: Vec<Ddl>,
    pub triggers: Vec<Ddl>,
}

/// Schemas that are never cloned.
const OUTSIDE: &str =
    "('pg_catalog'::pg_catalog.regnamespace, 'information_schema'::pg_catalog.regnamespace, \
                       'pg_toast'::pg_catalog.regnamespace, 'synclink'::pg_catalog.regnamespace)";

/// The ordinary tables of the schemas `$1` (not partitions, not extension members).
fn tables_in(schemas: &[pg_sys::Oid]) -> Result<Vec<pg_sys::Oid>> {
    Ok(column::<pg_sys::Oid>(
        &format!(
            "SELECT c.oid FROM pg_catalog.pg_class c \
              WHERE c.relnamespace = ANY ($1) AND c.relnamespace NOT IN {OUTSIDE} \
                AND c.relkind = 'r' AND NOT c.relispartition \
                AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend x \
                                 WHERE x.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                                   AND x.objid = c.oid AND x.deptype = 'e') \
              ORDER BY c.oid::pg_catalog.regclass::text"
        ),
        &[schemas.to_vec().into()],
    )?)
}

/// The schemas of the caller's search path, in order, read before anything is looked up with
/// the path pinned.
pub fn search_path() -> Result<Vec<pg_sys::Oid>> {
    Ok(column::<pg_sys::Oid>(
        "SELECT n.oid FROM pg_catalog.unnest(pg_catalog.current_schemas(false)) WITH ORDINALITY s(name, i) \
           JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) s.name ORDER BY s.i",
        &[],
    )?)
}

/// The tables `patterns` name (NULL: every table of the schemas in the search path), each
/// once, in name order. A pattern that names nothing is said in a NOTICE.
fn tables(
    patterns: Option<&[String]>,
    path: &[pg_sys::Oid],
) -> Result<(Vec<pg_sys::Oid>, Vec<pg_sys::Oid>)> {
    let Some(patterns) = patterns else {
        return Ok((tables_in(path)?, path.to_vec()));
    };
    let mut found: Vec<pg_sys::Oid> = Vec::new();
    for pattern in patterns {
        let matched = if let Some(schema) = pattern.strip_suffix(".*") {
            let oid = crate::pg::spi::maybe_one::<pg_sys::Oid>(
                "SELECT n.oid FROM pg_catalog.pg_namespace n \
                  WHERE n.nspname = (pg_catalog.parse_ident($1))[1]",
                &[schema.into()],
            )?;
            match oid {
                Some(o) => tables_in(&[o])?,
                None => Vec::new(),
            }
        } else {
            // a name: as given when qualified, else looked up along the search path
            let oid = crate::pg::spi::maybe_one::<pg_sys::Oid>(
                "SELECT c.oid FROM pg_catalog.pg_class c \
                  WHERE c.relkind = 'r' AND c.oid = ANY ( \
                        SELECT pg_catalog.to_regclass($1)::pg_catalog.oid WHERE pg_catalog.strpos($1, '.') > 0 \
                        UNION ALL \
                        SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%s', n.nspname, $1))::pg_catalog.oid \
                          FROM pg_catalog.unnest($2::pg_catalog.oid[]) WITH ORDINALITY s(oid, i) \
                          JOIN pg_catalog.pg_namespace n ON n.oid = s.oid \
                         WHERE pg_catalog.strpos($1, '.') = 0) \
                  ORDER BY pg_catalog.array_position($2::pg_catalog.oid[], c.relnamespace) NULLS FIRST \
                  LIMIT 1",
                &[pattern.as_str().into(), path.to_vec().into()],
            )?;
            oid.into_iter().collect()
        };
        if matched.is_empty() {
            notice(&format!(
                "sync_clone: {} names no table here",
                crate::pg::args::shown(pattern)
            ));
        }
        for o in matched {
            if !found.contains(&o) {
                found.push(o);
            }
        }
    }
    let schemas = column::<pg_sys::Oid>(
        "SELECT DISTINCT c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = ANY ($1)",
        &[found.clone().into()],
    )?;
    Ok((found, schemas))
}

/// Objects of the schemas `$1` that no extension owns: `sql` selects their oids, aliased `o`
/// in a FROM over `catalog`.
fn own_objects(
    order: &str,
    catalog: &str,
    namespace: &str,
    filter: &str,
    schemas: &[pg_sys::Oid],
) -> Result<Vec<pg_sys::Oid>> {
    Ok(column::<pg_sys::Oid>(
        &format!(
            "SELECT o.oid FROM {catalog} o \
              WHERE o.{namespace} = ANY ($1) AND o.{namespace} NOT IN {OUTSIDE} AND {filter} \
                AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend x \
                                 WHERE x.classid = '{catalog}'::pg_catalog.regclass \
                                   AND x.objid = o.oid AND x.deptype IN ('e', 'i', 'a')) \
              ORDER BY {order}"
        ),
        &[schemas.to_vec().into()],
    )?)
}

/// Everything sync_clone brings for `patterns`, names without a schema looked up along `path`.
pub fn plan(patterns: Option<&[String]>, path: &[pg_sys::Oid]) -> Result<Plan> {
    let (tables, schemas) = tables(patterns, path)?;
    let standalone_types = own_objects(
        "o.oid",
        "pg_catalog.pg_type",
        "typnamespace",
        "(o.typtype IN ('e', 'd') OR o.typtype = 'c' AND EXISTS \
           (SELECT FROM pg_catalog.pg_class c WHERE c.oid = o.typrelid AND c.relkind = 'c'))",
        &schemas,
    )?;
    let types = definition::needed_types(&tables, &standalone_types)?;
    let owned = definition::owned_sequences(&tables)?;
    // The schemas' sequences that no column owns (a serial's is owned: listed with its table),
    // then those the tables' columns own.
    let mut sequences = own_objects(
        "o.oid::pg_catalog.regclass::text",
        "pg_catalog.pg_class",
        "relnamespace",
        "o.relkind = 'S'",
        &schemas,
    )?;
    let serial: Vec<pg_sys::Oid> = owned.iter().map(|(s, _)| *s).collect();
    sequences.extend(&serial);
    let sequence_owners =
        definition::sequence_owners(definition::statements(Kind::Sequence, &serial)?, owned);
    let functions = column::<pg_sys::Oid>(
        &format!(
            "SELECT p.oid FROM pg_catalog.pg_proc p \
              WHERE p.pronamespace = ANY ($1) AND p.pronamespace NOT IN {OUTSIDE} AND p.prokind IN ('f', 'p') \
                AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend x \
                                 WHERE x.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
                                   AND x.objid = p.oid AND x.deptype = 'e') \
              ORDER BY p.oid::pg_catalog.regprocedure::text"
        ),
        &[schemas.clone().into()],
    )?;
    let views = own_objects(
        "o.oid::pg_catalog.regclass::text",
        "pg_catalog.pg_class",
        "relnamespace",
        "o.relkind = 'v'",
        &schemas,
    )?;
    let sequence_values = sequence_values(&sequences, &tables)?;
    let namespaces = column::<pg_sys::Oid>(
        &format!(
            "SELECT n.oid FROM pg_catalog.pg_namespace n \
              WHERE (n.oid = ANY ($1) OR n.oid IN (SELECT t.typnamespace FROM pg_catalog.pg_type t WHERE t.oid = ANY ($2)) \
                     OR n.oid IN (SELECT c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = ANY ($3))) \
                AND n.oid NOT IN {OUTSIDE} \
              ORDER BY n.nspname"
        ),
        &[schemas.clone().into(), types.clone().into(), tables.clone().into()],
    )?;
    Ok(Plan {
        schemas: definition::statements(Kind::Schema, &namespaces)?,
        types: definition::statements(Kind::Type, &types)?,
        sequences: definition::statements(Kind::Sequence, &sequences)?,
        tables: definition::statements(Kind::Table, &tables)?,
        sequence_owners,
        keys: definition::statements(Kind::Key, &definition::constraints_of(&tables, "pux")?)?,
        indexes: definition::statements(Kind::Index, &definition::indexes_of(&tables)?)?,
        foreign_keys: definition::statements(
            Kind::ForeignKey,
            &definition::constraints_of(&tables, "f")?,
        )?,
        sequence_values,
        functions: definition::statements(Kind::Function, &functions)?,
        views: definition::statements(Kind::View, &views)?,
        triggers: definition::statements(Kind::Trigger, &definition::triggers_of(&tables)?)?,
        table_names: crate::pg::spi::column::<String>(
            "SELECT t::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY u(t, i) ORDER BY u.i",
            &[tables.into()],
        )?,
    })
}

/// For each sequence cloned (those of the schemas and of the tables' serial columns): the
/// statement that moves the peer's sequence to where this one is, never back; then, for each
/// column with a sequence (an identity column's too), past the highest value the column holds
/// there.
fn sequence_values(sequences: &[pg_sys::Oid], tables: &[pg_sys::Oid]) -> Result<Vec<Ddl>> {
    let mut all = moves(
        "SELECT s.oid::pg_catalog.regclass::text,
                pg_catalog.format('SELECT pg_catalog.setval(%L, %s) WHERE %s > coalesce(pg_catalog.pg_sequence_last_value(%L::pg_catalog.regclass), %s - 1)',
                                  s.oid::pg_catalog.regclass, v.last, v.last, s.oid::pg_catalog.regclass, q.seqstart),
                NULL::pg_catalog.text, v.last::pg_catalog.text
           FROM pg_catalog.unnest($1::pg_catalog.oid[]) s(oid)
           JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid
          CROSS JOIN LATERAL (SELECT pg_catalog.pg_sequence_last_value(s.oid) AS last) v
          WHERE v.last IS NOT NULL
          ORDER BY 1",
        sequences,
    )?;
    all.extend(column_values(tables)?);
    Ok(all)
}

/// For each column of `tables` with a sequence (serial or identity): the statement that moves
/// the peer's sequence past the highest value the column holds there, never back.
fn column_values(tables: &[pg_sys::Oid]) -> Result<Vec<Ddl>> {
    moves(
        "SELECT pg_catalog.pg_get_serial_sequence(a.attrelid::pg_catalog.regclass::text, a.attname),
                    pg_catalog.format(
                      'SELECT pg_catalog.setval(s, m) FROM (SELECT pg_catalog.pg_get_serial_sequence(%L, %L)::pg_catalog.regclass AS s, '
                      '(SELECT pg_catalog.max(%I) FROM %s) AS m) x '
                      'WHERE m IS NOT NULL AND m > coalesce(pg_catalog.pg_sequence_last_value(s), 0)',
                      a.attrelid::pg_catalog.regclass::text, a.attname, a.attname, a.attrelid::pg_catalog.regclass),
                    a.attrelid::pg_catalog.regclass::text, a.attname::pg_catalog.text
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = ANY ($1) AND a.attnum > 0 AND NOT a.attisdropped
                AND pg_catalog.pg_get_serial_sequence(a.attrelid::pg_catalog.regclass::text, a.attname) IS NOT NULL
              ORDER BY 1",
        tables,
    )
}

/// The sequence moves a query over the oids `$1` yields: (sequence, statement, and what the
/// receiving node makes the statement from: a column's table and name, or the value).
fn moves(sql: &str, oids: &[pg_sys::Oid]) -> Result<Vec<Ddl>> {
    Spi::connect(|c| {
        c.select(sql, None, &[oids.to_vec().into()])?
            .map(|r| {
                Ok(Ddl {
                    kind: Kind::SequenceValue,
                    name: crate::pg::spi::need(&r, 1, "a sequence")?,
                    sql: crate::pg::spi::need(&r, 2, "a sequence's move")?,
                    table: r.get::<String>(3)?,
                    member: r.get::<String>(4)?,
                    runs_as: None,
                })
            })
            .collect()
    })
}
