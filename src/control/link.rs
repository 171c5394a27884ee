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
use crate::data::capture::statement::{self as capture, CaptureSpec};
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
    let function = qualified("synclink", &free_name(&base, "capture", id)?);
    let version_table = qualified("synclink", &free_name(&base, "version", id)?);
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
    let keys = key
        .iter()
        .map(|k| Ok(format!("{} {}", ident(k), type_of(k)?)))
        .collect::<Result<Vec<_>, LinkError>>()?
        .join(", ");
    Spi::run(&format!(
        "CREATE TABLE {version_table} ({keys}, \"synclink$at\" bigint NOT NULL, \
         \"synclink$node\" text NOT NULL, \"synclink$base_at\" bigint, \"synclink$base_node\" text, \
         PRIMARY KEY ({key_list})) WITH (fillfactor = {VERSION_FILLFACTOR})",
        key_list = join(key, ", ", |k| ident(k)),
    ))?;
    Spi::run(&format!(
        "COMMENT ON TABLE {version_table} IS {}",
        crate::pg::sql::literal(&format!(
            "synclink: per key of {}, the version of the row here (microseconds since 1970, node) \
             and, after a change made here, the version it replaced",
            info.display()
        ))
    ))?;
    let columns: Vec<String> = wire.iter().map(|w| w.name.clone()).collect();
    let table = info.display();
    let spec = CaptureSpec {
        link_id: id,
        function: &function,
        table_display: &format!("{}.{}", info.schema, info.name),
        peer_name: &peer.name,
        row_type: &row_type,
        columns: &columns,
        key,
        pair_by: info.primary_key.as_deref().filter(|pk| !same_set(pk, key)),
        queue_only: mode == "async",
        node: &crate::catalog::node::local_name()?,
        version_table: &version_table,
    };
    let triggers = make_code(&spec, &table, &peer.node_name, info.oid, direction.sends())?;
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
            triggers.into(),
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
    Ok(id)
}

/// Version tables leave half of each page free, so that a statement that changes every row
/// of a page can update their versions on the same page (HOT: no new index entry, far less
/// WAL), the space the versions of the changes before it took being pruned first.
pub const VERSION_FILLFACTOR: u32 = 50;

/// The version of the code that generates a link's objects, recorded with each link so that
/// a DBA (and an upgrade) can tell which links sync_refresh_link should make anew.
pub const GENERATOR: &str = env!("CARGO_PKG_VERSION");

/// A link's generated code: its version table's access rules, its capture function and, when
/// the link sends this node's changes, its triggers (returned by name). Changes from the peer
/// are applied as the table's owner, in one statement that also writes the versions: the
/// owner may use the versions of this table, and nobody else.
fn make_code(
    spec: &CaptureSpec,
    table: &str,
    peer_node: &str,
    relid: pg_sys::Oid,
    sends: bool,
) -> Result<Vec<String>> {
    for stmt in version_table_access(spec.version_table, relid) {
        Spi::run(&stmt)?;
    }
    Spi::run(&capture::function_sql(spec))?;
    Spi::run(&format!(
        "REVOKE ALL ON FUNCTION {}() FROM PUBLIC",
        spec.function
    ))?;
    let mut triggers = Vec::new();
    if !sends {
        return Ok(triggers);
    }
    for (name, sql) in capture::trigger_sqls(table, spec, peer_node) {
        Spi::run(&sql)?;
        triggers.push(name);
    }
    Ok(triggers)
}

