//! The checked apply statement: one statement per run of records that locks nothing it does
//! not write, compares each record's base version with the row's version here, decides every
//! conflict by the link's policy, writes the winners, stamps their versions and logs the
//! conflicts.

use crate::catalog::policy::Policy;
use crate::data::apply::{compared, ApplySpec};
use crate::pg::error::raise;
use crate::pg::sql::{ident, join, literal};

/// What the checked apply statement needs beyond the plain upsert's spec.
pub struct CheckedSpec<'a> {
    pub apply: &'a ApplySpec<'a>,
    pub link_id: i32,
    pub peer_name: &'a str,
    pub version_table: &'a str,
    pub policy: &'a Policy,
}

/// Lock the rows a run of records touches before the checked statement reads them: a local
/// writer holding one finishes first, and the statement (with a new snapshot) sees its row
/// and its version together.
pub fn lock_sql(spec: &ApplySpec) -> String {
    format!(
        "SELECT FROM {table} t JOIN unnest($1::{row}[]) r ON {cond} FOR UPDATE OF t",
        table = spec.table,
        row = spec.row_type,
        cond = join(spec.key, " AND ", |k| format!(
            "t.{k} = r.{k}",
            k = ident(k)
        )),
    )
}

/// The statement that applies a run of records ($1 rows, $2 their stamps) as one: per key the
/// last version sent is compared with the row here and the policy decides; winners are
/// upserted (or deleted, for a delete run) and take the incoming version, conflicts are
/// logged. A version this node holds already is the same change delivered again and is
/// skipped. It returns how many rows it expected to insert but found inserted meanwhile by
/// someone else (the caller refuses the run then, so it is delivered again).
pub fn checked_apply_sql(c: &CheckedSpec, delete: bool, single: bool) -> String {
    let spec = c.apply;
    let key = spec.key;
    let rest: Vec<&String> = spec.columns.iter().filter(|x| !key.contains(x)).collect();
    let keys = |alias: &str| join(key, ", ", |k| format!("{alias}{}", ident(k)));
    let on = |a: &str, b: &str| join(key, " AND ", |k| format!("{a}.{k} = {b}.{k}", k = ident(k)));
    let meta = "\"synclink$at\", \"synclink$node\", \"synclink$base_at\", \"synclink$base_node\", \"synclink$op\", \"synclink$ord\"";
    let cols = join(spec.columns, ", ", |x| ident(x));
    let incoming_row = |alias: &str| {
        format!(
            "ROW({})::{}",
            join(spec.columns, ", ", |x| format!("{alias}{}", ident(x))),
            spec.row_type
        )
    };
    let key_json = format!(
        "jsonb_build_object({})",
        join(key, ", ", |k| format!("{}, d.{}", literal(k), ident(k)))
    );
    let here_hash = "coalesce(md5(to_jsonb(d.\"synclink$here\")::text), 'absent')".to_string();
    let incoming_hash = |alias: &str| {
        if delete {
            "'absent'".to_string()
        } else {
            format!("md5(to_jsonb({})::text)", incoming_row(alias))
        }
    };
    let differing = if delete {
        format!("ARRAY[{}]", join(spec.columns, ", ", |x| literal(x)))
    } else {
        format!(
            "CASE WHEN NOT d.\"synclink$exists\" THEN ARRAY[{all}]::text[]\n\
             \x20                ELSE array_remove(ARRAY[{each}]::text[], NULL) END",
            all = join(spec.columns, ", ", |x| literal(x)),
            each = join(&rest, ", ", |x| {
                let (h, i) = (
                    compared(spec, "(d.\"synclink$here\")", x),
                    compared(spec, "d", x),
                );
                format!("CASE WHEN {h} IS DISTINCT FROM {i} THEN {} END", literal(x))
            }),
        )
    };
    let stamp_order = "(c.\"synclink$at\", c.\"synclink$node\") > \
                       (coalesce(c.\"synclink$here_at\", -1), coalesce(c.\"synclink$here_node\", ''))";
    let remembered = format!(
        "(SELECT r.kept FROM synclink.resolution r\n\
         \x20          WHERE r.link_id = {id} AND r.key = {key_json}\n\
         \x20            AND r.rows = ARRAY[least({here_hash}, {incoming}), greatest({here_hash}, {incoming})])",
        id = c.link_id,
        incoming = incoming_hash("d."),
    );
    let wins = match c.policy {
        Policy::LastWriteWins {
            version_column: Some(vc),
        } if !delete => format!(
            "CASE WHEN c.\"synclink$exists\" AND c.{v} IS NOT NULL AND (c.\"synclink$here\").{v} IS NOT NULL\n\
             \x20                      AND c.{v} <> (c.\"synclink$here\").{v}\n\
             \x20                 THEN c.{v} > (c.\"synclink$here\").{v}\n\
             \x20                 ELSE {stamp_order} END",
            v = ident(vc)
        ),
        Policy::LastWriteWins { .. } => stamp_order.to_string(),
        Policy::PreferNode(node) => format!("c.\"synclink$node\" = {}", literal(node)),
        Policy::Manual => "false".into(),
    };
    let write = if delete {
        format!(
            "DELETE FROM {table} t USING w WHERE {cond}\n\
             \x20   RETURNING false AS \"synclink$raced\"",
            table = spec.table,
            cond = on("t", "w"),
        )
    } else {
        let action = if rest.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!(
                "DO UPDATE SET {}\n\
                 \x20    WHERE ({}) IS DISTINCT FROM ({})",
                join(&rest, ", ", |x| format!("{x} = EXCLUDED.{x}", x = ident(x))),
                join(&rest, ", ", |x| compared(spec, "t", x)),
                join(&rest, ", ", |x| compared(spec, "EXCLUDED", x)),
            )
        };
        format!(
            "INSERT INTO {table} AS t ({cols}) OVERRIDING SYSTEM VALUE\n\
             \x20   SELECT {w_cols} FROM w ORDER BY w.\"synclink$ord\"\n\
             \x20   ON CONFLICT ({keys}) {action}\n\
             \x20   RETURNING t.xmax::text <> '0' AND NOT EXISTS (SELECT FROM w WHERE {w_match} AND w.\"synclink$exists\") AS \"synclink$raced\"",
            table = spec.table,
            w_cols = join(spec.columns, ", ", |x| format!("w.{}", ident(x))),
            keys = keys(""),
            w_match = on("w", "t"),
        )
    };
    let records = format!(
        "unnest($1::{row}[], $2::synclink.stamp[]) WITH ORDINALITY AS x({cols}, {meta})",
        row = spec.row_type
    );
    // A single record holds each key once (it comes from one statement); a run of records
    // may change a key several times.
    let m = if single {
        format!(
            "\x20 SELECT x.*, x.\"synclink$base_at\" AS \"synclink$first_at\",\n\
             \x20        x.\"synclink$base_node\" AS \"synclink$first_node\", x.\"synclink$op\" AS \"synclink$first_op\"\n\
             \x20   FROM {records}"
        )
    } else {
        format!(
            "\x20 -- per key: the last version sent, and the base of the first change in this run\n\
             \x20 SELECT DISTINCT ON ({m_keys}) x.*,\n\
             \x20        first_value(x.\"synclink$base_at\") OVER w AS \"synclink$first_at\",\n\
             \x20        first_value(x.\"synclink$base_node\") OVER w AS \"synclink$first_node\",\n\
             \x20        first_value(x.\"synclink$op\") OVER w AS \"synclink$first_op\"\n\
             \x20   FROM {records}\n\
             \x20 WINDOW w AS (PARTITION BY {m_keys} ORDER BY x.\"synclink$ord\")\n\
             \x20  ORDER BY {m_keys}, x.\"synclink$ord\" DESC",
            m_keys = keys("x."),
        )
    };
    format!(
        "WITH m AS (\n\
         {m}\n\
         ), c AS (\n\
         \x20 SELECT m.*, t.{k0} IS NOT NULL AS \"synclink$exists\",\n\
         \x20        CASE WHEN t.{k0} IS NOT NULL THEN ROW({t_cols})::{row} END AS \"synclink$here\",\n\
         \x20        v.\"synclink$at\" AS \"synclink$here_at\", v.\"synclink$node\" AS \"synclink$here_node\",\n\
         \x20        (v.\"synclink$at\", v.\"synclink$node\") IS NOT DISTINCT FROM (m.\"synclink$at\", m.\"synclink$node\")\n\
         \x20            AS \"synclink$seen\",\n\
         \x20        (v.\"synclink$at\", v.\"synclink$node\") IS DISTINCT FROM (m.\"synclink$first_at\", m.\"synclink$first_node\")\n\
         \x20        AND (v.\"synclink$at\", v.\"synclink$node\") IS DISTINCT FROM (m.\"synclink$at\", m.\"synclink$node\")\n\
         \x20            AS \"synclink$conflict\"\n\
         \x20   FROM m LEFT JOIN {table} t ON {t_on} LEFT JOIN {vt} v ON {v_on}\n\
         ), d AS (\n\
         \x20 SELECT c.*, NOT c.\"synclink$conflict\" OR coalesce({wins}, false) AS \"synclink$wins\"\n\
         \x20   FROM c\n\
         ), r AS (\n\
         \x20 SELECT d.*, CASE WHEN d.\"synclink$conflict\" THEN {remembered} END AS \"synclink$remembered\"\n\
         \x20   FROM d\n\
         ), e AS (\n\
         \x20 SELECT r.*, CASE WHEN r.\"synclink$remembered\" IS NULL THEN r.\"synclink$wins\"\n\
         \x20                  ELSE r.\"synclink$remembered\" = {incoming_hash_r} END AS \"synclink$applies\"\n\
         \x20   FROM r\n\
         ), w AS (\n\
         \x20 SELECT * FROM e WHERE e.\"synclink$applies\" AND NOT e.\"synclink$seen\"\n\
         ), written AS (\n\
         \x20 {write}\n\
         ), versions AS (\n\
         \x20 INSERT INTO {vt} AS v ({vt_keys}, \"synclink$at\", \"synclink$node\")\n\
         \x20 SELECT {w_keys}, w.\"synclink$at\", w.\"synclink$node\" FROM w\n\
         \x20 ON CONFLICT ({vt_keys}) DO UPDATE\n\
         \x20    SET \"synclink$at\" = EXCLUDED.\"synclink$at\", \"synclink$node\" = EXCLUDED.\"synclink$node\"\n\
         ), superseded AS (\n\
         \x20 UPDATE synclink.conflict o SET outcome = 'superseded'\n\
         \x20   FROM e d WHERE d.\"synclink$conflict\" AND o.outcome = 'open'\n\
         \x20    AND o.link_id = {id} AND o.key = {key_json}\n\
         ), logged AS (\n\
         \x20 INSERT INTO synclink.conflict (link_id, relid, peer_name, key, kind, policy, local_row, peer_row,\n\
         \x20                               columns, local_version, peer_version, outcome)\n\
         \x20 SELECT {id}, {relid}::regclass, {peer}, {key_json},\n\
         \x20        CASE WHEN d.\"synclink$first_op\" = 'I' AND d.\"synclink$exists\" THEN 'insert_exists'\n\
         \x20             WHEN {delete} AND NOT d.\"synclink$exists\" THEN 'delete_missing'\n\
         \x20             WHEN {delete} THEN 'delete_changed'\n\
         \x20             WHEN NOT d.\"synclink$exists\" THEN 'update_missing'\n\
         \x20             ELSE 'update_changed' END,\n\
         \x20        {policy}, to_jsonb(d.\"synclink$here\"), {peer_row},\n\
         \x20        {differing},\n\
         \x20        ROW(d.\"synclink$here_at\", d.\"synclink$here_node\", NULL, NULL, NULL)::synclink.stamp,\n\
         \x20        ROW(d.\"synclink$at\", d.\"synclink$node\", d.\"synclink$first_at\", d.\"synclink$first_node\", d.\"synclink$first_op\")::synclink.stamp,\n\
         \x20        CASE WHEN d.\"synclink$remembered\" IS NOT NULL THEN 'remembered'\n\
         \x20             WHEN {manual} THEN 'open'\n\
         \x20             WHEN d.\"synclink$applies\" THEN 'applied' ELSE 'kept' END\n\
         \x20   FROM e d WHERE d.\"synclink$conflict\"\n\
         )\n\
         SELECT count(*) FILTER (WHERE \"synclink$raced\") FROM written",
        row = spec.row_type,
        k0 = ident(&key[0]),
        t_cols = join(spec.columns, ", ", |x| format!("t.{}", ident(x))),
        table = spec.table,
        t_on = on("t", "m"),
        vt = c.version_table,
        v_on = on("v", "m"),
        incoming_hash_r = incoming_hash("r."),
        remembered = remembered,
        vt_keys = keys(""),
        w_keys = keys("w."),
        id = c.link_id,
        relid = literal(&spec.table),
        peer = literal(c.peer_name),
        delete = delete,
        policy = literal(&c.policy.label()),
        peer_row = if delete {
            "NULL::jsonb".to_string()
        } else {
            format!("to_jsonb({})", incoming_row("d."))
        },
        manual = matches!(c.policy, Policy::Manual),
    )
}

