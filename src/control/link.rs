//! Linking a table with a peer: validation on both sides, the objects each side makes
//! (row type, capture function, statement triggers where the half sends, version table), and
//! the requests that make the peer set up or take down its half, so one call links or unlinks
//! both nodes.

use crate::catalog::link::{
    column_differences, describe, find, lookup, same_set, Column, Direction, Link, LinkError,
    TableInfo,
};
use crate::catalog::peer::{self, Peer, PeerError};
use crate::catalog::policy::Policy;
use crate::data::capture::statement::{self as capture, CaptureSpec, Target};
use crate::pg::error::{notice, Result};
use crate::pg::spi::{need, Missing};
use crate::pg::sql::{ident, join, object_name, qualified};
use crate::rpc::{LinkReply, LinkRequest, UnlinkRequest};
use pgrx::prelude::*;

/// A name in schema synclink not yet taken by a type or function.
fn free_name(base: &str, suffix: &str, id: i32) -> Result<String> {
    let taken = |n: &str| -> Result<bool> {
        Ok(Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_type WHERE typname = $1 AND typnamespace = 'synclink'::regnamespace) \
                 OR EXISTS (SELECT 1 FROM pg_proc WHERE proname = $1 AND pronamespace = 'synclink'::regnamespace)",
            &[n.into()],
        )?
        .unwrap_or(false))
    };
    let name = object_name(base, suffix, id);
    if !taken(&name)? {
        return Ok(name);
    }
    Ok(object_name(&format!("{base}_{id}"), suffix, id))
}

/// Make this node's half of a link and record it. Both sides use the same wire column order.
/// `req` describes the link as the initiating node sent it; `peer_table` is the peer's
/// (schema, table) as seen from this node; `direction` the link seen from this node: a half
/// that sends nothing gets no capture triggers (its version table and capture function are
/// made all the same, so that the link's objects are the same whichever way it goes).
fn create_local(
    info: &TableInfo,
    peer: &Peer,
    req: &LinkRequest,
    peer_table: (&str, &str),
    direction: Direction,
) -> Result<i32> {
    let (wire, key) = (&req.columns, &req.key[..]);
    let (initiator, mode) = (req.initiator.as_str(), req.mode.as_str());
    let (peer_schema, peer_table) = peer_table;
    let id = Spi::get_one::<i32>("SELECT nextval('synclink.link_link_id_seq')::int")?
        .ok_or(Missing("next link id"))?;
    let base = format!("{}_{}", info.name, peer.name);
    let row_type = qualified("synclink", &free_name(&base, "row", id)?);
    // The table's capture function and version table are its links' together: made with its
    // first link, named after the table.
    let shared = Spi::connect(|c| {
        c.select(
            "SELECT capture_function, version_table FROM synclink.link \
              WHERE relid = $1::oid::regclass ORDER BY link_id LIMIT 1",
            None,
            &[info.oid.into()],
        )?
        .next()
        .map(|r| {
            Ok::<_, crate::pg::error::Error>((
                need::<String>(&r, 1, "link capture_function")?,
                need::<String>(&r, 2, "link version_table")?,
            ))
        })
        .transpose()
    })?;
    // Our own type of a column the link sends (validated by the caller to exist here).
    let type_of = |name: &String| -> Result<String, LinkError> {
        match info.columns.iter().find(|c| &c.wire.name == name) {
            Some(c) => Ok(c.wire.type_name.clone()),
            None => Err(LinkError::NoSuchColumn {
                column: name.clone(),
                table: info.display(),
            }),
        }
    };
    // Our own column types, in the agreed order: the peer's text form is parsed into these.
    let attrs = wire
        .iter()
        .map(|w| Ok(format!("{} {}", ident(&w.name), type_of(&w.name)?)))
        .collect::<Result<Vec<_>, LinkError>>()?
        .join(", ");
    Spi::run(&format!("CREATE TYPE {row_type} AS ({attrs})"))?;
    let (function, version_table) = match shared {
        Some(names) => names,
        None => {
            let function = qualified("synclink", &free_name(&info.name, "capture", id)?);
            let version_table = qualified("synclink", &free_name(&info.name, "version", id)?);
            let keys = key
                .iter()
                .map(|k| Ok(format!("{} {}", ident(k), type_of(k)?)))
                .collect::<Result<Vec<_>, LinkError>>()?
                .join(", ");
            make_version_table(&version_table, &keys, key, info)?;
            (function, version_table)
        }
    };
    let columns: Vec<String> = wire.iter().map(|w| w.name.clone()).collect();
    Spi::run_with_args(
        "INSERT INTO synclink.link (link_id, relid, peer_name, peer_schema, peer_table, columns, \
             key_columns, initiator, row_type, capture_function, triggers, mode, excluded, \
             version_table, conflict, prefer_node, version_column, generator, direction) \
         VALUES ($1, $2::oid::regclass, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        &[
            id.into(),
            info.oid.into(),
            peer.name.as_str().into(),
            peer_schema.into(),
            peer_table.into(),
            columns.into(),
            key.to_vec().into(),
            initiator.into(),
            row_type.as_str().into(),
            function.as_str().into(),
            Vec::<String>::new().into(),
            mode.into(),
            req.exclude.clone().into(),
            version_table.as_str().into(),
            req.conflict.as_str().into(),
            req.prefer_node.clone().into(),
            req.version_column.clone().into(),
            GENERATOR.into(),
            direction.as_str().into(),
        ],
    )?;
    remake_capture(info.oid, None)?;
    Ok(id)
}