/// Make a link's generated code anew with the code installed now (after an upgrade, or after
/// someone changed it by hand), in place: the table keeps its rows, the version table its
/// versions and the outbox its queued changes. The table is locked against writes while its
/// triggers are replaced, so no statement runs between the old triggers and the new. A link
/// whose version table or row type is gone is left as it is, with a WARNING (false).
pub fn refresh(link_id: i32) -> Result<bool> {
    let row = Spi::connect(|c| {
        c.select(
            "SELECT l.relid::oid, l.peer_name, l.columns, l.key_columns, l.mode, l.row_type, \
                    l.capture_function, l.triggers, l.version_table, p.node_name, \
                    l.initiator = n.node_name, \
                    (SELECT f.proowner FROM pg_proc f WHERE f.oid = to_regproc(l.capture_function)), \
                    to_regclass(l.version_table) IS NOT NULL AND to_regtype(l.row_type) IS NOT NULL, \
                    coalesce(to_jsonb(l) ->> 'direction', 'both') \
               FROM synclink.link l JOIN synclink.peer p USING (peer_name) CROSS JOIN synclink.node n \
              WHERE l.link_id = $1",
            None,
            &[link_id.into()],
        )?
        .next()
        .map(|r| -> Result<_> {
            Ok((
                need::<pg_sys::Oid>(&r, 1, "link relid")?,
                need::<String>(&r, 2, "link peer_name")?,
                need::<Vec<String>>(&r, 3, "link columns")?,
                need::<Vec<String>>(&r, 4, "link key_columns")?,
                need::<String>(&r, 5, "link mode")?,
                need::<String>(&r, 6, "link row_type")?,
                need::<String>(&r, 7, "link capture_function")?,
                need::<Vec<String>>(&r, 8, "link triggers")?,
                need::<String>(&r, 9, "link version_table")?,
                need::<String>(&r, 10, "link node_name")?,
                need::<bool>(&r, 11, "link initiator")?,
                r.get::<pg_sys::Oid>(12)?,
                need::<bool>(&r, 13, "link objects")?,
                need::<String>(&r, 14, "link direction")?,
            ))
        })
        .transpose()
    })?;
    let Some((
        relid,
        peer_name,
        columns,
        key,
        mode,
        row_type,
        function,
        old_triggers,
        version_table,
        peer_node,
        initiated_here,
        function_owner,
        intact,
        direction,
    )) = row
    else {
        return Ok(false);
    };
    // (Read through to_jsonb: the upgrade scripts of earlier versions make every link anew
    // with this code before the script that adds the column has run; links made then carried
    // changes both ways.)
    let sends = Direction::parse(&direction)?.sends();
    let info = describe(relid)?;
    let table = info.display();
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
    Spi::run(&format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))?;
    crate::control::removal::removing(|| -> Result<()> {
        for t in &old_triggers {
            Spi::run(&format!("DROP TRIGGER IF EXISTS {} ON {table}", ident(t)))?;
        }
        Spi::run(&format!("DROP FUNCTION IF EXISTS {function}()"))?;
        Spi::run(&format!(
            "DROP POLICY IF EXISTS owner_of_the_table ON {version_table}"
        ))?;
        Ok(())
    })?;
    let spec = CaptureSpec {
        link_id,
        function: &function,
        table_display: &format!("{}.{}", info.schema, info.name),
        peer_name: &peer_name,
        row_type: &row_type,
        columns: &columns,
        key: &key,
        pair_by: info.primary_key.as_deref().filter(|pk| !same_set(pk, &key)),
        queue_only: mode == "async",
        node: &crate::catalog::node::local_name()?,
        version_table: &version_table,
    };
    // Owned as sync_link_table makes them: on the node that linked the table, by the role that
    // linked it (kept from the function made before, else the table's owner, never the caller,
    // who may be a superuser running the update: the function is SECURITY DEFINER); on the
    // other, by the extension's owner, as the peer's request makes them there.
    let owner = match (initiated_here, function_owner) {
        (true, Some(owner)) => owner,
        (true, None) => crate::pg::privilege::table_owner(relid),
        (false, _) => crate::pg::privilege::extension_owner()?,
    };
    let owner = ident(&crate::pg::privilege::role_name(owner));
    // Made during ALTER EXTENSION synclink UPDATE too, but they are the link's: not members of
    // the extension (sync_unlink_table must be able to drop them) and their privileges not the
    // extension's initial ones.
    let triggers = crate::pg::ffi::outside_extension_script(|| -> Result<Vec<String>> {
        let triggers = make_code(&spec, &table, &peer_node, relid, sends)?;
        Spi::run(&format!("ALTER FUNCTION {function}() OWNER TO {owner}"))?;
        if !initiated_here {
            Spi::run(&format!("ALTER TABLE {version_table} OWNER TO {owner}"))?;
            Spi::run(&format!("ALTER TYPE {row_type} OWNER TO {owner}"))?;
        }
        Ok(triggers)
    })?;
    Spi::run_with_args(
        "UPDATE synclink.link SET triggers = $2, generator = $3 WHERE link_id = $1",
        &[link_id.into(), triggers.into(), GENERATOR.into()],
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
    if let Some(table) = table {
        for t in &link.triggers {
            Spi::run(&format!("DROP TRIGGER IF EXISTS {} ON {table}", ident(t)))?;
        }
    }
    Spi::run(&format!(
        "DROP FUNCTION IF EXISTS {}()",
        link.capture_function
    ))?;
    Spi::run(&format!("DROP TYPE IF EXISTS {}", link.row_type))?;
    Spi::run(&format!("DROP TABLE IF EXISTS {}", link.version_table))?;
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
}

