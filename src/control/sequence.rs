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
use crate::pg::error::{notice, raise, OrRaise, SqlError};
use crate::pg::sql::{ident, literal, qualified};
use crate::rpc::{ShareReply, ShareRequest, UnshareRequest};
use pgrx::prelude::*;

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
fn seq_column(r: &pgrx::spi::SpiHeapTupleData) -> SeqColumn {
    SeqColumn {
        seq: r.get(1).unwrap().unwrap(),
        seq_name: r.get(2).unwrap().unwrap(),
        relid: r.get(3).unwrap().unwrap(),
        schema: r.get(4).unwrap().unwrap(),
        table: r.get(5).unwrap().unwrap(),
        column: r.get(6).unwrap().unwrap(),
        default_expr: r.get(7).unwrap().unwrap(),
        increment: r.get(8).unwrap().unwrap(),
        shown: r.get(9).unwrap().unwrap(),
    }
}

fn seq_columns(filter: &str, args: &[pgrx::datum::DatumWithOid]) -> Vec<SeqColumn> {
    Spi::connect(|c| {
        c.select(
            &format!("{SEQ_COLUMN_SQL} AND {filter} ORDER BY c.oid, a.attnum"),
            None,
            args,
        )
        .unwrap()
        .map(|r| seq_column(&r))
        .collect()
    })
}

/// Take the sequence's lock: ALTER SEQUENCE holds SHARE ROW EXCLUSIVE to the end of the
/// transaction, and nextval waits for it. LOCK TABLE does not take sequences.
fn lock(seq: &str, increment: i64) {
    Spi::run(&format!("ALTER SEQUENCE {seq} INCREMENT BY {increment}")).unwrap();
}

/// The highest value handed out for the column here: its largest id or the sequence's last
/// value, whichever is higher (0 when neither exists).
fn high_mark(col: &SeqColumn) -> i64 {
    Spi::get_one::<i64>(&format!(
        "SELECT greatest((SELECT max({c})::bigint FROM {t}), \
                         (SELECT CASE WHEN is_called THEN last_value END FROM {s}), 0)",
        c = ident(&col.column),
        t = col.table_display(),
        s = col.seq_name,
    ))
    .unwrap()
    .unwrap_or(0)
}

/// Make the next value of the sequence the first one above `high` that is ≡ `offset` modulo
/// `increment`. Never moves a sequence backwards past what it handed out.
fn restart_above(col: &SeqColumn, high: i64, increment: i64, offset: i64) {
    let high = high.max(high_mark(col));
    let mut next = high + 1;
    if increment > 1 {
        next += (offset - next).rem_euclid(increment);
    }
    Spi::run(&format!(
        "ALTER SEQUENCE {} INCREMENT BY {increment} RESTART WITH {next}",
        col.seq_name
    ))
    .unwrap();
}

fn view_name(col: &SeqColumn) -> String {
    format!(
        "{}_{}_nextval",
        col.schema,
        col.seq_name.rsplit('.').next().unwrap().trim_matches('"')
    )
}

/// Record a share, with what undo needs.
fn remember(col: &SeqColumn, peer: &str, strategy: &str, role: &str, objects: &[String]) {
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
    )
    .unwrap();
}

struct Share {
    strategy: String,
    role: String,
    original_default: String,
    original_increment: i64,
    objects: Vec<String>,
}

fn recorded(seq: pg_sys::Oid) -> Option<(String, Share)> {
    Spi::connect(|c| {
        c.select(
            "SELECT peer_name, strategy, role, original_default, original_increment, objects \
               FROM synclink.shared_sequence WHERE seq = $1",
            None,
            &[seq.into()],
        )
        .unwrap()
        .next()
        .map(|r| {
            (
                r.get::<String>(1).unwrap().unwrap(),
                Share {
                    strategy: r.get(2).unwrap().unwrap(),
                    role: r.get(3).unwrap().unwrap(),
                    original_default: r.get(4).unwrap().unwrap(),
                    original_increment: r.get(5).unwrap().unwrap(),
                    objects: r.get(6).unwrap().unwrap(),
                },
            )
        })
    })
}