/// A table's version table, shared by its links: per key, the version of the row here.
fn make_version_table(
    version_table: &str,
    keys: &str,
    key: &[String],
    info: &TableInfo,
) -> Result<()> {
    Spi::run(&format!(
        "CREATE TABLE {version_table} ({keys}, \"synclink$at\" bigint NOT NULL, \
         \"synclink$node\" text NOT NULL, \"synclink$base_at\" bigint, \"synclink$base_node\" text, \
         \"synclink$gen\" bigint NOT NULL DEFAULT 0, PRIMARY KEY ({key_list})) WITH (fillfactor = {VERSION_FILLFACTOR})",
        key_list = join(key, ", ", |k| ident(k)),
    ))?;
    describe_version_table(version_table, &info.display())?;
    for stmt in version_table_access(version_table, info.oid) {
        Spi::run(&stmt)?;
    }
    Ok(())
}

/// What a DBA reads of a version table with `\dt+`.
fn describe_version_table(version_table: &str, table: &str) -> Result<()> {
    Spi::run(&format!(
        "COMMENT ON TABLE {version_table} IS {}",
        crate::pg::sql::literal(&format!(
            "synclink: per key of {table}, the version of the row here (microseconds since 1970, \
             node, generation) and, after a change made here or passed on, the version it \
             replaced; shared by the table's links"
        ))
    ))?;
    Ok(())
}

/// Version tables leave half of each page free, so that a statement that changes every row
/// of a page can update their versions on the same page (HOT: no new index entry, far less
/// WAL), the space the versions of the changes before it took being pruned first.
pub const VERSION_FILLFACTOR: u32 = 50;

/// The version of the code that generates a link's objects, recorded with each link so that
/// a DBA (and an upgrade) can tell which links sync_refresh_link should make anew.
pub const GENERATOR: &str = env!("CARGO_PKG_VERSION");

/// A link of a table as the table's capture needs it.
struct Linked {
    id: i32,
    peer_name: String,
    peer_node: String,
    mode: String,
    direction: Direction,
    columns: Vec<String>,
    excluded: Vec<String>,
    key: Vec<String>,
    row_type: String,
    function: String,
    triggers: Vec<String>,
    version_table: String,
    /// its version table and row type are there
    intact: bool,
}

fn links_of(relid: pg_sys::Oid) -> Result<Vec<Linked>> {
    Spi::connect(|c| {
        c.select(
            "SELECT l.link_id, l.peer_name, p.node_name, l.mode, \
                    coalesce(to_jsonb(l) ->> 'direction', 'both'), l.columns, l.key_columns, \
                    l.row_type, l.capture_function, l.triggers, l.version_table, l.excluded, \
                    to_regclass(l.version_table) IS NOT NULL AND to_regtype(l.row_type) IS NOT NULL \
               FROM synclink.link l JOIN synclink.peer p USING (peer_name) \
              WHERE l.relid = $1::oid::regclass ORDER BY l.link_id",
            None,
            &[relid.into()],
        )?
        .map(|r| {
            Ok(Linked {
                id: need(&r, 1, "link id")?,
                peer_name: need(&r, 2, "link peer_name")?,
                peer_node: need(&r, 3, "peer node_name")?,
                mode: need(&r, 4, "link mode")?,
                direction: Direction::parse(&need::<String>(&r, 5, "link direction")?)?,
                columns: need(&r, 6, "link columns")?,
                key: need(&r, 7, "link key_columns")?,
                row_type: need(&r, 8, "link row_type")?,
                function: need(&r, 9, "link capture_function")?,
                triggers: need(&r, 10, "link triggers")?,
                version_table: need(&r, 11, "link version_table")?,
                excluded: need(&r, 12, "link excluded")?,
                intact: need(&r, 13, "link objects")?,
            })
        })
        .collect()
    })
}

