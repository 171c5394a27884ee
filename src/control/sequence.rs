//! Ids that never collide: a column's sequence shared between two nodes.
//!
//! `shared`: one node owns the sequence. It exposes `nextval` as a view; the other node reads
//! that view through a foreign table from a function its column DEFAULT calls, so both draw
//! from one counter (an insert there needs the owner to be reachable).
//! `interleave`: each node keeps its own sequence with INCREMENT BY 2, the owner on odd and the
//! peer on even values; no network on the insert path.
//!
//! Either way both sequences are first moved past the highest id on either side, with each
//! sequence locked (a no-op ALTER SEQUENCE) so no nextval slips in between reading the high
//! mark and moving past it. Undo puts back the column default and INCREMENT BY and again moves
//! both sequences past every id either side has handed out.

use crate::catalog::peer::{self, Peer};
use crate::pg::error::{notice, Result, SqlError};
use crate::pg::spi::{need, Missing};
use crate::pg::sql::{ident, literal, qualified};
use crate::rpc::{ShareReply, ShareRequest, UnshareRequest};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiError;

#[derive(thiserror::Error, Debug)]
pub enum SequenceError {
    #[error("unknown strategy {}", crate::pg::args::shown(.0))]
    BadStrategy(String),
    #[error("{0} is not a sequence")]
    NotASequence(String),
    #[error("sequence {seq} is not used by a column of a table linked with peer \"{peer}\"")]
    NotUsed { seq: String, peer: String },
    #[error("sequence {seq} belongs to identity column {column}")]
    Identity { seq: String, column: String },
    #[error("column {column} of {table} on node \"{node}\" takes no default from a sequence")]
    NoPeerSequence {
        column: String,
        table: String,
        node: String,
    },
    #[error("sequence {seq} is already shared with peer \"{peer}\" ({strategy})")]
    AlreadyShared {
        seq: String,
        peer: String,
        strategy: String,
    },
    #[error("sequence {seq} is not shared with peer \"{peer}\"")]
    NotShared { seq: String, peer: String },
    #[error("table {table} on node \"{node}\" is not linked with node \"{from}\"")]
    PeerNotLinked {
        table: String,
        node: String,
        from: String,
    },
    #[error("malformed sequence request")]
    BadRequest,
    #[error("could not draw the next id of {column} from peer \"{peer}\"")]
    Unreachable {
        column: String,
        peer: String,
        reason: String,
    },
}

impl SqlError for SequenceError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            SequenceError::BadStrategy(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            SequenceError::NotASequence(_) => ERRCODE_WRONG_OBJECT_TYPE,
            SequenceError::Identity { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
            SequenceError::AlreadyShared { .. } => ERRCODE_OBJECT_IN_USE,
            SequenceError::BadRequest => ERRCODE_PROTOCOL_VIOLATION,
            SequenceError::Unreachable { .. } => ERRCODE_CONNECTION_FAILURE,
            _ => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        }
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            SequenceError::BadStrategy(_) => "Use strategy => 'shared' (one counter, owned by this node; inserts on the peer need this node reachable) or strategy => 'interleave' (odd ids here, even ids there; no network per insert).".into(),
            SequenceError::NotASequence(_) => "Pass the sequence a column default draws from, e.g. 'products_id_seq'.".into(),
            SequenceError::NotUsed { .. } => "Link the table first with sync_link_table(), and pass the sequence its column DEFAULT nextval(...) uses (serial and bigserial columns have one).".into(),
            SequenceError::Identity { .. } => "Identity columns are not supported yet; a serial or bigserial column (DEFAULT nextval(...)) is.".into(),
            SequenceError::NoPeerSequence { .. } => "Give the peer's column a sequence default (serial or bigserial), as on this node.".into(),
            SequenceError::AlreadyShared { .. } => "Call sync_unshare_sequence() first to change how it is shared.".into(),
            SequenceError::NotShared { .. } => "sync_status lists links; synclink.shared_sequence lists shared sequences.".into(),
            SequenceError::PeerNotLinked { .. } => "Link the table with sync_link_table() first.".into(),
            SequenceError::BadRequest => "The nodes run incompatible synclink versions.".into(),
            SequenceError::Unreachable { peer, .. } => format!("Ids for this column come from a sequence on peer \"{peer}\" so that the two databases never hand out the same one. Retry once it is reachable, or share the sequence with strategy => 'interleave', which needs no network per insert."),
        })
    }
    fn detail(&self) -> Option<String> {
        match self {
            SequenceError::Unreachable { reason, .. } => Some(reason.clone()),
            _ => None,
        }
    }
}