/// The linked column on this node that draws from `seq`.
fn local_column(seq: pg_sys::Oid, peer: &Peer) -> Result<SeqColumn, SequenceError> {
    let name = crate::pg::spi::maybe_one::<String>(
        "SELECT oid::regclass::text FROM pg_class WHERE oid = $1 AND relkind = 'S'",
        &[seq.into()],
    )
    .or_raise();
    let Some(name) = name else {
        let shown = crate::pg::spi::maybe_one::<String>("SELECT $1::regclass::text", &[seq.into()])
            .or_raise()
            .unwrap_or_default();
        return Err(SequenceError::NotASequence(shown));
    };
    if let Some(column) = crate::pg::spi::maybe_one::<String>(
        "SELECT format('%s.%I', d.refobjid::regclass, a.attname) FROM pg_depend d \
           JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
          WHERE d.classid = 'pg_class'::regclass AND d.objid = $1 AND d.deptype = 'i'",
        &[seq.into()],
    )
    .or_raise()
    {
        return Err(SequenceError::Identity { seq: name, column });
    }
    seq_columns(
        "s.oid = $1 AND EXISTS (SELECT 1 FROM synclink.link l WHERE l.relid = c.oid AND l.peer_name = $2)",
        &[seq.into(), peer.name.as_str().into()],
    )
    .into_iter()
    .next()
    .ok_or(SequenceError::NotUsed {
        seq: name,
        peer: peer.name.clone(),
    })
}

/// The column on this node a peer's request is about, checked to be linked with that peer.
fn requested_column(
    from: &Peer,
    schema: &str,
    table: &str,
    column: &str,
) -> Result<SeqColumn, SequenceError> {
    let node = crate::catalog::node::local_name().or_raise();
    let display = qualified(schema, table);
    let linked = crate::pg::spi::maybe_one::<bool>(
        "SELECT true FROM synclink.link WHERE relid = to_regclass($1) AND peer_name = $2",
        &[display.as_str().into(), from.name.as_str().into()],
    )
    .or_raise();
    if linked.is_none() {
        return Err(SequenceError::PeerNotLinked {
            table: display,
            node,
            from: from.node_name.clone(),
        });
    }
    seq_columns(
        "c.oid = to_regclass($1) AND a.attname = $2",
        &[display.as_str().into(), column.into()],
    )
    .into_iter()
    .next()
    .ok_or(SequenceError::NoPeerSequence {
        column: ident(column),
        table: display,
        node,
    })
}

