//! The requests one node sends another, and their bodies.
//!
//! On the wire a request is a row in the peer's `synclink.request` table: `action` (text) and
//! `body` (jsonb); the reply comes back through RETURNING. [`Request`] is that pair, typed.
//!
//! Versioning: a body may gain fields, each with a serde default, so a node ignores what a
//! newer node adds and fills in what an older node leaves out. A change an older node cannot
//! ignore gets a new action name; a node that meets an action it does not know refuses it with
//! [`super::RpcError::UnknownAction`], whose hint says to upgrade.

use crate::catalog::definition::Ddl;
use crate::catalog::link::WireColumn;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkRequest {
    pub schema: String,
    pub table: String,
    pub columns: Vec<WireColumn>,
    pub key: Vec<String>,
    pub initiator: String,
    pub from_schema: String,
    pub from_table: String,
    #[serde(default = "sync_mode")]
    pub mode: String,
    /// columns neither sent nor overwritten; each node keeps its own values
    #[serde(default)]
    pub exclude: Vec<String>,
    /// the conflict policy as stored (see crate::catalog::policy::Policy::stored)
    #[serde(default = "last_write_wins")]
    pub conflict: String,
    #[serde(default)]
    pub prefer_node: Option<String>,
    #[serde(default)]
    pub version_column: Option<String>,
    /// which way changes travel, seen from the initiator (both, push or pull); a node that
    /// makes a one-way half says so in its [`LinkReply`]
    #[serde(default = "both_ways")]
    pub direction: String,
    /// the node the initiator's links of the table prefer, this one included (a table has one
    /// preferred node wherever it travels)
    #[serde(default)]
    pub preferred: Option<String>,
}

/// The peer's answer to a [`LinkRequest`]: the direction it recorded, seen from the peer. A
/// node older than one-way links answers nothing, and a one-way link is then refused.
#[derive(Debug, Serialize, Deserialize)]
pub struct LinkReply {
    pub direction: String,
}

pub fn both_ways() -> String {
    "both".into()
}

pub fn last_write_wins() -> String {
    "last_write_wins".into()
}

pub fn sync_mode() -> String {
    "sync".into()
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UnlinkRequest {
    pub schema: String,
    pub table: String,
    #[serde(default)]
    pub discard_queued: bool,
}

/// What is compared: the link's columns and key when the table is linked with the peer, else
/// every non-generated column and the primary key.
#[derive(Serialize, Deserialize, Clone)]
pub struct Shape {
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    pub key: Vec<String>,
}

#[derive(Serialize, Deserialize)]
pub struct DiffRequest {
    #[serde(flatten)]
    pub shape: Shape,
    /// bucket = hash(key) & mask
    pub mask: i64,
    /// None: answer the bucket summaries; Some: answer the rows of these buckets
    pub buckets: Option<Vec<i32>>,
    /// reconcile: rows to write and keys to delete here (the requester's values win), or keys
    /// whose rows to send back (the peer's values win)
    #[serde(default)]
    pub repair: Option<Repair>,
}

#[derive(Serialize, Deserialize, Default)]
pub struct Repair {
    pub upsert: serde_json::Value,
    pub delete: serde_json::Value,
    pub fetch: serde_json::Value,
    /// every key the repair touches on either node: their row versions are forgotten on both
    /// (a version no change is made on; the generation kept)
    #[serde(default)]
    pub forget: serde_json::Value,
    /// the node whose rows win, for closing open conflicts on those keys
    #[serde(default)]
    pub kept: Option<String>,
}

/// A choice made with sync_resolve, as both nodes record it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// the node whose row is kept
    pub node: String,
    /// the version the kept row gets on both nodes
    pub at: i64,
    /// and its generation (synclink.stamp): the higher of the two rows', so that the kept row
    /// is later than both wherever it travels (0 from a node before 0.6.0)
    #[serde(default)]
    pub gen: i64,
    /// hashes of the two rows in conflict (sorted) and of the kept one
    pub rows: [String; 2],
    pub kept: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct ResolveRequest {
    pub schema: String,
    pub table: String,
    pub key: serde_json::Value,
    pub decision: Decision,
    /// the resolving node's row, when it is the one kept
    pub row: Option<serde_json::Value>,
    pub take: bool,
}

#[derive(Serialize, Deserialize)]
pub struct ShareRequest {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub strategy: String,
    /// shared: the owner's view (in its synclink schema) that hands out the next value
    pub view: Option<String>,
    /// the highest value the requesting node has handed out
    pub high: i64,
}

#[derive(Serialize, Deserialize)]
pub struct ShareReply {
    pub high: i64,
}

#[derive(Serialize, Deserialize)]
pub struct UnshareRequest {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub high: i64,
}

/// Make a table the peer does not have (sync_link_table(…, create => true)): the statements of
/// the table's definition, in order. The peer runs them as the role the request arrives as.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    pub schema: String,
    pub table: String,
    pub objects: Vec<Ddl>,
}