crate::pg::error::reported_as_sql_error!(SequenceError);

pub fn check_strategy(strategy: &str) -> Result<(), SequenceError> {
    match strategy {
        "shared" | "interleave" => Ok(()),
        other => Err(SequenceError::BadStrategy(other.into())),
    }
}

/// A column whose default draws from a sequence.
struct SeqColumn {
    seq: pg_sys::Oid,
    seq_name: String,
    relid: pg_sys::Oid,
    schema: String,
    table: String,
    column: String,
    /// `schema.table.column`, quoted only where needed, for messages
    shown: String,
    default_expr: String,
    increment: i64,
}

impl SeqColumn {
    fn table_display(&self) -> String {
        qualified(&self.schema, &self.table)
    }
}

const SEQ_COLUMN_SQL: &str =
    "SELECT s.oid, s.oid::regclass::text, c.oid, n.nspname::text, c.relname::text, \
            a.attname::text, pg_get_expr(d.adbin, d.adrelid), q.seqincrement, \
            format('%I.%I.%I', n.nspname, c.relname, a.attname) \
       FROM pg_depend dep \
       JOIN pg_attrdef d ON dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid \
       JOIN pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S' \
       JOIN pg_sequence q ON q.seqrelid = s.oid \
       JOIN pg_class c ON c.oid = d.adrelid \
       JOIN pg_namespace n ON n.oid = c.relnamespace \
       JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
      WHERE dep.refclassid = 'pg_class'::regclass";

/// A row of SEQ_COLUMN_SQL's (or shared_columns') columns, in that order.
fn seq_column(r: &pgrx::spi::SpiHeapTupleData) -> Result<SeqColumn> {
    Ok(SeqColumn {
        seq: need(r, 1, "sequence oid")?,
        seq_name: need(r, 2, "sequence name")?,
        relid: need(r, 3, "sequence's table oid")?,
        schema: need(r, 4, "sequence's table schema")?,
        table: need(r, 5, "sequence's table name")?,
        column: need(r, 6, "sequence's column name")?,
        default_expr: need(r, 7, "sequence's column default")?,
        increment: need(r, 8, "sequence increment")?,
        shown: need(r, 9, "sequence's column display name")?,
    })
}

fn seq_columns(filter: &str, args: &[pgrx::datum::DatumWithOid]) -> Result<Vec<SeqColumn>> {
    Spi::connect(|c| {
        c.select(
            &format!("{SEQ_COLUMN_SQL} AND {filter} ORDER BY c.oid, a.attnum"),
            None,
            args,
        )?
        .map(|r| seq_column(&r))
        .collect()
    })
}

/// Take the sequence's lock: ALTER SEQUENCE holds SHARE ROW EXCLUSIVE to the end of the
/// transaction, and nextval waits for it. LOCK TABLE does not take sequences.
fn lock(seq: &str, increment: i64) -> Result<()> {
    Spi::run(&format!("ALTER SEQUENCE {seq} INCREMENT BY {increment}"))?;
    Ok(())
}

/// The highest value handed out for the column here: its largest id or the sequence's last
/// value, whichever is higher (0 when neither exists).
fn high_mark(col: &SeqColumn) -> Result<i64> {
    Ok(Spi::get_one::<i64>(&format!(
        "SELECT greatest((SELECT max({c})::bigint FROM {t}), \
                         (SELECT CASE WHEN is_called THEN last_value END FROM {s}), 0)",
        c = ident(&col.column),
        t = col.table_display(),
        s = col.seq_name,
    ))?
    .unwrap_or(0))
}

/// Make the next value of the sequence the first one above `high` that is ≡ `offset` modulo
/// `increment`. Never moves a sequence backwards past what it handed out.
fn restart_above(col: &SeqColumn, high: i64, increment: i64, offset: i64) -> Result<()> {
    let high = high.max(high_mark(col)?);
    let mut next = high + 1;
    if increment > 1 {
        next += (offset - next).rem_euclid(increment);
    }
    Spi::run(&format!(
        "ALTER SEQUENCE {} INCREMENT BY {increment} RESTART WITH {next}",
        col.seq_name
    ))?;
    Ok(())
}

