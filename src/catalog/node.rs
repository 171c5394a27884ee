//! This database's node name: the origin every change it captures carries.

use crate::pg::error::SqlError;
use pgrx::prelude::*;

#[derive(thiserror::Error, Debug)]
pub enum NodeError {
    #[error("invalid node name {}", crate::pg::args::shown(.0))]
    InvalidName(String),
    #[error("cannot rename node while {0} link(s) exist")]
    InUse(i64),
}

impl SqlError for NodeError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            NodeError::InvalidName(_) => PgSqlErrorCode::ERRCODE_INVALID_NAME,
            NodeError::InUse(_) => PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            NodeError::InvalidName(_) => "Use 1 to 63 letters, digits, '_', '.' or '-'.".into(),
            NodeError::InUse(_) => {
                "Peers know this node by its name; unlink every table first.".into()
            }
        })
    }
}

crate::pg::error::reported_as_sql_error!(NodeError);

pub fn local_name() -> crate::pg::error::Result<String> {
    let name = crate::pg::spi::maybe_one::<String>("SELECT node_name FROM synclink.node", &[])?;
    Ok(name.ok_or(crate::pg::spi::Missing("row in synclink.node"))?)
}

fn valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Rename this node; refused while any table is linked, since peers know it by name.
pub fn rename(name: &str) -> crate::pg::error::Result<String> {
    if !valid(name) {
        return Err(NodeError::InvalidName(name.into()).into());
    }
    let links = Spi::get_one::<i64>("SELECT count(*) FROM synclink.link")?.unwrap_or(0);
    if links > 0 {
        return Err(NodeError::InUse(links).into());
    }
    Spi::run_with_args("UPDATE synclink.node SET node_name = $1", &[name.into()])?;
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_names() {
        assert!(super::valid("shop_1a2b3c"));
        assert!(super::valid("eu-west.1"));
        assert!(!super::valid(""));
        assert!(!super::valid("a b"));
        assert!(!super::valid(&"x".repeat(64)));
    }
}