pub fn concurrent_insert(table: &str) -> ! {
    raise(super::ApplyError::ConcurrentInsert {
        table: table.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn checked(policy: Policy, delete: bool) -> String {
        checked_as(policy, delete, false)
    }

    fn checked_as(policy: Policy, delete: bool, single: bool) -> String {
        let cols = strings(&["id", "name", "updated_at"]);
        let key = strings(&["id"]);
        let spec = ApplySpec {
            table: "\"public\".\"p\"".into(),
            row_type: "synclink.\"p_b_row\"",
            columns: &cols,
            key: &key,
            text_compare: &[],
        };
        checked_apply_sql(
            &CheckedSpec {
                apply: &spec,
                link_id: 3,
                peer_name: "b",
                version_table: "synclink.\"p_b_version\"",
                policy: &policy,
            },
            delete,
            single,
        )
    }

    #[test]
    fn only_a_run_of_records_is_reduced_to_each_keys_last_version() {
        let run = checked_as(Policy::Manual, false, false);
        assert!(run.contains("SELECT DISTINCT ON (x.\"id\") x.*"), "{run}");
        assert!(
            run.contains("first_value(x.\"synclink$base_at\") OVER w"),
            "{run}"
        );
        let one = checked_as(Policy::Manual, false, true);
        assert!(!one.contains("DISTINCT ON"), "{one}");
        assert!(
            one.contains("x.\"synclink$base_at\" AS \"synclink$first_at\""),
            "{one}"
        );
        // Everything after the records' CTE is the same statement.
        let tail = |sql: &str| sql[sql.find("), c AS (").unwrap()..].to_string();
        assert_eq!(tail(&run), tail(&one));
    }

    #[test]
    fn a_conflict_is_a_version_here_other_than_the_base_sent() {
        let sql = checked(Policy::Manual, false);
        assert!(sql.contains("(v.\"synclink$at\", v.\"synclink$node\") IS DISTINCT FROM (m.\"synclink$first_at\", m.\"synclink$first_node\")"), "{sql}");
        assert!(
            sql.contains("NOT c.\"synclink$conflict\" OR coalesce(false, false)"),
            "{sql}"
        );
        assert!(sql.contains("WHEN true THEN 'open'"), "{sql}");
        assert!(
            sql.contains("INSERT INTO \"public\".\"p\" AS t (\"id\", \"name\", \"updated_at\")"),
            "{sql}"
        );
    }

    #[test]
    fn last_write_wins_compares_the_version_column_then_the_stamp() {
        let sql = checked(
            Policy::LastWriteWins {
                version_column: Some("updated_at".into()),
            },
            false,
        );
        assert!(
            sql.contains("THEN c.\"updated_at\" > (c.\"synclink$here\").\"updated_at\""),
            "{sql}"
        );
        assert!(sql.contains("ELSE (c.\"synclink$at\", c.\"synclink$node\") > (coalesce(c.\"synclink$here_at\", -1), coalesce(c.\"synclink$here_node\", ''))"), "{sql}");
    }

    #[test]
    fn prefer_node_asks_where_the_change_was_made() {
        let sql = checked(Policy::PreferNode("shop_a".into()), true);
        assert!(sql.contains("c.\"synclink$node\" = 'shop_a'"), "{sql}");
        assert!(
            sql.contains("DELETE FROM \"public\".\"p\" t USING w WHERE t.\"id\" = w.\"id\""),
            "{sql}"
        );
        assert!(sql.contains("'prefer_node:shop_a'"), "{sql}");
    }
}