fn view_name(col: &SeqColumn) -> String {
    let own = col
        .seq_name
        .rsplit_once('.')
        .map_or(col.seq_name.as_str(), |(_, name)| name);
    format!("{}_{}_nextval", col.schema, own.trim_matches('"'))
}

/// Record a share, with what undo needs.
fn remember(
    col: &SeqColumn,
    peer: &str,
    strategy: &str,
    role: &str,
    objects: &[String],
) -> Result<()> {
    Spi::run_with_args(
        "INSERT INTO synclink.shared_sequence \
           (seq, peer_name, strategy, role, relid, column_name, original_default, original_increment, objects) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            col.seq.into(),
            peer.into(),
            strategy.into(),
            role.into(),
            col.relid.into(),
            col.column.as_str().into(),
            col.default_expr.as_str().into(),
            col.increment.into(),
            objects.to_vec().into(),
        ],
    )?;
    Ok(())
}

struct Share {
    strategy: String,
    role: String,
    original_default: String,
    original_increment: i64,
    objects: Vec<String>,
}

fn recorded(seq: pg_sys::Oid) -> Result<Option<(String, Share)>> {
    Spi::connect(|c| {
        c.select(
            "SELECT peer_name, strategy, role, original_default, original_increment, objects \
               FROM synclink.shared_sequence WHERE seq = $1",
            None,
            &[seq.into()],
        )?
        .next()
        .map(|r| -> Result<_> {
            Ok((
                need::<String>(&r, 1, "shared_sequence peer_name")?,
                Share {
                    strategy: need(&r, 2, "shared_sequence strategy")?,
                    role: need(&r, 3, "shared_sequence role")?,
                    original_default: need(&r, 4, "shared_sequence original_default")?,
                    original_increment: need(&r, 5, "shared_sequence original_increment")?,
                    objects: need(&r, 6, "shared_sequence objects")?,
                },
            ))
        })
        .transpose()
    })
}

/// The linked column on this node that draws from `seq`.
fn local_column(seq: pg_sys::Oid, peer: &Peer) -> Result<SeqColumn> {
    let name = crate::pg::spi::maybe_one::<String>(
        "SELECT oid::regclass::text FROM pg_class WHERE oid = $1 AND relkind = 'S'",
        &[seq.into()],
    )?;
    let Some(name) = name else {
        let shown =
            crate::pg::spi::maybe_one::<String>("SELECT $1::regclass::text", &[seq.into()])?
                .unwrap_or_default();
        return Err(SequenceError::NotASequence(shown).into());
    };
    if let Some(column) = crate::pg::spi::maybe_one::<String>(
        "SELECT format('%s.%I', d.refobjid::regclass, a.attname) FROM pg_depend d \
           JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
          WHERE d.classid = 'pg_class'::regclass AND d.objid = $1 AND d.deptype = 'i'",
        &[seq.into()],
    )? {
        return Err(SequenceError::Identity { seq: name, column }.into());
    }
    Ok(seq_columns(
        "s.oid = $1 AND EXISTS (SELECT 1 FROM synclink.link l WHERE l.relid = c.oid AND l.peer_name = $2)",
        &[seq.into(), peer.name.as_str().into()],
    )?
    .into_iter()
    .next()
    .ok_or(SequenceError::NotUsed {
        seq: name,
        peer: peer.name.clone(),
    })?)
}

/// The column on this node a peer's request is about, checked to be linked with that peer.
fn requested_column(from: &Peer, schema: &str, table: &str, column: &str) -> Result<SeqColumn> {
    let node = crate::catalog::node::local_name()?;
    let display = qualified(schema, table);
    let linked = crate::pg::spi::maybe_one::<bool>(
        "SELECT true FROM synclink.link WHERE relid = to_regclass($1) AND peer_name = $2",
        &[display.as_str().into(), from.name.as_str().into()],
    )?;
    if linked.is_none() {
        return Err(SequenceError::PeerNotLinked {
            table: display,
            node,
            from: from.node_name.clone(),
        }
        .into());
    }
    Ok(seq_columns(
        "c.oid = to_regclass($1) AND a.attname = $2",
        &[display.as_str().into(), column.into()],
    )?
    .into_iter()
    .next()
    .ok_or(SequenceError::NoPeerSequence {
        column: ident(column),
        table: display,
        node,
    })?)
}

