//! Keeping links honest when their tables change shape.
//!
//! A linked table that is dropped takes its link with it (and the peer is asked to drop its
//! half, so it stops sending). An ALTER TABLE that removes, renames or retypes a replicated
//! column is refused: the capture function names those columns and would fail on the next
//! write, and the peer would parse rows of another shape. A column that is added is allowed
//! with a WARNING, because it is not mirrored until the table is linked again.

use crate::control::link;
use crate::pg::error::{warning, Result, SqlError};
use crate::pg::spi::need;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

#[derive(thiserror::Error, Debug)]
pub enum DdlError {
    #[error("cannot drop {object}: synclink uses it")]
    InUse { object: String, what: String },
    #[error("cannot change replicated columns of {table}, which is linked with peer \"{peer}\"")]
    ColumnsChanged {
        table: String,
        peer: String,
        missing: Vec<String>,
    },
    #[error("cannot rename {table}, which is linked with peer \"{peer}\" as {linked_as}")]
    Renamed {
        table: String,
        peer: String,
        linked_as: String,
    },
}

impl SqlError for DdlError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            DdlError::InUse { .. } => PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            _ => PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
        }
    }
    fn detail(&self) -> Option<String> {
        match self {
            DdlError::InUse { what, .. } => Some(format!("It is part of {what}.")),
            DdlError::ColumnsChanged { missing, .. } => Some(format!(
                "Replicated column(s) {} would be dropped, renamed or change type.",
                missing.join(", ")
            )),
            DdlError::Renamed { .. } => {
                Some("The peer sends changes for this table by its name.".into())
            }
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            DdlError::InUse { .. } => Some(
                "Remove it the way it was made: sync_unlink_table() for a link's objects, \
                 sync_drop_peer() for a peer's, DROP EXTENSION synclink for everything."
                    .into(),
            ),
            DdlError::ColumnsChanged { peer, .. } | DdlError::Renamed { peer, .. } => Some(format!(
                "Run SELECT sync_unlink_table(...) for peer \"{peer}\", change the table on both nodes, then link it again."
            )),
        }
    }
}

crate::pg::error::reported_as_sql_error!(DdlError);

/// sql_drop: unlink every link whose table was just dropped.
#[pg_extern(schema = "synclink")]
#[search_path(pg_catalog, pg_temp)]
fn forget_dropped_tables() -> Result<(), ErrorReport> {
    Ok(unlink_dropped_tables()?)
}

fn unlink_dropped_tables() -> Result<()> {
    let ids = crate::pg::spi::column::<i32>(
        "SELECT l.link_id FROM synclink.link l \
         JOIN pg_event_trigger_dropped_objects() d \
           ON d.classid = 'pg_class'::regclass AND d.objid = l.relid::oid AND d.objsubid = 0 \
         ORDER BY l.link_id",
        &[],
    )?;
    for id in ids {
        link::unlink_by_id(id, true, true)?;
    }
    Ok(())
}