/// What the peer made of a [`CreateRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateReply {
    /// it had a table of that name already, and made nothing
    pub existed: bool,
    /// the objects it made, as "kind name"
    pub made: Vec<String>,
}

/// Make objects for sync_clone: each in its own subtransaction, as the role the request
/// arrives as; one that is there already is compared, not made again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloneObjectsRequest {
    pub objects: Vec<Ddl>,
}

/// What became of each object of a [`CloneObjectsRequest`], in its order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectOutcome {
    /// created, exists, differs or failed
    pub action: String,
    pub detail: Option<String>,
}

/// Rows for sync_clone, for a table the peer has with the same columns: the text of an array
/// of the source table's row type, parsed there in one piece.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloneRowsRequest {
    pub table: String,
    /// the source table's columns: name and type, in order
    pub columns: Vec<(String, String)>,
    pub rows: String,
    /// how many rows `rows` holds
    pub count: i32,
}

/// Rows for sync_clone into a table this clone made (empty until now): a batch in one of
/// COPY's formats, travelling as the request's payload beside this body, taken by COPY FROM
/// in one piece; a batch it refuses is halved until the rows it refuses are found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyRowsRequest {
    pub table: String,
    /// the source table's columns that are written (not generated): name and type, in order
    pub columns: Vec<(String, String)>,
    pub format: crate::pg::copy::Format,
    /// the encoding of the batch's text
    pub encoding: String,
    /// how many rows the batch holds
    pub count: i32,
    /// the primary key's columns (none: rows are named by their place)
    pub key: Vec<String>,
}

/// What the receiving node did with a [`CopyRowsRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CopyRowsReply {
    pub inserted: i64,
    pub present: i64,
    /// rows it refused: their key (`(id) = (5)`) and the error
    pub refused: Vec<(String, String)>,
    /// why no more rows were tried
    pub skipped: Option<String>,
}

/// sync_clone run on the other node (`direction => 'from_peer'`): the objects of the peer's
/// tables (`tables`: names or patterns; NULL: every table of the peer's schemas of these
/// names, the caller's search path here).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClonePlanRequest {
    pub tables: Option<Vec<String>>,
    pub schemas: Vec<String>,
}

/// Choose the rows of `tables` to copy to the requester, as sync_clone does here
/// (`max_rows` of each and every row they reference; NULL: all): each table's name and how
/// many rows it has by reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloneChooseRequest {
    pub tables: Vec<String>,
    pub max_rows: Option<i64>,
}

/// The next batch of the rows chosen of `table`, from a cursor the first request opens:
/// `bulk`, in COPY's format (the reply's payload) of about `limit` rows; else as an array's
/// text in the reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloneReadRequest {
    pub table: String,
    pub limited: bool,
    pub bulk: bool,
    pub limit: i64,
    /// the first batch of this table in this clone: a cursor left open by an earlier clone
    /// in the same transaction is closed, and the rows read from the start
    pub first: bool,
}

/// A batch of rows as it leaves the node that has them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outgoing {
    /// in COPY's format: the request's (or reply's) payload
    Copy(CopyRowsRequest),
    /// as an array's text, with each row's key as a report names it
    Rows(CloneRowsRequest, Vec<Option<String>>),
}

/// What the peer did with a [`CloneRowsRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CloneRowsReply {
    pub inserted: i64,
    /// rows whose key (or another unique value) the table had already
    pub present: i64,
    /// rows the table refused: their place in the request (from 1) and the error
    pub refused: Vec<(i32, String)>,
    /// why no row was tried (the table is missing or has other columns)
    pub skipped: Option<String>,
}

impl super::Body for CloneObjectsRequest {
    const ACTION: &'static str = "clone_objects";
}
impl super::Body for CloneRowsRequest {
    const ACTION: &'static str = "clone_rows";
}
impl super::Body for ClonePlanRequest {
    const ACTION: &'static str = "clone_plan";
}
impl super::Body for CloneChooseRequest {
    const ACTION: &'static str = "clone_choose";
}
impl super::Body for CloneReadRequest {
    const ACTION: &'static str = "clone_read";
}
impl super::Body for CopyRowsRequest {
    const ACTION: &'static str = "copy_rows";
}
impl super::Body for CreateRequest {
    const ACTION: &'static str = "create_table";
}
impl super::Body for LinkRequest {
    const ACTION: &'static str = "link";
}
impl super::Body for UnlinkRequest {
    const ACTION: &'static str = "unlink";
}
impl super::Body for DiffRequest {
    const ACTION: &'static str = "diff";
}
impl super::Body for ResolveRequest {
    const ACTION: &'static str = "resolve";
}
impl super::Body for ShareRequest {
    const ACTION: &'static str = "share_sequence";
}
impl super::Body for UnshareRequest {
    const ACTION: &'static str = "unshare_sequence";
}