/// Make a table's capture anew from the links it has now: one function and one set of
/// statement triggers for all of them, which stamp each change's versions once in the table's
/// one version table and hand its records to every link that sends (a half that only
/// receives gets none; a table whose links all only receive gets no triggers). The table is
/// locked against writes meanwhile, so no statement runs between the old triggers and the
/// new. The function keeps its owner (`owner`, when given, replaces it). Versions kept in a
/// version table of one link (made before the links of a table shared one) are merged into
/// the shared one, the later version of each key kept, and that table dropped.
pub fn remake_capture(relid: pg_sys::Oid, owner: Option<pg_sys::Oid>) -> Result<()> {
    lock_links_of(relid)?;
    let links = links_of(relid)?;
    // The shared objects are the first link's whose version table and row type are there (a
    // link missing them was reported by refresh and is left for its owner to remove).
    let Some(first) = links.iter().find(|l| l.intact) else {
        return Ok(());
    };
    let info = describe(relid)?;
    let table = info.display();
    // One capture stamps one version per key and makes each change's text once for every link
    // (links made before the capture was shared may differ: refused, so that an update fails
    // whole rather than merge versions of different keys or send one link's columns to another).
    if let Some(other) = links.iter().find(|l| !same_set(&l.key, &first.key)) {
        return Err(LinkError::KeyDiffersFromOtherLinks {
            table,
            peer: other.peer_name.clone(),
            key: other.key.join(", "),
        }
        .into());
    }
    if let Some(other) = links.iter().find(|l| l.columns != first.columns) {
        return Err(LinkError::ColumnsDifferFromOtherLinks {
            table,
            peer: other.peer_name.clone(),
            columns: other.columns.join(", "),
            excluded: first.excluded.join(","),
        }
        .into());
    }
    let (function, version_table) = (first.function.clone(), first.version_table.clone());
    let owner = match owner {
        Some(o) => Some(o),
        None => crate::pg::spi::maybe_one::<pg_sys::Oid>(
            "SELECT proowner FROM pg_proc WHERE oid = to_regproc($1)",
            &[function.as_str().into()],
        )?,
    };
    let distinct = |of: &dyn Fn(&Linked) -> Vec<String>| {
        let mut names: Vec<String> = links.iter().flat_map(of).collect();
        names.sort();
        names.dedup();
        names
    };
    crate::control::removal::removing(|| -> Result<()> {
        for t in distinct(&|l| l.triggers.clone()) {
            Spi::run(&format!("DROP TRIGGER IF EXISTS {} ON {table}", ident(&t)))?;
        }
        // A new table's function is not there yet: only what is there is dropped, so that
        // linking says nothing about a function it did not find.
        for f in distinct(&|l| vec![l.function.clone()]) {
            let there = crate::pg::spi::maybe_one::<bool>(
                "SELECT to_regprocedure($1 || '()') IS NOT NULL",
                &[f.as_str().into()],
            )?
            .unwrap_or(false);
            if there {
                Spi::run(&format!("DROP FUNCTION {f}()"))?;
            }
        }
        with_generations(&version_table)?;
        for other in distinct(&|l| vec![l.version_table.clone()]) {
            with_generations(&other)?;
            if other != version_table {
                merge_versions(&other, &version_table, &first.key)?;
            }
        }
        Ok(())
    })?;
    let targets: Vec<Target> = links
        .iter()
        .filter(|l| l.direction.sends())
        .map(|l| Target {
            link_id: l.id,
            peer_name: l.peer_name.clone(),
            peer_node: l.peer_node.clone(),
            queue_only: l.mode == "async",
        })
        .collect();
    let spec = CaptureSpec {
        function: &function,
        table_display: &format!("{}.{}", info.schema, info.name),
        row_type: &first.row_type,
        columns: &first.columns,
        key: &first.key,
        pair_by: info
            .primary_key
            .as_deref()
            .filter(|pk| !same_set(pk, &first.key)),
        node: &crate::catalog::node::local_name()?,
        version_table: &version_table,
        targets: &targets,
        preferred: preferred_here(relid)?,
    };
    // Made during ALTER EXTENSION synclink UPDATE too, but they are the links': not members of
    // the extension (sync_unlink_table must be able to drop them) and their privileges not the
    // extension's initial ones.
    let triggers = crate::pg::ffi::outside_extension_script(|| -> Result<Vec<String>> {
        Spi::run(&capture::function_sql(&spec))?;
        Spi::run(&format!("REVOKE ALL ON FUNCTION {function}() FROM PUBLIC"))?;
        if let Some(owner) = owner {
            Spi::run(&format!(
                "ALTER FUNCTION {function}() OWNER TO {}",
                ident(&crate::pg::privilege::role_name(owner))
            ))?;
        }
        let mut triggers = Vec::new();
        for (name, sql) in capture::trigger_sqls(&table, &spec) {
            Spi::run(&sql)?;
            triggers.push(name);
        }
        Ok(triggers)
    })?;
    Spi::run_with_args(
        "UPDATE synclink.link SET capture_function = $2, triggers = $3, version_table = $4 \
          WHERE relid = $1::oid::regclass",
        &[
            relid.into(),
            function.as_str().into(),
            triggers.into(),
            version_table.as_str().into(),
        ],
    )?;
    Ok(())
}

/// Does a link of the table prefer this node? Its changes then raise their rows' generation
/// (synclink.stamp), which every link of the table compares first, whatever its policy: a
/// node preferred by one link wins wherever the table travels, or the nodes would not agree.
fn preferred_here(relid: pg_sys::Oid) -> Result<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM synclink.link l CROSS JOIN synclink.node n \
                         WHERE l.relid = $1::oid::regclass AND l.conflict = 'prefer_node' \
                           AND l.prefer_node = n.node_name)",
        &[relid.into()],
    )?
    .unwrap_or(false))
}

/// The node the table's links with peers other than `peer` prefer (linking keeps it to one).
fn preferred_by_other_links(relid: pg_sys::Oid, peer: &str) -> Result<Option<String>> {
    Ok(crate::pg::spi::maybe_one::<String>(
        "SELECT min(prefer_node) FROM synclink.link \
          WHERE relid = $1::oid::regclass AND peer_name <> $2 AND conflict = 'prefer_node'",
        &[relid.into(), peer.into()],
    )?)
}

/// The one node the table prefers once the link asking for `asked` is made, where the table's
/// other links prefer `here`: a second preferred node is refused, since both would raise the
/// rows' generations and neither would win as its links say. None: no node is preferred.
fn one_preferred_node(
    table: &str,
    here: Option<String>,
    asked: Option<&str>,
) -> Result<Option<String>> {
    match (here, asked) {
        (Some(here), Some(asked)) if here != asked => Err(LinkError::OtherPreferredNode {
            table: table.into(),
            node: crate::catalog::node::local_name()?,
            preferred: here,
            asked: asked.into(),
        }
        .into()),
        (here, asked) => Ok(here.or(asked.map(str::to_string))),
    }
}