/// sql_drop, for every kind of object synclink makes: a drop that takes one of synclink's
/// objects away from a link or peer that still exists is refused. Without its foreign
/// server or its triggers a link breaks silently (writes fail, or are no longer captured),
/// and the ways to remove it break with it. Objects dropped because their table is dropped
/// are fine: the link goes with the table (forget_dropped_tables runs first).
#[pg_extern(schema = "synclink")]
#[search_path(pg_catalog, pg_temp)]
fn guard_drops() -> Result<(), ErrorReport> {
    // synclink's own upgrade script drops and remakes synclink's objects as it needs to.
    if crate::control::removal::in_progress() || crate::pg::ffi::in_synclink_script() {
        return Ok(());
    }
    let hit = crate::pg::spi::maybe_one::<pgrx::JsonB>(
        "SELECT jsonb_build_object('object', d.object_type || ' ' || d.object_identity, 'what', w.what) \
           FROM pg_event_trigger_dropped_objects() d \
          CROSS JOIN LATERAL ( \
                SELECT format('peer %L', p.peer_name) AS what FROM synclink.peer p \
                 WHERE (d.object_type = 'server' AND d.object_identity = quote_ident(p.server_name)) \
                    OR (d.object_type = 'user mapping' AND d.address_args[1] = p.server_name) \
                UNION ALL \
                SELECT format('the link of %s with peer %L', l.relid, l.peer_name) FROM synclink.link l \
                 WHERE d.object_type = 'trigger' AND d.address_names[3] = ANY (l.triggers) \
                   AND to_regclass(format('%I.%I', d.address_names[1], d.address_names[2])) = l.relid \
                UNION ALL \
                SELECT 'what synclink keeps in its schema' WHERE d.schema_name = 'synclink' \
                   AND d.object_type NOT IN ('index', 'table constraint', 'default value', 'toast table') \
                UNION ALL \
                SELECT 'synclink' WHERE d.object_type = 'schema' AND d.object_name = 'synclink' \
                LIMIT 1) w \
          LIMIT 1",
        &[],
    )
    .map_err(crate::pg::error::Error::from)?;
    if let Some(hit) = hit {
        let field = |k: &str| {
            hit.0
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        return Err(DdlError::InUse {
            object: field("object"),
            what: field("what"),
        }
        .into());
    }
    Ok(())
}

/// ddl_command_end for ALTER SCHEMA: a linked table's schema keeps its name, which the peer
/// addresses the table's changes by.
#[pg_extern(schema = "synclink")]
#[search_path(pg_catalog, pg_temp)]
fn check_renamed_schemas() -> Result<(), ErrorReport> {
    Ok(refuse_renamed_schemas()?)
}

fn refuse_renamed_schemas() -> Result<()> {
    let renamed = Spi::connect(|c| -> Result<_> {
        let mut rows = c.select(
            "SELECT n.nspname::text, cl.relname::text, l.peer_name, l.peer_schema, l.peer_table \
               FROM synclink.link l JOIN pg_class cl ON cl.oid = l.relid \
               JOIN pg_namespace n ON n.oid = cl.relnamespace \
              WHERE n.nspname <> l.peer_schema LIMIT 1",
            None,
            &[],
        )?;
        let Some(r) = rows.next() else {
            return Ok(None);
        };
        let text = |i| -> Result<String> { Ok(r.get::<String>(i)?.unwrap_or_default()) };
        Ok(Some((text(1)?, text(2)?, text(3)?, text(4)?, text(5)?)))
    })?;
    if let Some((schema, table, peer, peer_schema, peer_table)) = renamed {
        return Err(DdlError::Renamed {
            table: crate::pg::sql::qualified(&schema, &table),
            peer,
            linked_as: crate::pg::sql::qualified(&peer_schema, &peer_table),
        }
        .into());
    }
    Ok(())
}

/// ddl_command_end for ALTER TABLE: compare each linked table with its link's columns.
#[pg_extern(schema = "synclink")]
#[search_path(pg_catalog, pg_temp)]
fn check_altered_tables() -> Result<(), ErrorReport> {
    Ok(compare_altered_tables()?)
}

fn compare_altered_tables() -> Result<()> {
    type Row = (
        pg_sys::Oid,
        String,
        Vec<String>,
        String,
        String,
        String,
        Vec<String>,
    );
    let links: Vec<Row> = Spi::connect(|c| {
        c.select(
            "SELECT DISTINCT l.relid::oid, l.peer_name, l.columns, l.row_type, l.peer_schema, l.peer_table, l.excluded \
             FROM synclink.link l \
             JOIN pg_event_trigger_ddl_commands() d \
               ON d.classid = 'pg_class'::regclass AND d.objid = l.relid::oid",
            None,
            &[],
        )?
        .map(|r| -> Result<Row> {
            Ok((
                need(&r, 1, "link relid")?,
                need(&r, 2, "link peer_name")?,
                need(&r, 3, "link columns")?,
                need(&r, 4, "link row_type")?,
                need(&r, 5, "link peer_schema")?,
                need(&r, 6, "link peer_table")?,
                need(&r, 7, "link excluded")?,
            ))
        })
        .collect::<Result<Vec<Row>>>()
    })?;
    for (relid, peer, columns, row_type, peer_schema, peer_table, excluded) in links {
        // Disabling a capture trigger is a DBA's right (a load that should stay here, say),
        // but it is said out loud, and sync_status keeps saying it.
        let disabled = crate::pg::spi::column::<String>(
            "SELECT g.tgname::text FROM pg_trigger g JOIN synclink.link l ON l.relid = g.tgrelid \
              WHERE l.relid = $1 AND l.peer_name = $2 AND g.tgname = ANY (l.triggers) \
                AND g.tgenabled IN ('D', 'R') ORDER BY 1",
            &[relid.into(), peer.as_str().into()],
        )?;
        if !disabled.is_empty() {
            let table = crate::catalog::link::describe(relid)?.display();
            warning(
                &format!(
                    "capture trigger(s) {} of {table} are disabled: its changes are not sent to peer \"{peer}\"",
                    disabled.join(", ")
                ),
                &format!("ALTER TABLE {table} ENABLE TRIGGER ... sends them again (changes made meanwhile stay unsent: sync_diff finds them); sync_status shows this in its problem column."),
            );
        }
        let info = crate::catalog::link::describe(relid)?;
        // Links pair tables of the same name, and records arrive addressed by that name.
        if (info.schema.as_str(), info.name.as_str()) != (peer_schema.as_str(), peer_table.as_str())
        {
            let linked_as = crate::pg::sql::qualified(&peer_schema, &peer_table);
            return Err(DdlError::Renamed {
                table: info.display(),
                peer,
                linked_as,
            }
            .into());
        }
        // A replicated column must still exist, not generated, with the type the row type has.
        let expected: Vec<(String, String)> = Spi::connect(|c| {
            c.select(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = (SELECT typrelid FROM pg_type WHERE oid = $1::regtype) \
                   AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                None,
                &[row_type.as_str().into()],
            )?
            .map(|r| -> Result<(String, String)> {
                Ok((
                    need(&r, 1, "row type column name")?,
                    need(&r, 2, "row type column type")?,
                ))
            })
            .collect::<Result<Vec<_>>>()
        })?;
        let missing: Vec<String> = expected
            .iter()
            .filter(|(name, ty)| {
                !info
                    .columns
                    .iter()
                    .any(|c| !c.generated && &c.wire.name == name && &c.wire.type_name == ty)
            })
            .map(|(name, _)| format!("\"{name}\""))
            .collect();
        if !missing.is_empty() {
            return Err(DdlError::ColumnsChanged {
                table: info.display(),
                peer,
                missing,
            }
            .into());
        }
        let added: Vec<String> = info
            .wire_columns(&excluded)
            .into_iter()
            .filter(|w| !columns.contains(&w.name))
            .map(|w| format!("\"{}\"", w.name))
            .collect();
        if !added.is_empty() {
            warning(
                &format!(
                    "column(s) {} of {} are not mirrored to peer \"{peer}\"",
                    added.join(", "),
                    info.display()
                ),
                "Add them on the peer too, then unlink and link the table again to mirror them.",
            );
        }
    }
    Ok(())
}