pub fn share(seq: pg_sys::Oid, peer_name: Option<&str>, strategy: &str) -> Result<bool> {
    check_strategy(strategy)?;
    let peer = peer::resolve(peer_name)?;
    let col = local_column(seq, &peer)?;
    if let Some((with, s)) = recorded(col.seq)? {
        if with == peer.name && s.strategy == strategy {
            notice(&format!(
                "sequence {} is already shared with peer \"{}\", skipping",
                col.seq_name, peer.name
            ));
            return Ok(false);
        }
        return Err(SequenceError::AlreadyShared {
            seq: col.seq_name,
            peer: with,
            strategy: s.strategy,
        }
        .into());
    }
    let (increment, view) = if strategy == "interleave" {
        (2, None)
    } else {
        (col.increment, Some(view_name(&col)))
    };
    lock(&col.seq_name, increment)?;
    let mut objects = Vec::new();
    if let Some(view) = &view {
        let qualified_view = qualified("synclink", view);
        Spi::run(&format!(
            "CREATE VIEW {qualified_view} AS SELECT nextval({}::regclass) AS id",
            literal(&col.seq_name)
        ))?;
        Spi::run(&format!(
            "COMMENT ON VIEW {qualified_view} IS {}",
            literal(&format!(
                "Hands out ids of {} to peer \"{}\" (sync_share_sequence).",
                col.shown, peer.name
            ))
        ))?;
        objects.push(format!("VIEW {qualified_view}"));
    }
    let own_high = high_mark(&col)?;
    let req = ShareRequest {
        schema: col.schema.clone(),
        table: col.table.clone(),
        column: col.column.clone(),
        strategy: strategy.into(),
        view,
        high: own_high,
    };
    let reply: ShareReply = crate::rpc::call_for(&peer, &req)?;
    restart_above(&col, own_high.max(reply.high), increment, 1)?;
    remember(&col, &peer.name, strategy, "owner", &objects)?;
    Ok(true)
}

fn nextval_function_sql(function: &str, foreign: &str, col: &SeqColumn, owner: &Peer) -> String {
    format!(
        r#"CREATE FUNCTION {function}() RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
-- The default of {shown}: the next value of sequence {seq} on node "{node}" (peer {peer}),
-- read through the foreign table below, so ids drawn here and there never collide. When the
-- peer cannot be reached the insert fails with SQLSTATE 08006 rather than invent an id.
-- Made by sync_share_sequence(); sync_unshare_sequence() puts back the column's own default.
RETURN synclink.shared_nextval('{foreign_text}'::regclass, '{peer}', '{shown}')"#,
        shown = col.shown.replace('\'', "''"),
        seq = literal(&col.seq_name),
        node = owner.node_name,
        peer = owner.name,
        foreign_text = foreign.replace('\'', "''"),
    )
}