/// Give a version table made before 0.6.0 its generation column (every version it holds was
/// made without a preferred node: 0). The update to 0.6.0 adds it; an update from an older
/// version makes capture anew with this code before that, on the tables as they were.
fn with_generations(version_table: &str) -> Result<()> {
    let missing = Spi::get_one_with_args::<bool>(
        "SELECT to_regclass($1) IS NOT NULL AND NOT EXISTS (SELECT FROM pg_attribute \
          WHERE attrelid = to_regclass($1) AND attname = 'synclink$gen' AND NOT attisdropped)",
        &[version_table.into()],
    )?
    .unwrap_or(false);
    if missing {
        Spi::run(&format!(
            "ALTER TABLE {version_table} ADD COLUMN \"synclink$gen\" bigint NOT NULL DEFAULT 0"
        ))?;
    }
    Ok(())
}

/// Move the versions of `from` into `into` (the later of the two for a key present in both,
/// by the order every node compares versions in) and drop `from`.
fn merge_versions(from: &str, into: &str, key: &[String]) -> Result<()> {
    if Spi::get_one_with_args::<bool>("SELECT to_regclass($1) IS NULL", &[from.into()])?
        .unwrap_or(true)
    {
        return Ok(());
    }
    let keys = join(key, ", ", |k| ident(k));
    Spi::run(&format!(
        "INSERT INTO {into} AS v ({keys}, \"synclink$at\", \"synclink$node\", \"synclink$base_at\", \"synclink$base_node\", \"synclink$gen\")\n\
         SELECT {keys}, \"synclink$at\", \"synclink$node\", \"synclink$base_at\", \"synclink$base_node\", \"synclink$gen\" FROM {from}\n\
         ON CONFLICT ({keys}) DO UPDATE\n\
            SET \"synclink$at\" = EXCLUDED.\"synclink$at\", \"synclink$node\" = EXCLUDED.\"synclink$node\",\n\
                \"synclink$base_at\" = EXCLUDED.\"synclink$base_at\", \"synclink$base_node\" = EXCLUDED.\"synclink$base_node\",\n\
                \"synclink$gen\" = EXCLUDED.\"synclink$gen\"\n\
          WHERE (EXCLUDED.\"synclink$gen\", EXCLUDED.\"synclink$at\", EXCLUDED.\"synclink$node\")\n\
                > (v.\"synclink$gen\", v.\"synclink$at\", v.\"synclink$node\")"
    ))?;
    Spi::run(&format!("DROP TABLE {from}"))?;
    Ok(())
}

/// Make a link's generated code anew with the code installed now (after an upgrade, or after
/// someone changed it by hand), in place: the table keeps its rows, the version table its
/// versions and the outbox its queued changes. The capture is the table's, so it is made anew
/// for every link of the table. A link whose version table or row type is gone is left as it
/// is, with a WARNING (false).
pub fn refresh(link_id: i32) -> Result<bool> {
    let row = Spi::connect(|c| {
        c.select(
            "SELECT l.relid::oid, l.peer_name, l.row_type, l.version_table, \
                    EXISTS (SELECT FROM synclink.link o \
                             WHERE o.relid = l.relid AND o.initiator = n.node_name), \
                    (SELECT f.proowner FROM pg_proc f WHERE f.oid = to_regproc(l.capture_function)), \
                    to_regclass(l.version_table) IS NOT NULL AND to_regtype(l.row_type) IS NOT NULL, \
                    l.initiator = n.node_name \
               FROM synclink.link l CROSS JOIN synclink.node n \
              WHERE l.link_id = $1",
            None,
            &[link_id.into()],
        )?
        .next()
        .map(|r| -> Result<_> {
            Ok((
                need::<pg_sys::Oid>(&r, 1, "link relid")?,
                need::<String>(&r, 2, "link peer_name")?,
                need::<String>(&r, 3, "link row_type")?,
                need::<String>(&r, 4, "link version_table")?,
                need::<bool>(&r, 5, "link initiator")?,
                r.get::<pg_sys::Oid>(6)?,
                need::<bool>(&r, 7, "link objects")?,
                need::<bool>(&r, 8, "link initiator")?,
            ))
        })
        .transpose()
    })?;
    let Some((
        relid,
        peer_name,
        row_type,
        version_table,
        initiated_here,
        function_owner,
        intact,
        link_made_here,
    )) = row
    else {
        return Ok(false);
    };
    let table = describe(relid)?.display();
    if !intact {
        // Making the rest anew would fail on what is missing, and with it an update of the
        // extension: the link stays as it is, for sync_status to report and its owner to remove.
        crate::pg::error::warning(
            &format!(
                "the link of {table} with peer \"{peer_name}\" was not made anew: its version table or row type is missing"
            ),
            &format!(
                "SELECT sync_unlink_table('{table}', '{peer_name}', discard_queued => true) removes what is left of it; link the table again afterwards."
            ),
        );
        return Ok(false);
    }
    // Owned as sync_link_table makes them: where a link of the table was made on this node, by
    // the role that made the capture (kept from the function made before, else the table's
    // owner, never the caller, who may be a superuser running the update: the function is
    // SECURITY DEFINER); where every link of it was made from a peer, by the extension's owner,
    // as the peer's requests make them. Decided for the table, since the capture is its
    // links' together, so that refreshing one link does not hand the others' capture to
    // another role.
    let owner = match (initiated_here, function_owner) {
        (true, Some(owner)) => owner,
        (true, None) => crate::pg::privilege::table_owner(relid),
        (false, _) => crate::pg::privilege::extension_owner()?,
    };
    crate::control::removal::removing(|| {
        Spi::run(&format!(
            "DROP POLICY IF EXISTS owner_of_the_table ON {version_table}"
        ))
    })?;
    crate::pg::ffi::outside_extension_script(|| -> Result<()> {
        for stmt in version_table_access(&version_table, relid) {
            Spi::run(&stmt)?;
        }
        describe_version_table(&version_table, &table)?;
        let owner = ident(&crate::pg::privilege::role_name(owner));
        if !initiated_here {
            Spi::run(&format!("ALTER TABLE {version_table} OWNER TO {owner}"))?;
        }
        // The row type is the link's own: made by the peer's request where the peer made it.
        if !link_made_here {
            let extension_owner = crate::pg::privilege::extension_owner()?;
            Spi::run(&format!(
                "ALTER TYPE {row_type} OWNER TO {}",
                ident(&crate::pg::privilege::role_name(extension_owner))
            ))?;
        }
        Ok(())
    })?;
    remake_capture(relid, Some(owner))?;
    Spi::run_with_args(
        "UPDATE synclink.link SET generator = $2 WHERE link_id = $1",
        &[link_id.into(), GENERATOR.into()],
    )?;
    Ok(true)
}

