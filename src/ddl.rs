//! Keeping links honest when their tables change shape.
//!
//! A linked table that is dropped takes its link with it (and the peer is asked to drop its
//! half, so it stops sending). An ALTER TABLE that removes, renames or retypes a replicated
//! column is refused: the capture function names those columns and would fail on the next
//! write, and the peer would parse rows of another shape. A column that is added is allowed
//! with a WARNING, because it is not mirrored until the table is linked again.

use crate::error::{raise, warning, SqlError};
use crate::link;
use pgrx::prelude::*;

#[derive(thiserror::Error, Debug)]
pub enum DdlError {
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
        PgSqlErrorCode::ERRCODE_OBJECT_IN_USE
    }
    fn detail(&self) -> Option<String> {
        match self {
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
            DdlError::ColumnsChanged { peer, .. } | DdlError::Renamed { peer, .. } => Some(format!(
                "Run SELECT sync_unlink_table(...) for peer \"{peer}\", change the table on both nodes, then link it again."
            )),
        }
    }
}

/// sql_drop: unlink every link whose table was just dropped.
#[pg_extern(schema = "synclink")]
#[search_path(pg_catalog, pg_temp)]
fn forget_dropped_tables() {
    let ids = crate::db::column::<i32>(
        "SELECT l.link_id FROM synclink.link l \
         JOIN pg_event_trigger_dropped_objects() d \
           ON d.classid = 'pg_class'::regclass AND d.objid = l.relid::oid AND d.objsubid = 0 \
         ORDER BY l.link_id",
        &[],
    );
    for id in ids {
        link::unlink_by_id(id, true, true);
    }
}

/// ddl_command_end for ALTER TABLE: compare each linked table with its link's columns.
#[pg_extern(schema = "synclink")]
#[search_path(pg_catalog, pg_temp)]
fn check_altered_tables() {
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
        )
        .unwrap()
        .map(|r| {
            (
                r.get(1).unwrap().unwrap(),
                r.get(2).unwrap().unwrap(),
                r.get(3).unwrap().unwrap(),
                r.get(4).unwrap().unwrap(),
                r.get(5).unwrap().unwrap(),
                r.get(6).unwrap().unwrap(),
                r.get(7).unwrap().unwrap(),
            )
        })
        .collect()
    });
    for (relid, peer, columns, row_type, peer_schema, peer_table, excluded) in links {
        let info = link::describe(relid);
        // Links pair tables of the same name, and records arrive addressed by that name.
        if (info.schema.as_str(), info.name.as_str()) != (peer_schema.as_str(), peer_table.as_str())
        {
            let linked_as = crate::sql::qualified(&peer_schema, &peer_table);
            raise(DdlError::Renamed {
                table: info.display(),
                peer,
                linked_as,
            });
        }
        // A replicated column must still exist, not generated, with the type the row type has.
        let expected: Vec<(String, String)> = Spi::connect(|c| {
            c.select(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = (SELECT typrelid FROM pg_type WHERE oid = $1::regtype) \
                   AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                None,
                &[row_type.as_str().into()],
            )
            .unwrap()
            .map(|r| (r.get(1).unwrap().unwrap(), r.get(2).unwrap().unwrap()))
            .collect()
        });
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
            raise(DdlError::ColumnsChanged {
                table: info.display(),
                peer,
                missing,
            });
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
}