pub fn share(seq: pg_sys::Oid, peer_name: Option<&str>, strategy: &str) -> bool {
    check_strategy(strategy).or_raise();
    let peer = peer::resolve(peer_name).or_raise();
    let col = local_column(seq, &peer).or_raise();
    if let Some((with, s)) = recorded(col.seq) {
        if with == peer.name && s.strategy == strategy {
            notice(&format!(
                "sequence {} is already shared with peer \"{}\", skipping",
                col.seq_name, peer.name
            ));
            return false;
        }
        raise(SequenceError::AlreadyShared {
            seq: col.seq_name,
            peer: with,
            strategy: s.strategy,
        });
    }
    let (increment, view) = if strategy == "interleave" {
        (2, None)
    } else {
        (col.increment, Some(view_name(&col)))
    };
    lock(&col.seq_name, increment);
    let mut objects = Vec::new();
    if let Some(view) = &view {
        let qualified_view = qualified("synclink", view);
        Spi::run(&format!(
            "CREATE VIEW {qualified_view} AS SELECT nextval({}::regclass) AS id",
            literal(&col.seq_name)
        ))
        .unwrap();
        Spi::run(&format!(
            "COMMENT ON VIEW {qualified_view} IS {}",
            literal(&format!(
                "Hands out ids of {} to peer \"{}\" (sync_share_sequence).",
                col.shown, peer.name
            ))
        ))
        .unwrap();
        objects.push(format!("VIEW {qualified_view}"));
    }
    let own_high = high_mark(&col);
    let req = ShareRequest {
        schema: col.schema.clone(),
        table: col.table.clone(),
        column: col.column.clone(),
        strategy: strategy.into(),
        view,
        high: own_high,
    };
    let reply: ShareReply = crate::rpc::call_for(&peer, &req).or_raise();
    restart_above(&col, own_high.max(reply.high), increment, 1);
    remember(&col, &peer.name, strategy, "owner", &objects);
    true
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
/// error: it is re-raised at once, so no subtransaction (and no remote savepoint) is needed.
#[pg_extern(schema = "synclink", volatile)]
fn shared_nextval(foreign: pg_sys::Oid, peer: &str, column: &str) -> i64 {
    let stmt = DRAWS.with(|m| m.borrow().get(&foreign.to_u32()).cloned());
    let stmt = stmt.unwrap_or_else(|| {
        let name =
            crate::pg::spi::maybe_one::<String>("SELECT $1::regclass::text", &[foreign.into()])
                .or_raise()
                .unwrap_or_default();
        let plan = Spi::connect(|c| {
            c.prepare(&format!("SELECT id FROM {name}"), &[])
                .unwrap()
                .keep()
        });
        let plan = std::rc::Rc::new(plan);
        DRAWS.with(|m| m.borrow_mut().insert(foreign.to_u32(), plan.clone()));
        plan
    });
    let drawn = crate::pg::remote::catching(|| {
        Spi::connect(|c| {
            c.select(&*stmt, None, &[])
                .unwrap()
                .first()
                .get::<i64>(1)
                .unwrap()
        })
    });
    match drawn {
        Ok(Some(id)) => id,
        Ok(None) => raise(SequenceError::Unreachable {
            column: column.into(),
            peer: peer.into(),
            reason: "the peer returned no value".into(),
        }),
        Err(f) => raise(SequenceError::Unreachable {
            column: column.into(),
            peer: peer.into(),
            reason: f.summary(),
        }),
    }
}

pub fn handle_share(from: &Peer, req: ShareRequest) -> Result<ShareReply, SequenceError> {
    check_strategy(&req.strategy)?;
    let col = requested_column(from, &req.schema, &req.table, &req.column)?;
    // A shared sequence sets the column's default here: the peer's role must be one that may
    // write the table.
    crate::catalog::access::peer_may(
        col.relid,
        crate::catalog::access::READ_WRITE,
        "share a sequence of",
    )
    .unwrap_or_else(|e| raise(e));
    if let Some((with, s)) = recorded(col.seq) {
        return Err(SequenceError::AlreadyShared {
            seq: col.seq_name,
            peer: with,
            strategy: s.strategy,
        });
    }
    let interleave = req.strategy == "interleave";
    let increment = if interleave { 2 } else { col.increment };
    lock(&col.seq_name, increment);
    let own_high = high_mark(&col);
    let mut objects = Vec::new();
    if interleave {
        restart_above(&col, own_high.max(req.high), 2, 0);
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
        ))
        .unwrap();
        Spi::run(&nextval_function_sql(&function, &foreign, &col, from)).unwrap();
        Spi::run(&format!(
            "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {function}()",
            col.table_display(),
            ident(&col.column)
        ))
        .unwrap();
        objects.push(format!("FUNCTION {function}()"));
        objects.push(format!("FOREIGN TABLE {foreign}"));
    }
    remember(&col, &from.name, &req.strategy, "member", &objects);
    Ok(ShareReply { high: own_high })
}

/// Undo this node's half: the column's default and the sequence's increment as they were,
/// the objects made for the share gone, and the sequence past `high` and its own high mark.
fn restore_local(col: &SeqColumn, share: &Share, high: i64) {
    lock(&col.seq_name, col.increment);
    if share.role == "member" && share.strategy == "shared" {
        Spi::run(&format!(
            "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}",
            col.table_display(),
            ident(&col.column),
            share.original_default
        ))
        .unwrap();
    }
    restart_above(col, high, share.original_increment, 0);
    forget_objects(col.seq, share);
}