/// sync_refresh_link: the links of `relid` (with `peer`, or with every peer) made anew.
pub fn refresh_table(relid: pg_sys::Oid, peer: Option<&str>) -> Result<i32> {
    let ids = crate::pg::spi::column::<i32>(
        "SELECT link_id FROM synclink.link WHERE relid = $1 AND ($2::text IS NULL OR peer_name = $2) \
          ORDER BY link_id",
        &[relid.into(), peer.into()],
    )?;
    if ids.is_empty() {
        let table = describe(relid)?.display();
        return Err(match peer {
            Some(p) => LinkError::NotLinked {
                table,
                peer: p.into(),
            },
            None => LinkError::NotLinkedAtAll(table),
        }
        .into());
    }
    let mut refreshed = 0;
    for id in ids {
        refreshed += i32::from(refresh(id)?);
    }
    Ok(refreshed)
}

/// Row-level security on a link's version table: open to whoever holds the rights of the
/// linked table's owner (`relid`), whoever owns it now.
fn version_table_access(version_table: &str, relid: pg_sys::Oid) -> [String; 3] {
    [
        format!("ALTER TABLE {version_table} ENABLE ROW LEVEL SECURITY"),
        format!(
            "CREATE POLICY owner_of_the_table ON {version_table}\n\
             \x20   USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c\n\
             \x20                                   WHERE c.oid OPERATOR(pg_catalog.=) {relid}::pg_catalog.oid), 'USAGE'))",
            relid = relid.to_u32()
        ),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {version_table} TO PUBLIC"),
    ]
}

/// Lock `relid` (if it still exists) against writes and against other sessions changing its
/// links: its capture is made from all its links, so two sessions linking or unlinking two
/// peers of one table at once would each make it from the links they saw, one without the
/// other's. Taken before the table's links are read; held to the end of the transaction.
/// Reads go on meanwhile (a link's copy may take a while) until the triggers are replaced; the
/// apply of changes from another peer takes its write lock on the table before it reads it, so
/// that it waits here instead of holding a lock the trigger replacement would wait for.
fn lock_links_of(relid: pg_sys::Oid) -> Result<()> {
    let table = crate::pg::spi::maybe_one::<String>(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[relid.into()],
    )?;
    if let Some(table) = table {
        Spi::run(&format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))?;
    }
    Ok(())
}

/// Remove exactly what create_local made.
fn drop_local(link: &Link) -> Result<()> {
    crate::control::removal::removing(|| drop_objects(link))
}

fn drop_objects(link: &Link) -> Result<()> {
    let table = crate::pg::spi::maybe_one::<String>(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[link.relid.into()],
    )?;
    // Open conflicts cannot be settled without the link: closed, not left open for ever.
    Spi::run_with_args(
        "UPDATE synclink.conflict SET outcome = 'unlinked', resolved_at = clock_timestamp() \
          WHERE link_id = $1 AND outcome = 'open'",
        &[link.id.into()],
    )?;
    Spi::run_with_args(
        "DELETE FROM synclink.link WHERE link_id = $1",
        &[link.id.into()],
    )?;
    let others = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM synclink.link WHERE relid = $1::oid::regclass)",
        &[link.relid.into()],
    )?
    .unwrap_or(false);
    match table {
        // The table's capture and versions stay with its other links, without this one.
        Some(_) if others => remake_capture(link.relid, None)?,
        _ => {
            if let Some(table) = table {
                for t in &link.triggers {
                    Spi::run(&format!("DROP TRIGGER IF EXISTS {} ON {table}", ident(t)))?;
                }
            }
            Spi::run(&format!(
                "DROP FUNCTION IF EXISTS {}()",
                link.capture_function
            ))?;
            Spi::run(&format!("DROP TABLE IF EXISTS {}", link.version_table))?;
        }
    }
    Spi::run(&format!("DROP TYPE IF EXISTS {}", link.row_type))?;
    Ok(())
}

/// The key rows are matched by: the given columns, which a unique index over NOT NULL
/// columns must cover exactly, or else the primary key.
fn choose_key(info: &TableInfo, key: Option<Vec<String>>) -> Result<Vec<String>, LinkError> {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return info
            .primary_key
            .clone()
            .ok_or_else(|| LinkError::NoPrimaryKey(info.display()));
    };
    check_columns(info, &key)?;
    if !info.unique_keys.iter().any(|k| same_set(k, &key)) {
        return Err(LinkError::KeyNotUnique {
            table: info.display(),
            key: join(&key, ", ", |c| ident(c)),
        });
    }
    Ok(key)
}

