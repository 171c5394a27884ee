//! synclink: keep a table identical in two or more PostgreSQL databases.
//!
//! Capture (generated statement triggers) → ship (one INSERT per chunk into the peer's inbox
//! through postgres_fdw) → apply (set-based upsert/delete on the receiving node).

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod apply;
mod capture;
mod conninfo;
mod db;
mod error;
mod link;
mod node;
mod peer;
mod remote;
mod ship;
mod sql;
mod teardown;

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);

/// Internal functions (`schema = "synclink"`) are declared against this schema; the tables in
/// it come from sql/schema.sql.
#[pg_schema]
mod synclink {}
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn node_name_is_derived_from_the_database() {
        let name = Spi::get_one::<String>("SELECT sync_node_name()").unwrap().unwrap();
        assert!(name.starts_with("pgrx_tests_"), "{name}");
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