/// The column a recorded share is about. Read from the record, not from the column default:
/// on a member of a `shared` share the default no longer names the sequence.
fn shared_columns(filter: &str, args: &[pgrx::datum::DatumWithOid]) -> Vec<SeqColumn> {
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
        )
        .unwrap()
        .map(|r| seq_column(&r))
        .collect()
    })
}

fn seq_column_of(seq: pg_sys::Oid) -> Option<SeqColumn> {
    shared_columns("r.seq = $1", &[seq.into()])
        .into_iter()
        .next()
}

/// Undo a share on both nodes. With `tolerate_unreachable`, a peer that cannot be reached
/// keeps its half (with a WARNING) and only this node's is undone.
pub fn unshare_by_seq(seq: pg_sys::Oid, tolerate_unreachable: bool) {
    let Some((peer_name, share)) = recorded(seq) else {
        return;
    };
    let Some(col) = seq_column_of(seq) else {
        // the table went (DROP TABLE): only the objects made for the share are left here
        forget_objects(seq, &share);
        return;
    };
    let peer = peer::find(&peer_name)
        .or_raise()
        .expect("a share has its peer");
    let req = UnshareRequest {
        schema: col.schema.clone(),
        table: col.table.clone(),
        column: col.column.clone(),
        high: high_mark(&col),
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
        Err(e) => raise(e),
    };
    restore_local(&col, &share, peer_high);
}

pub fn handle_unshare(from: &Peer, req: UnshareRequest) -> Result<ShareReply, SequenceError> {
    let display = qualified(&req.schema, &req.table);
    let col = shared_columns(
        "r.peer_name = $1 AND r.relid = to_regclass($2) AND r.column_name = $3",
        &[
            from.name.as_str().into(),
            display.as_str().into(),
            req.column.as_str().into(),
        ],
    )
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
    )
    .unwrap_or_else(|e| raise(e));
    let (_, share) = recorded(col.seq).expect("listed as shared");
    let high = high_mark(&col);
    restore_local(&col, &share, req.high);
    Ok(ShareReply { high })
}

fn forget_objects(seq: pg_sys::Oid, share: &Share) {
    crate::control::removal::removing(|| drop_share_objects(seq, share))
}

fn drop_share_objects(seq: pg_sys::Oid, share: &Share) {
    for object in &share.objects {
        let (kind, name) = object.split_at(object.rfind(' ').unwrap_or(0));
        Spi::run(&format!("DROP {kind} IF EXISTS{name}")).unwrap();
    }
    Spi::run_with_args(
        "DELETE FROM synclink.shared_sequence WHERE seq = $1",
        &[seq.into()],
    )
    .unwrap();
}

/// Undo this node's half only, for a link the peer is removing.
pub fn restore_local_only(seq: pg_sys::Oid) {
    if let Some((_, share)) = recorded(seq) {
        match seq_column_of(seq) {
            Some(col) => restore_local(&col, &share, 0),
            None => forget_objects(seq, &share),
        }
    }
}

/// The sequences of `relid`'s columns shared with `peer`: undone before the link goes.
pub fn shared_for_table(relid: pg_sys::Oid, peer: &str) -> Vec<pg_sys::Oid> {
    crate::pg::spi::column::<pg_sys::Oid>(
        "SELECT seq FROM synclink.shared_sequence WHERE relid = $1 AND peer_name = $2",
        &[relid.into(), peer.into()],
    )
    .or_raise()
}

/// Undo a shared sequence on both nodes; see sync_unshare_sequence.
pub fn unshare(seq: pg_sys::Oid, peer: Option<&str>) -> crate::pg::error::Result<bool> {
    let peer = peer::resolve(peer)?;
    match recorded(seq) {
        Some((with, _)) if with == peer.name => {
            unshare_by_seq(seq, false);
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