fn check_columns(info: &TableInfo, names: &[String]) -> Result<(), LinkError> {
    match names
        .iter()
        .find(|n| !info.columns.iter().any(|c| &c.wire.name == *n))
    {
        Some(n) => Err(LinkError::NoSuchColumn {
            column: n.clone(),
            table: info.display(),
        }),
        None => Ok(()),
    }
}

/// How sync_link_table was asked to link a table.
pub struct Options<'a> {
    pub mode: &'a str,
    pub direction: &'a str,
    pub key: Option<Vec<String>>,
    pub exclude: Vec<String>,
    pub copy: &'a str,
    /// the policy, and the version column last_write_wins compares first
    pub conflict: (&'a str, Option<&'a str>),
    /// make the table on the peer when it has none
    pub create_missing: bool,
}

pub fn link_table(relid: pg_sys::Oid, peer_name: Option<&str>, options: Options) -> Result<bool> {
    let Options {
        mode,
        direction,
        key,
        exclude,
        copy,
        conflict,
        create_missing,
    } = options;
    crate::data::queue::check_mode(mode)?;
    let direction = Direction::parse(direction)?;
    crate::reconcile::diff::check_copy(copy)?;
    if !direction.allows_copy(copy) {
        return Err(LinkError::CopyAgainstDirection {
            copy: copy.into(),
            direction: direction.as_str(),
        }
        .into());
    }
    let peer = peer::resolve(peer_name)?;
    let info = describe(relid)?;
    info.check_linkable()?;
    lock_links_of(relid)?;
    let key = choose_key(&info, key)?;
    info.check_key_travels(&key)?;
    check_columns(&info, &exclude)?;
    if let Some(k) = exclude.iter().find(|c| key.contains(c)) {
        return Err(LinkError::ExcludedKey(k.clone()).into());
    }
    let sent: Vec<String> = info
        .wire_columns(&exclude)
        .into_iter()
        .map(|c| c.name)
        .collect();
    same_as_other_links(relid, &peer.name, &key, &sent, &info.display())?;
    let local = crate::catalog::node::local_name()?;
    info.check_excluded(&exclude, &local)?;
    let policy = Policy::parse(conflict.0, conflict.1, &local, &peer.node_name)?;
    if let Some(vc) = conflict.1 {
        crate::catalog::policy::check_version_column(relid, vc, &sent)?;
    }
    let (conflict, prefer_node, version_column) = policy.stored();
    let preferred = one_preferred_node(
        &info.display(),
        preferred_by_other_links(relid, &peer.name)?,
        prefer_node.as_deref(),
    )?;
    let body = LinkRequest {
        schema: info.schema.clone(),
        table: info.name.clone(),
        columns: info.wire_columns(&exclude),
        key,
        initiator: local,
        from_schema: info.schema.clone(),
        from_table: info.name.clone(),
        mode: mode.into(),
        exclude,
        conflict: conflict.into(),
        prefer_node,
        version_column,
        direction: direction.as_str().into(),
        preferred,
    };
    if let Some(existing) = find(relid, &peer.name)? {
        let differences = differences_from(existing.id, &body)?;
        if !differences.is_empty() {
            return Err(LinkError::LinkedWithOtherOptions {
                table: info.display(),
                peer: peer.name.clone(),
                differences,
            }
            .into());
        }
        notice(&format!(
            "table {} is already linked with peer \"{}\" this way, skipping",
            info.display(),
            peer.name
        ));
        return Ok(false);
    }
    if create_missing {
        crate::control::create::on_peer(&peer, relid, &body.schema, &body.table)?;
    }
    // Existing rows first, while neither side has its triggers yet: none of it is captured.
    crate::reconcile::diff::copy_for_link(
        &peer,
        &body.schema,
        &body.table,
        body.columns.iter().map(|c| c.name.clone()).collect(),
        body.key.clone(),
        copy,
    )?;
    // Links pair tables of the same name, so the peer's table is called as ours.
    create_local(&info, &peer, &body, (&body.schema, &body.table), direction)?;
    let reply = crate::rpc::call(&peer, &body)?;
    // A peer that does not know directions made a both-ways half: the whole link is undone
    // with this transaction.
    let made = serde_json::from_value::<LinkReply>(reply).ok();
    if direction != Direction::Both
        && made.as_ref().map(|r| r.direction.as_str()) != Some(direction.mirrored().as_str())
    {
        return Err(LinkError::PeerCannotLinkOneWay(peer.name.clone()).into());
    }
    // A node linked with several peers passes what it applies from one on to the others
    // through its queue, which only the background worker delivers unprompted.
    let links_here = Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM synclink.link WHERE relid = $1::oid::regclass",
        &[relid.into()],
    )?
    .unwrap_or(0);
    if links_here > 1 && !crate::data::worker::preloaded() {
        crate::pg::error::warning(
            &format!(
                "table {} is now linked with {links_here} peers, and changes this node applies from one are passed on to the others through its queue",
                info.display()
            ),
            "Without synclink in shared_preload_libraries no worker delivers them: they wait for sync_flush() or the next sync-mode write to that peer.",
        );
    }
    Ok(true)
}

