//! A link's conflict policy: what each node does when a change from the peer meets a row
//! that changed here since the version the change was made on. Detection compares versions
//! (synclink.stamp), never row contents, so a row changed and changed back still counts as
//! changed. Each node decides by the link's policy with the same rule on the same two
//! versions, so both reach the same row:
//!
//! - last_write_wins: the higher version wins (version column first when both rows exist,
//!   then the stamp: generation, capture time bumped past the previous version, node name);
//! - prefer_node: the named node's change wins over any made without it, and a change made
//!   after it wins over it: the node raises the generation of each row it changes, which
//!   every link of the table compares first (synclink.stamp), so a mesh converges too;
//! - manual: each node keeps its row and logs the conflict as open for sync_resolve.
//!
//! Both nodes store the same policy (with node names, not "local"/"peer"). The statement that
//! applies a run of changes decides and logs every conflict (data/apply/checked.rs).

use crate::pg::error::SqlError;
use pgrx::prelude::*;

#[derive(thiserror::Error, Debug)]
pub enum PolicyError {
    #[error("unknown conflict policy {}", crate::pg::args::shown(.0))]
    UnknownPolicy(String),
    #[error("version column {} is not a column the link sends", crate::pg::args::shown(.column))]
    NoVersionColumn { column: String },
    #[error("version column \"{column}\" has type {type_name}, which cannot be ordered")]
    VersionNotOrdered { column: String, type_name: String },
    #[error("a version column only applies to the last_write_wins policy")]
    VersionWithoutLww,
}

impl SqlError for PolicyError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            PolicyError::UnknownPolicy(_) | PolicyError::VersionWithoutLww => {
                ERRCODE_INVALID_PARAMETER_VALUE
            }
            PolicyError::NoVersionColumn { .. } => ERRCODE_UNDEFINED_COLUMN,
            PolicyError::VersionNotOrdered { .. } => ERRCODE_UNDEFINED_FUNCTION,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            PolicyError::UnknownPolicy(_) => {
                "Use 'last_write_wins', 'prefer_local', 'prefer_peer' or 'manual'.".into()
            }
            PolicyError::NoVersionColumn { .. } => {
                "Name a column of the table that is not excluded, such as updated_at.".into()
            }
            PolicyError::VersionNotOrdered { .. } => {
                "Use a timestamp or integer column that every write sets.".into()
            }
            PolicyError::VersionWithoutLww => {
                "Leave version_column out, or use conflict => 'last_write_wins'.".into()
            }
        })
    }
}

crate::pg::error::reported_as_sql_error!(PolicyError);

/// A link's policy as stored: `prefer_local`/`prefer_peer` become `prefer_node` with the node's
/// name, so both nodes of the link agree on who is preferred.
#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    LastWriteWins { version_column: Option<String> },
    PreferNode(String),
    Manual,
}

impl Policy {
    /// Parse the `conflict =>` argument of sync_link_table on the node that calls it.
    pub fn parse(
        conflict: &str,
        version_column: Option<&str>,
        local: &str,
        peer: &str,
    ) -> Result<Policy, PolicyError> {
        let policy = match conflict {
            "last_write_wins" => Policy::LastWriteWins {
                version_column: version_column.map(str::to_string),
            },
            "prefer_local" => Policy::PreferNode(local.into()),
            "prefer_peer" => Policy::PreferNode(peer.into()),
            "manual" => Policy::Manual,
            other => return Err(PolicyError::UnknownPolicy(other.into())),
        };
        if version_column.is_some() && !matches!(policy, Policy::LastWriteWins { .. }) {
            return Err(PolicyError::VersionWithoutLww);
        }
        Ok(policy)
    }

    /// (conflict, prefer_node, version_column) as synclink.link keeps them.
    pub fn stored(&self) -> (&'static str, Option<String>, Option<String>) {
        match self {
            Policy::LastWriteWins { version_column } => {
                ("last_write_wins", None, version_column.clone())
            }
            Policy::PreferNode(n) => ("prefer_node", Some(n.clone()), None),
            Policy::Manual => ("manual", None, None),
        }
    }

    pub fn from_stored(conflict: &str, prefer: Option<String>, version: Option<String>) -> Policy {
        match conflict {
            "prefer_node" => Policy::PreferNode(prefer.unwrap_or_default()),
            "manual" => Policy::Manual,
            _ => Policy::LastWriteWins {
                version_column: version,
            },
        }
    }

    pub fn label(&self) -> String {
        match self {
            Policy::LastWriteWins { .. } => "last_write_wins".into(),
            Policy::PreferNode(n) => format!("prefer_node:{n}"),
            Policy::Manual => "manual".into(),
        }
    }
}

/// Refuse a version column the link does not send or whose type has no ordering.
pub fn check_version_column(
    relid: pg_sys::Oid,
    column: &str,
    sent: &[String],
) -> crate::pg::error::Result<()> {
    if !sent.iter().any(|c| c == column) {
        return Err(PolicyError::NoVersionColumn {
            column: column.into(),
        }
        .into());
    }
    let (type_oid, type_name) = Spi::get_two_with_args::<pg_sys::Oid, String>(
        "SELECT atttypid, format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = $1 AND attname = $2",
        &[relid.into(), column.into()],
    )?;
    let ordered = type_oid.is_some_and(crate::pg::ffi::has_ordering);
    if !ordered {
        return Err(PolicyError::VersionNotOrdered {
            column: column.into(),
            type_name: type_name.unwrap_or_default(),
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_stored_by_node_name() {
        let p = Policy::parse("prefer_local", None, "a", "b").unwrap();
        assert_eq!(p.stored(), ("prefer_node", Some("a".into()), None));
        let p = Policy::parse("prefer_peer", None, "a", "b").unwrap();
        assert_eq!(p, Policy::PreferNode("b".into()));
        let p = Policy::parse("last_write_wins", Some("updated_at"), "a", "b").unwrap();
        assert_eq!(
            Policy::from_stored(p.stored().0, p.stored().1, p.stored().2),
            p
        );
        assert!(matches!(
            Policy::parse("newest", None, "a", "b"),
            Err(PolicyError::UnknownPolicy(_))
        ));
        assert!(matches!(
            Policy::parse("manual", Some("updated_at"), "a", "b"),
            Err(PolicyError::VersionWithoutLww)
        ));
    }
}