thread_local! {
    // One planned SELECT per foreign table: a shared id is drawn on every insert.
    static DRAWS: std::cell::RefCell<std::collections::HashMap<u32, std::rc::Rc<pgrx::spi::OwnedPreparedStatement>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Draw the next id from the owner's sequence through `foreign`. A failure becomes one clear
/// error, returned at once: nothing runs SQL between the caught failure and this function's
/// ERROR, so no subtransaction (and no remote savepoint) is needed.
#[pg_extern(schema = "synclink", volatile)]
fn shared_nextval(foreign: pg_sys::Oid, peer: &str, column: &str) -> Result<i64, ErrorReport> {
    Ok(draw(foreign, peer, column)?)
}

fn draw(foreign: pg_sys::Oid, peer: &str, column: &str) -> Result<i64> {
    let stmt = DRAWS.with(|m| m.borrow().get(&foreign.to_u32()).cloned());
    let stmt = match stmt {
        Some(stmt) => stmt,
        None => {
            let name = crate::pg::spi::maybe_one::<String>(
                "SELECT $1::regclass::text",
                &[foreign.into()],
            )?
            .unwrap_or_default();
            let plan = Spi::connect(|c| {
                c.prepare(&format!("SELECT id FROM {name}"), &[])
                    .map(|p| p.keep())
            })?;
            let plan = std::rc::Rc::new(plan);
            DRAWS.with(|m| m.borrow_mut().insert(foreign.to_u32(), plan.clone()));
            plan
        }
    };
    let drawn = crate::pg::remote::catching(|| {
        Spi::connect(|c| c.select(&*stmt, None, &[])?.first().get::<i64>(1))
    });
    let unreachable = |reason: String| SequenceError::Unreachable {
        column: column.into(),
        peer: peer.into(),
        reason,
    };
    match drawn {
        Ok(Ok(Some(id))) => Ok(id),
        // The view hands out one row; none, or NULL, is a peer that did not answer with an id.
        Ok(Ok(None)) | Ok(Err(SpiError::InvalidPosition)) => {
            Err(unreachable("the peer returned no value".into()).into())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(f) => Err(unreachable(f.summary()).into()),
    }
}

pub fn handle_share(from: &Peer, req: ShareRequest) -> Result<ShareReply> {
    check_strategy(&req.strategy)?;
    let col = requested_column(from, &req.schema, &req.table, &req.column)?;
    // A shared sequence sets the column's default here: the peer's role must be one that may
    // write the table.
    crate::catalog::access::peer_may(
        col.relid,
        crate::catalog::access::READ_WRITE,
        "share a sequence of",
    )?;
    if let Some((with, s)) = recorded(col.seq)? {
        return Err(SequenceError::AlreadyShared {
            seq: col.seq_name,
            peer: with,
            strategy: s.strategy,
        }
        .into());
    }
    let interleave = req.strategy == "interleave";
    let increment = if interleave { 2 } else { col.increment };
    lock(&col.seq_name, increment)?;
    let own_high = high_mark(&col)?;
    let mut objects = Vec::new();
    if interleave {
        restart_above(&col, own_high.max(req.high), 2, 0)?;
    } else {
        let view = req.view.clone().ok_or(SequenceError::BadRequest)?;
        let base = format!("{}_{}", from.name, view);
        let foreign = qualified("synclink", &base);
        let function = qualified("synclink", &format!("{base}_next"));
        Spi::run(&format!(
            "CREATE FOREIGN TABLE {foreign} (id bigint) SERVER {} \
             OPTIONS (schema_name 'synclink', table_name {})",
            ident(&from.server),
            literal(&view)
        ))?;
        Spi::run(&nextval_function_sql(&function, &foreign, &col, from))?;
        Spi::run(&format!(
            "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {function}()",
            col.table_display(),
            ident(&col.column)
        ))?;
        objects.push(format!("FUNCTION {function}()"));
        objects.push(format!("FOREIGN TABLE {foreign}"));
    }
    remember(&col, &from.name, &req.strategy, "member", &objects)?;
    Ok(ShareReply { high: own_high })
}

/// Undo this node's half: the column's default and the sequence's increment as they were,
/// the objects made for the share gone, and the sequence past `high` and its own high mark.
fn restore_local(col: &SeqColumn, share: &Share, high: i64) -> Result<()> {
    lock(&col.seq_name, col.increment)?;
    if share.role == "member" && share.strategy == "shared" {
        Spi::run(&format!(
            "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}",
            col.table_display(),
            ident(&col.column),
            share.original_default
        ))?;
    }
    restart_above(col, high, share.original_increment, 0)?;
    forget_objects(col.seq, share)
}

/// The column a recorded share is about. Read from the record, not from the column default:
/// on a member of a `shared` share the default no longer names the sequence.
fn shared_columns(filter: &str, args: &[pgrx::datum::DatumWithOid]) -> Result<Vec<SeqColumn>> {
    Spi::connect(|c| {
        c.select(
            &format!(
                "SELECT s.oid, s.oid::regclass::text, c.oid, n.nspname::text, c.relname::text, \
                        a.attname::text, r.original_default, q.seqincrement, \
                        format('%I.%I.%I', n.nspname, c.relname, a.attname) \
                   FROM synclink.shared_sequence r \
                   JOIN pg_class s ON s.oid = r.seq \
                   JOIN pg_sequence q ON q.seqrelid = s.oid \
                   JOIN pg_class c ON c.oid = r.relid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = r.column_name \
                  WHERE {filter}"
            ),
            None,
            args,
        )?
        .map(|r| seq_column(&r))
        .collect()
    })
}

fn seq_column_of(seq: pg_sys::Oid) -> Result<Option<SeqColumn>> {
    Ok(shared_columns("r.seq = $1", &[seq.into()])?
        .into_iter()
        .next())
}

/// Undo a share on both nodes. With `tolerate_unreachable`, a peer that cannot be reached
/// keeps its half (with a WARNING) and only this node's is undone.
pub fn unshare_by_seq(seq: pg_sys::Oid, tolerate_unreachable: bool) -> Result<()> {
    let Some((peer_name, share)) = recorded(seq)? else {
        return Ok(());
    };
    let Some(col) = seq_column_of(seq)? else {
        // the table went (DROP TABLE): only the objects made for the share are left here
        return forget_objects(seq, &share);
    };
    let peer = peer::find(&peer_name)?.ok_or(Missing("peer of a shared sequence"))?;
    let req = UnshareRequest {
        schema: col.schema.clone(),
        table: col.table.clone(),
        column: col.column.clone(),
        high: high_mark(&col)?,
    };
    let peer_high = match crate::rpc::call(&peer, &req) {
        Ok(v) => serde_json::from_value::<ShareReply>(v).map_or(0, |r| r.high),
        Err(e) if tolerate_unreachable && crate::catalog::peer::Peer::tolerable(&e) => {
            crate::pg::error::warning(
                &format!("{e}; its half of the shared sequence is left in place"),
                "Run SELECT sync_unshare_sequence(...) on the peer once it is back.",
            );
            0
        }
        Err(e) => return Err(e.into()),
    };
    restore_local(&col, &share, peer_high)
}

pub fn handle_unshare(from: &Peer, req: UnshareRequest) -> Result<ShareReply> {
    let display = qualified(&req.schema, &req.table);
    let col = shared_columns(
        "r.peer_name = $1 AND r.relid = to_regclass($2) AND r.column_name = $3",
        &[
            from.name.as_str().into(),
            display.as_str().into(),
            req.column.as_str().into(),
        ],
    )?
    .into_iter()
    .next();
    let Some(col) = col else {
        // nothing shared here (already undone): nothing to do
        return Ok(ShareReply { high: 0 });
    };
    crate::catalog::access::peer_may(
        col.relid,
        crate::catalog::access::READ_WRITE,
        "unshare a sequence of",
    )?;
    let (_, share) = recorded(col.seq)?.ok_or(Missing("shared sequence"))?;
    let high = high_mark(&col)?;
    restore_local(&col, &share, req.high)?;
    Ok(ShareReply { high })
}

fn forget_objects(seq: pg_sys::Oid, share: &Share) -> Result<()> {
    crate::control::removal::removing(|| drop_share_objects(seq, share))
}

fn drop_share_objects(seq: pg_sys::Oid, share: &Share) -> Result<()> {
    for object in &share.objects {
        let (kind, name) = object.split_at(object.rfind(' ').unwrap_or(0));
        Spi::run(&format!("DROP {kind} IF EXISTS{name}"))?;
    }
    Spi::run_with_args(
        "DELETE FROM synclink.shared_sequence WHERE seq = $1",
        &[seq.into()],
    )?;
    Ok(())
}

/// Undo this node's half only, for a link the peer is removing.
pub fn restore_local_only(seq: pg_sys::Oid) -> Result<()> {
    if let Some((_, share)) = recorded(seq)? {
        match seq_column_of(seq)? {
            Some(col) => restore_local(&col, &share, 0)?,
            None => forget_objects(seq, &share)?,
        }
    }
    Ok(())
}

/// The sequences of `relid`'s columns shared with `peer`: undone before the link goes.
pub fn shared_for_table(relid: pg_sys::Oid, peer: &str) -> Result<Vec<pg_sys::Oid>> {
    Ok(crate::pg::spi::column::<pg_sys::Oid>(
        "SELECT seq FROM synclink.shared_sequence WHERE relid = $1 AND peer_name = $2",
        &[relid.into(), peer.into()],
    )?)
}

/// Undo a shared sequence on both nodes; see sync_unshare_sequence.
pub fn unshare(seq: pg_sys::Oid, peer: Option<&str>) -> Result<bool> {
    let peer = peer::resolve(peer)?;
    match recorded(seq)? {
        Some((with, _)) if with == peer.name => {
            unshare_by_seq(seq, false)?;
            Ok(true)
        }
        _ => Err(SequenceError::NotShared {
            seq: crate::pg::spi::maybe_one::<String>("SELECT $1::regclass::text", &[seq.into()])?
                .unwrap_or_default(),
            peer: peer.name,
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn strategies() {
        assert!(super::check_strategy("shared").is_ok());
        assert!(super::check_strategy("interleave").is_ok());
        assert!(super::check_strategy("random").is_err());
    }
}