pub fn link_table(relid: pg_sys::Oid, peer_name: Option<&str>, options: Options) -> Result<bool> {
    let Options {
        mode,
        direction,
        key,
        exclude,
        copy,
        conflict,
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
    let key = choose_key(&info, key)?;
    same_key_as_other_links(relid, &peer.name, &key, &info.display())?;
    info.check_key_travels(&key)?;
    check_columns(&info, &exclude)?;
    if let Some(k) = exclude.iter().find(|c| key.contains(c)) {
        return Err(LinkError::ExcludedKey(k.clone()).into());
    }
    let local = crate::catalog::node::local_name()?;
    info.check_excluded(&exclude, &local)?;
    let policy = Policy::parse(conflict.0, conflict.1, &local, &peer.node_name)?;
    let sent: Vec<String> = info
        .wire_columns(&exclude)
        .into_iter()
        .map(|c| c.name)
        .collect();
    if let Some(vc) = conflict.1 {
        crate::catalog::policy::check_version_column(relid, vc, &sent)?;
    }
    let (conflict, prefer_node, version_column) = policy.stored();
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
        && made.map(|r| r.direction) != Some(direction.mirrored().as_str().to_string())
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

/// The links of one table match rows by one key: a change that reaches a node through one
/// link and goes on through another must name the same row on both.
fn same_key_as_other_links(
    relid: pg_sys::Oid,
    peer: &str,
    key: &[String],
    table: &str,
) -> Result<()> {
    let others = Spi::connect(|c| {
        c.select(
            "SELECT peer_name, key_columns FROM synclink.link \
              WHERE relid = $1::oid::regclass AND peer_name <> $2 ORDER BY link_id",
            None,
            &[relid.into(), peer.into()],
        )?
        .map(|r| {
            Ok((
                need::<String>(&r, 1, "link peer_name")?,
                need::<Vec<String>>(&r, 2, "link key_columns")?,
            ))
        })
        .collect::<Result<Vec<_>>>()
    })?;
    match others.into_iter().find(|(_, k)| !same_set(k, key)) {
        Some((other, their_key)) => Err(LinkError::KeyDiffersFromOtherLinks {
            table: table.into(),
            peer: other,
            key: their_key.join(", "),
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
    let count = Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM synclink.outbox WHERE link_id = $1",
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
    if !info.unique_keys.iter().any(|k| same_set(k, &req.key)) {
        return Err(LinkError::KeyMismatch {
            table: display,
            node,
            key: req.key.join(", "),
        }
        .into());
    }
    same_key_as_other_links(oid, &from.name, &req.key, &display)?;
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
        let wanted: Vec<String> = req.columns.iter().map(|c| c.name.clone()).collect();
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
