//! synclink: keep a table identical in two or more PostgreSQL databases.
//!
//! The folders are the architecture, and each uses only the ones below it:
//!
//! - `api/` — every function a user calls (and the server side of peer requests); errors
//!   become PostgreSQL errors there;
//! - `control/` — making and removing peers, links, shared sequences; DDL guards; teardown;
//! - `reconcile/` — resolving conflicts, diff and repair, a new link's copy;
//! - `data/` — the data path in travel order: wire format, capture, queue, ship, worker, apply;
//! - `rpc/` — the requests nodes send each other;
//! - `catalog/` — node, peers, links, policies, table descriptions;
//! - `pg/` — SPI, settings, subtransactions, remote calls, roles, errors, FFI.

// The #[pg_extern] functions return pgrx's ErrorReport, the one error type whose SQLSTATE,
// detail and hint pgrx keeps, and which is large; it is made once, as a function returns with
// an error, and pgrx's generated wrappers (where the lint fires too) cannot be annotated.
#![allow(clippy::result_large_err)]

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod api;
mod catalog;
mod control;
mod data;
mod pg;
mod reconcile;
mod rpc;

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    data::queue::init_gucs();
    control::clone::init_gucs();
    data::worker::init();
}

/// Internal functions (`schema = "synclink"`) are declared against this schema; the tables in
/// it come from sql/schema.sql.
#[pg_schema]
mod synclink {
    use crate::pg::error::OrRaise;
    use pgrx::prelude::*;

    // The triggers raise the data path's errors themselves, as PostgreSQL errors: pgrx's
    // trigger wrapper would turn an `Err` returned to it into a Rust panic (XX000).

    /// The inbox's row trigger (sql/finalize.sql): applies or holds each delivered change
    /// record, and stores nothing.
    #[pg_trigger]
    fn receive<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
        crate::data::apply::receive(trigger).or_raise();
        Ok(None)
    }

    /// The outbox's statement trigger (sql/finalize.sql): wakes the delivery worker at commit
    /// and watches the backlog, whoever queued the changes.
    #[pg_trigger]
    fn queued<'a>(
        _trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
        crate::data::queue::after_queueing().or_raise();
        Ok(None)
    }
}
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Each case runs one statement that must fail with the given message.
    macro_rules! rejects {
        ($($name:ident: $sql:expr => $expected:literal;)*) => {$(
            #[pg_test]
            #[should_panic(expected = $expected)]
            fn $name() {
                Spi::run("CREATE TABLE IF NOT EXISTS keyed (id int PRIMARY KEY, v text)").unwrap();
                Spi::run("CREATE TABLE IF NOT EXISTS keyless (id int, v text)").unwrap();
                Spi::run($sql).unwrap();
            }
        )*};
    }

    rejects! {
        link_without_any_peer: "SELECT sync_link_table('keyed')" => "no peer is registered";
        link_with_unknown_peer: "SELECT sync_link_table('keyed', 'nobody')" => "peer \"nobody\" does not exist";
        unlink_with_unknown_peer: "SELECT sync_unlink_table('keyed', 'nobody')" => "peer \"nobody\" does not exist";
        peer_name_with_capitals: "SELECT sync_add_peer('Legacy', 'host=x')" => "invalid peer name \"Legacy\"";
        peer_name_with_quote: "SELECT sync_add_peer('a\"b', 'host=x')" => "invalid peer name";
        conninfo_without_equals: "SELECT sync_add_peer('x', 'host localhost')" => "invalid connection string";
        conninfo_as_uri: "SELECT sync_add_peer('x', 'postgresql://u:p@h/d')" => "URIs are not accepted";
        conninfo_client_encoding: "SELECT sync_add_peer('x', 'client_encoding=latin1')" => "not supported by synclink";
        drop_unknown_peer: "SELECT sync_drop_peer('nobody')" => "peer \"nobody\" does not exist";
        node_name_with_space: "SELECT sync_set_node_name('a b')" => "invalid node name";
        apply_from_unknown_node: "SELECT synclink.apply('x', 'x', 'public', 'keyed', 'I', '{}', NULL)" => "change from unknown node \"x\"";
        request_from_unknown_node: "SELECT synclink.handle_request('x', 'link', '{}', NULL)" => "node \"x\" is not registered as a peer here";
    }

    #[pg_test]
    fn node_name_is_derived_from_the_database() {
        let name = Spi::get_one::<String>("SELECT sync_node_name()")
            .unwrap()
            .unwrap();
        assert!(name.starts_with("pgrx_tests_"), "{name}");
        assert_eq!(name.len(), "pgrx_tests_".len() + 6);
    }

    #[pg_test]
    fn node_can_be_renamed_while_nothing_is_linked() {
        Spi::run("SELECT sync_set_node_name('eu-west.1')").unwrap();
        let name = Spi::get_one::<String>("SELECT sync_node_name()")
            .unwrap()
            .unwrap();
        assert_eq!(name, "eu-west.1");
    }

    #[pg_test]
    fn nothing_is_being_applied_outside_apply() {
        let applying =
            Spi::get_one::<bool>("SELECT synclink.applying_from(sync_node_name())").unwrap();
        assert_eq!(applying, Some(false));
    }

    #[pg_test]
    fn the_data_path_is_closed_to_public() {
        let open = Spi::get_one::<i64>(
            "SELECT count(*) FROM (VALUES ('synclink.apply(text,text,text,text,\"char\",text,text,bigint,bigint,text)'),
                    ('synclink.ship(integer,\"char\",text,text,text)'), ('synclink.handle_request(text,text,jsonb,bytea)'),
                    ('synclink.next_outbox_seq()')) f(sig)
              WHERE has_function_privilege('public', sig, 'EXECUTE')",
        )
        .unwrap();
        assert_eq!(open, Some(0));
        let inbox = Spi::get_one::<bool>(
            "SELECT has_table_privilege('public', 'synclink.inbox', 'INSERT')",
        )
        .unwrap();
        assert_eq!(inbox, Some(false));
    }
}