/// The links of one table match rows by one key, so that a change that reaches a node through
/// one link and goes on through another names the same row on both, and send the same columns,
/// since the table's one capture makes each change's text once for all of them.
fn same_as_other_links(
    relid: pg_sys::Oid,
    peer: &str,
    key: &[String],
    columns: &[String],
    table: &str,
) -> Result<()> {
    let others = Spi::connect(|c| {
        c.select(
            "SELECT peer_name, key_columns, columns, excluded FROM synclink.link \
              WHERE relid = $1::oid::regclass AND peer_name <> $2 ORDER BY link_id",
            None,
            &[relid.into(), peer.into()],
        )?
        .map(|r| {
            Ok((
                need::<String>(&r, 1, "link peer_name")?,
                need::<Vec<String>>(&r, 2, "link key_columns")?,
                need::<Vec<String>>(&r, 3, "link columns")?,
                need::<Vec<String>>(&r, 4, "link excluded")?,
            ))
        })
        .collect::<Result<Vec<_>>>()
    })?;
    if let Some((other, their_key, _, _)) = others.iter().find(|(_, k, _, _)| !same_set(k, key)) {
        return Err(LinkError::KeyDiffersFromOtherLinks {
            table: table.into(),
            peer: other.clone(),
            key: their_key.join(", "),
        }
        .into());
    }
    match others.into_iter().find(|(_, _, c, _)| c != columns) {
        Some((other, _, their_columns, excluded)) => Err(LinkError::ColumnsDifferFromOtherLinks {
            table: table.into(),
            peer: other,
            columns: their_columns.join(", "),
            excluded: excluded.join(","),
        }
        .into()),
        None => Ok(()),
    }
}

/// How the link `link_id` differs from what `req` asks for, one line per option (empty: the
/// same link). `req` is seen from the node that stores the link.
fn differences_from(link_id: i32, req: &LinkRequest) -> Result<Vec<String>> {
    let row = Spi::connect(|c| {
        let r = c
            .select(
                "SELECT mode, direction, key_columns, excluded, conflict, prefer_node, version_column \
                   FROM synclink.link WHERE link_id = $1",
                None,
                &[link_id.into()],
            )?
            .next()
            .ok_or(Missing("link"))?;
        Ok::<_, crate::pg::error::Error>((
            need::<String>(&r, 1, "link mode")?,
            need::<String>(&r, 2, "link direction")?,
            need::<Vec<String>>(&r, 3, "link key_columns")?,
            need::<Vec<String>>(&r, 4, "link excluded")?,
            need::<String>(&r, 5, "link conflict")?,
            r.get::<String>(6)?,
            r.get::<String>(7)?,
        ))
    })?;
    let (mode, direction, key, excluded, conflict, prefer_node, version_column) = row;
    let mut differences = Vec::new();
    let mut differ = |what: &str, now: String, asked: String| {
        if now != asked {
            differences.push(format!("{what} is {now}, not {asked}"));
        }
    };
    // Key and excluded columns are sets: the order they were named in does not matter.
    let list = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        format!("({})", v.join(", "))
    };
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
    differ("mode", mode, req.mode.clone());
    differ("direction", direction, req.direction.clone());
    differ("key", list(&key), list(&req.key));
    differ("exclude", list(&excluded), list(&req.exclude));
    differ("conflict", conflict, req.conflict.clone());
    differ("prefer_node", shown(&prefer_node), shown(&req.prefer_node));
    differ(
        "version_column",
        shown(&version_column),
        shown(&req.version_column),
    );
    Ok(differences)
}

/// Changes still queued for one link are never dropped quietly: refused, or with `discard`
/// removed and reported.
fn settle_queue(link: &Link, discard: bool) -> Result<()> {
    // In the link's queue, or in a record for several peers not handed on yet (read as it is,
    // not handed on: a worker handing it on meanwhile holds it, and it counts all the same).
    let fanout = crate::data::queue::fanout_exists();
    let count = Spi::get_one_with_args::<i64>(
        &format!(
            "SELECT (SELECT count(*) FROM synclink.outbox WHERE link_id = $1){}",
            if fanout {
                " + (SELECT count(*) FROM synclink.fanout WHERE $1 = ANY (link_ids))"
            } else {
                ""
            }
        ),
        &[link.id.into()],
    )?
    .unwrap_or(0);
    if count == 0 {
        return Ok(());
    }
    let table = format!("{}.{}", ident(&link.peer_schema), ident(&link.peer_table));
    if !discard {
        return Err(LinkError::HasQueued {
            table,
            peer: link.peer_name.clone(),
            node: crate::catalog::node::local_name()?,
            count,
        }
        .into());
    }
    // Records for several peers first: one being handed on meanwhile is waited for, and
    // then found in the outbox.
    if fanout {
        Spi::run_with_args(
            "UPDATE synclink.fanout SET link_ids = array_remove(link_ids, $1) WHERE $1 = ANY (link_ids)",
            &[link.id.into()],
        )?;
        Spi::run("DELETE FROM synclink.fanout WHERE cardinality(link_ids) = 0")?;
    }
    Spi::run_with_args(
        "DELETE FROM synclink.outbox WHERE link_id = $1",
        &[link.id.into()],
    )?;
    crate::pg::error::warning(
        &format!(
            "discarded {count} queued changes to {table} for peer \"{}\"",
            link.peer_name
        ),
        "Compare the two tables before linking them again.",
    );
    Ok(())
}

/// Undo a link on the peer and here. With `tolerate_unreachable`, a peer that cannot be
/// reached is warned about and only this node's half is removed.
pub fn unlink_by_id(id: i32, tolerate_unreachable: bool, discard: bool) -> Result<()> {
    let link = crate::catalog::link::by_id(id)?.ok_or(Missing("link"))?;
    lock_links_of(link.relid)?;
    let peer = peer::find(&link.peer_name)?.ok_or(Missing("peer of a link"))?;
    settle_queue(&link, discard)?;
    let body = UnlinkRequest {
        schema: link.peer_schema.clone(),
        table: link.peer_table.clone(),
        discard_queued: discard,
    };
    for seq in crate::control::sequence::shared_for_table(link.relid, &link.peer_name)? {
        crate::control::sequence::unshare_by_seq(seq, tolerate_unreachable)?;
    }
    match crate::rpc::call(&peer, &body) {
        Ok(_) => {}
        // Damaged here, the peer cannot be asked, now or later: this half goes regardless.
        Err(e)
            if (tolerate_unreachable && Peer::tolerable(&e))
                || matches!(e, PeerError::Damaged { .. }) =>
        {
            crate::pg::error::warning(
                &format!("{e}; its half of the link to this node is left in place"),
                "Run SELECT sync_unlink_table(...) on the peer once it is back.",
            )
        }
        Err(e) => return Err(e.into()),
    }
    drop_local(&link)?;
    // Dropping the triggers waited for writers still inside a transaction; a change one of
    // them queued meanwhile is settled now, or the whole unlink (the peer's half too) fails.
    settle_queue(&link, discard)
}

pub fn unlink_table(relid: pg_sys::Oid, peer_name: Option<&str>, discard: bool) -> Result<bool> {
    let peer = peer::resolve(peer_name)?;
    let Some(link) = find(relid, &peer.name)? else {
        return Err(LinkError::NotLinked {
            table: describe(relid)?.display(),
            peer: peer.name.clone(),
        }
        .into());
    };
    unlink_by_id(link.id, false, discard)?;
    Ok(true)
}

pub fn handle_link(from: &Peer, req: LinkRequest) -> Result<LinkReply> {
    let node = crate::catalog::node::local_name()?;
    let display = format!("{}.{}", ident(&req.schema), ident(&req.table));
    let oid = lookup(&req.schema, &req.table)?.ok_or_else(|| LinkError::MissingTable {
        table: display.clone(),
        node: node.clone(),
    })?;
    // The link seen from here: a push from the initiator is a pull here.
    let direction = Direction::parse(&req.direction)?.mirrored();
    // Linking sends this table's rows to the peer and, unless this half only sends, applies
    // the peer's changes to it.
    crate::catalog::access::peer_may(oid, rights_for(direction), "link")?;
    let info = describe(oid)?;
    info.check_linkable()?;
    lock_links_of(oid)?;
    info.check_key_travels(&req.key)?;
    info.check_excluded(&req.exclude, &node)?;
    let kept: Vec<Column> = info
        .columns
        .iter()
        .filter(|c| !req.exclude.contains(&c.wire.name))
        .cloned()
        .collect();
    let differences = column_differences(&kept, &req.columns);
    if !differences.is_empty() {
        return Err(LinkError::ColumnMismatch {
            table: display,
            node,
            differences,
        }
        .into());
    }
    if let Some(vc) = &req.version_column {
        let sent: Vec<String> = req.columns.iter().map(|c| c.name.clone()).collect();
        crate::catalog::policy::check_version_column(oid, vc, &sent)?;
    }
    let asked = req.preferred.as_deref().or(req.prefer_node.as_deref());
    one_preferred_node(&display, preferred_by_other_links(oid, &from.name)?, asked)?;
    if !info.unique_keys.iter().any(|k| same_set(k, &req.key)) {
        return Err(LinkError::KeyMismatch {
            table: display,
            node,
            key: req.key.join(", "),
        }
        .into());
    }
    let wanted: Vec<String> = req.columns.iter().map(|c| c.name.clone()).collect();
    same_as_other_links(oid, &from.name, &req.key, &wanted, &display)?;
    let reply = LinkReply {
        direction: direction.as_str().into(),
    };
    if let Some(existing) = find(oid, &from.name)? {
        // Compared as this node would ask for it: the same options, the direction mirrored.
        let here = LinkRequest {
            direction: direction.as_str().into(),
            ..req.clone()
        };
        let mut differences = differences_from(existing.id, &here)?;
        let cols = Spi::get_one_with_args::<Vec<String>>(
            "SELECT columns FROM synclink.link WHERE link_id = $1",
            &[existing.id.into()],
        )?
        .unwrap_or_default();
        if cols != wanted {
            differences.push(format!(
                "columns are ({}), not ({})",
                cols.join(", "),
                wanted.join(", ")
            ));
        }
        if differences.is_empty() {
            return Ok(reply);
        }
        return Err(LinkError::LinkedDifferently {
            table: display,
            node,
            differences,
        }
        .into());
    }
    create_local(
        &info,
        from,
        &req,
        (&req.from_schema, &req.from_table),
        direction,
    )?;
    Ok(reply)
}

/// What the role a peer connects as needs on a table whose half here goes `direction`: a
/// half that only sends is only read by the peer (compared, copied from).
fn rights_for(direction: Direction) -> &'static [(u32, &'static str)] {
    match direction {
        Direction::Push => crate::catalog::access::READ,
        _ => crate::catalog::access::READ_WRITE,
    }
}

pub fn handle_unlink(from: &Peer, req: UnlinkRequest) -> Result<()> {
    if let Some(oid) = lookup(&req.schema, &req.table)? {
        if let Some(link) = find(oid, &from.name)? {
            crate::catalog::access::peer_may(oid, rights_for(link.direction), "unlink")?;
            lock_links_of(oid)?;
            for seq in crate::control::sequence::shared_for_table(oid, &from.name)? {
                crate::control::sequence::restore_local_only(seq)?;
            }
            settle_queue(&link, req.discard_queued)?;
            drop_local(&link)?;
            settle_queue(&link, req.discard_queued)?;
        }
    }
    Ok(())
}
