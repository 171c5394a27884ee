-- synclink's own catalog. The public API functions live in the extension's schema;
-- everything in schema synclink is internal and owned by the extension.

CREATE SCHEMA IF NOT EXISTS synclink;
GRANT USAGE ON SCHEMA synclink TO PUBLIC;

-- Peers are reached with postgres_fdw's code under a wrapper of synclink's own: a plain
-- CREATE EXTENSION synclink is enough (an extension script cannot CREATE EXTENSION
-- postgres_fdw itself), and DROP EXTENSION synclink takes the wrapper away again.
CREATE FUNCTION synclink.fdw_handler() RETURNS fdw_handler
    AS '$libdir/postgres_fdw', 'postgres_fdw_handler' LANGUAGE C STRICT;
CREATE FUNCTION synclink.fdw_validator(text[], oid) RETURNS void
    AS '$libdir/postgres_fdw', 'postgres_fdw_validator' LANGUAGE C STRICT;
CREATE FOREIGN DATA WRAPPER synclink
    HANDLER synclink.fdw_handler VALIDATOR synclink.fdw_validator;

-- This database's identity among nodes. Changes carry it as their origin, so it must be
-- unique among linked databases: the default mixes in the cluster's system identifier,
-- which differs for every initdb (but not for a physical copy; see sync_set_node_name).
CREATE TABLE synclink.node (
    singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
    node_name text NOT NULL CHECK (node_name ~ '^[A-Za-z0-9_.-]{1,63}$')
);
INSERT INTO synclink.node (node_name)
SELECT left(regexp_replace(current_database(), '[^A-Za-z0-9_]', '_', 'g'), 50)
       || '_' || substr(md5(system_identifier::text), 1, 6)
  FROM pg_control_system();

-- Registered peers. The password lives only in the user mapping, never here.
CREATE TABLE synclink.peer (
    peer_name   text PRIMARY KEY,
    server_name name NOT NULL UNIQUE,
    node_name   text NOT NULL,
    conninfo    text NOT NULL,
    -- The role the peer reaches this node as, learnt from its first change or request: from
    -- then on nothing arriving as another role is taken as this peer's (a superuser sets it
    -- back to NULL if the peer's connection string changes role).
    inbound_role oid,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per table mirrored with one peer, and every object synclink made for it,
-- so that unlink removes exactly those.
CREATE TABLE synclink.link (
    link_id          serial PRIMARY KEY,
    relid            regclass NOT NULL,
    peer_name        text NOT NULL REFERENCES synclink.peer ON DELETE RESTRICT,
    peer_schema      text NOT NULL,
    peer_table       text NOT NULL,
    columns          text[] NOT NULL,
    key_columns      text[] NOT NULL,
    excluded         text[] NOT NULL DEFAULT '{}',  -- not sent, not overwritten: each node keeps its own
    mode             text NOT NULL DEFAULT 'sync' CHECK (mode IN ('sync', 'async')),
    initiator        text NOT NULL,
    row_type         text NOT NULL,
    capture_function text NOT NULL,
    triggers         text[] NOT NULL,
    -- Per key, the version of the row here: who wrote it last, when (see synclink.stamp).
    version_table    text NOT NULL,
    conflict         text NOT NULL DEFAULT 'last_write_wins'
                     CHECK (conflict IN ('last_write_wins', 'prefer_node', 'manual')),
    prefer_node      text CHECK ((conflict = 'prefer_node') = (prefer_node IS NOT NULL)),
    version_column   text,  -- last_write_wins compares it first when both rows exist
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- The synclink version whose code generated this link's capture function, triggers and
    -- version table; sync_refresh_link makes them anew with the code installed now. Set by
    -- whoever writes the row (links made before 0.2.0 say '0.1.0').
    generator        text,
    -- Which way changes travel, seen from this node: both, push (this node's changes go to
    -- the peer, the peer's do not come here) or pull (the reverse). The peer's row says the
    -- opposite of a one-way link's.
    direction        text NOT NULL DEFAULT 'both' CHECK (direction IN ('both', 'push', 'pull')),
    UNIQUE (relid, peer_name)
);

-- Each row a change record carries has a stamp at the same position: the version the change
-- gives the row and the version the row had before it on the sending node. A receiver whose
-- own version of the row is not that base has changed the row meanwhile: a conflict.
-- Versions are (generation, microseconds since 1970, node), bumped past the previous version
-- of the row, so they only grow per key and every node orders any two of them alike. The
-- generation counts the changes made on a preferred node (a link's prefer_node) that the
-- version descends from: only that node raises it, every other change keeps the one it
-- replaced, so the preferred node's change wins over any change made without it, and a
-- change made after it, anywhere, wins over it. Without a preferred node it stays 0.
CREATE TYPE synclink.stamp AS (
    at        bigint,
    node      text,
    base_at   bigint,
    base_node text,
    op        "char",
    gen       bigint  -- the version's generation; a stamp written before 0.6.0 has none (0)
);

-- Where peers deliver changes. Rows are applied by a BEFORE trigger and never stored,
-- so a 100k-row batch costs no heap write or TOAST compression here. A record that was
-- queued carries its sender's outbox seq, so a redelivery is recognised and skipped, and
-- the lowest seq its sender still holds, below which this node may forget what it applied.
CREATE TABLE synclink.inbox (
    origin        text NOT NULL,
    sender        text NOT NULL,
    target_schema text NOT NULL,
    target_table  text NOT NULL,
    op            "char" NOT NULL,
    new_rows      text,
    old_rows      text,
    seq           bigint,
    floor_seq     bigint,
    stamps        text  -- synclink.stamp[], one per row of new_rows (or of old_rows for a delete)
);

-- Changes waiting for a peer: every change in async mode, and in sync mode every change made
-- while the peer could not be reached or while earlier changes still wait. Delivered in seq
-- order per peer, and deleted in the transaction that delivered them.
CREATE TABLE synclink.outbox (
    seq       bigserial,
    -- No foreign keys to peer and link: with several writers, each one's FOR KEY SHARE check
    -- on the same parent row costs a multixact per change. Unlinking settles the link's queue
    -- once its triggers are gone (no writer left), so a change cannot outlive its link.
    peer_name text NOT NULL,
    link_id   int NOT NULL,
    origin    text NOT NULL,
    op        "char" NOT NULL,
    new_rows  text,
    old_rows  text,
    stamps    text,
    queued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    reason    text,  -- the error that sent this change here; NULL when it queued behind others
    -- The one index: delivery reads a peer's queue in seq order, and every change written
    -- pays for each index the outbox has.
    PRIMARY KEY (peer_name, seq)
);
-- A change record for several peers (a table linked async with more than one), stored once:
-- the writer pays for one record however many peers it goes to. The delivery worker (and
-- sync_flush) hands each on as a record per peer in the outbox, with the same seq, so that
-- delivery keeps its order; until then delivery to those peers stops short of its seq.
CREATE TABLE synclink.fanout (
    seq       bigint PRIMARY KEY,
    link_ids  int[] NOT NULL,  -- the links it goes to
    origin    text NOT NULL,
    op        "char" NOT NULL,
    new_rows  text,
    old_rows  text,
    stamps    text,
    queued_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Change records are large texts, compressed as they are stored: lz4 compresses them several
-- times faster than the default pglz, for a little more space. A server built without lz4
-- keeps pglz.
DO $$
BEGIN
    ALTER TABLE synclink.outbox ALTER new_rows SET COMPRESSION lz4,
                                ALTER old_rows SET COMPRESSION lz4,
                                ALTER stamps SET COMPRESSION lz4;
    ALTER TABLE synclink.inbox ALTER new_rows SET COMPRESSION lz4,
                               ALTER old_rows SET COMPRESSION lz4,
                               ALTER stamps SET COMPRESSION lz4;
    ALTER TABLE synclink.fanout ALTER new_rows SET COMPRESSION lz4,
                                ALTER old_rows SET COMPRESSION lz4,
                                ALTER stamps SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;

-- A peer remembers which of this node's seqs it applied, and skips a seq it has seen. So that
-- a node whose extension is dropped and created again never reuses one, seqs start from the
-- clock: milliseconds since 1970, times 1000 (more than a million changes a second, kept up,
-- would be needed to catch up with it).
SELECT pg_catalog.setval('synclink.outbox_seq_seq',
                         (floor(extract(epoch FROM clock_timestamp()) * 1000) * 1000)::bigint);

-- Queued records applied here, per sender: delivery is at-least-once (the peer commits
-- before the sender deletes), so each is applied once in effect. One row per delivering
-- statement (a hundred records or so) with the seqs it applied and the range they span: a
-- row per record would cost an index entry per record to write, and as many dead ones for
-- every later statement to step over until vacuum.
CREATE TABLE synclink.applied (
    sender text NOT NULL,
    lo     bigint NOT NULL,
    hi     bigint NOT NULL,
    seqs   bigint[] NOT NULL
);
CREATE INDEX applied_sender_hi ON synclink.applied (sender, hi);

-- Delivery health per peer, written by whoever flushes (one at a time per peer).
CREATE TABLE synclink.peer_state (
    peer_name         text PRIMARY KEY REFERENCES synclink.peer ON DELETE CASCADE,
    delivered         bigint NOT NULL DEFAULT 0,
    failed            bigint NOT NULL DEFAULT 0,
    last_delivered_at timestamptz,
    last_error        text,
    last_error_at     timestamptz
);

-- Requests from peers to set up or remove their half of a link. Kept as an audit trail.
CREATE TABLE synclink.request (
    -- an identity, so that a peer's role needs no rights on a sequence to make a request
    request_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    from_node   text NOT NULL,
    action      text NOT NULL,
    body        jsonb NOT NULL,
    reply       jsonb,  -- set by the handler; the requesting node reads it with RETURNING
    received_at timestamptz NOT NULL DEFAULT now(),
    -- rows in bulk (sync_clone), beside the body: read by the handler and never kept
    payload     bytea
);
-- A request may carry rows by the megabyte (sync_clone): stored, until it is answered, with
-- the cheaper compression where the server has it.
DO $$
BEGIN
    ALTER TABLE synclink.request ALTER body SET COMPRESSION lz4, ALTER reply SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;
-- A reply's rows in bulk are kept only until the requester has read them: not compressed.
ALTER TABLE synclink.request ALTER payload SET STORAGE EXTERNAL;

-- Sequences shared with a peer (sync_share_sequence), with what undo puts back.
-- role: 'owner' on the node where it was called, 'member' on the peer.
CREATE TABLE synclink.shared_sequence (
    seq                oid PRIMARY KEY,
    peer_name          text NOT NULL REFERENCES synclink.peer,
    strategy           text NOT NULL CHECK (strategy IN ('shared', 'interleave')),
    role               text NOT NULL CHECK (role IN ('owner', 'member')),
    relid              oid NOT NULL,
    column_name        text NOT NULL,
    original_default   text NOT NULL,
    original_increment bigint NOT NULL,
    objects            text[] NOT NULL,  -- made for the share, e.g. 'VIEW synclink."..."'
    created_at         timestamptz NOT NULL DEFAULT now()
);

-- Every conflict a change from a peer met here, and what became of it. Each node logs what it
-- saw: the row here and the row the peer sent. outcome: 'applied' (the peer's row won),
-- 'kept' (the row here won), 'open' (manual: waiting for sync_resolve), 'resolved',
-- 'superseded' (a newer conflict on the same row replaced it), 'remembered' (the same two
-- rows were resolved before; that choice was applied again), 'unlinked' (the table was
-- unlinked while it was open: nothing is left to settle it with).
CREATE TABLE synclink.conflict (
    conflict_id  bigserial PRIMARY KEY,
    link_id      int NOT NULL,
    relid        regclass NOT NULL,
    peer_name    text NOT NULL,
    key          jsonb NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('insert_exists', 'update_changed', 'update_missing',
                                               'delete_changed', 'delete_missing')),
    policy       text NOT NULL,
    local_row    jsonb,  -- NULL: no row here
    peer_row     jsonb,  -- NULL: the peer deleted it
    columns      text[] NOT NULL,  -- columns whose values differ
    local_version synclink.stamp,
    peer_version  synclink.stamp,
    outcome      text NOT NULL CHECK (outcome IN ('applied', 'kept', 'open', 'resolved',
                                                  'superseded', 'remembered', 'unlinked')),
    detected_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    resolved_at  timestamptz,
    resolved_by  text,       -- the node where sync_resolve was called
    kept         text        -- the node whose row was kept by sync_resolve
);
CREATE INDEX conflict_open ON synclink.conflict (link_id, key) WHERE outcome = 'open';
-- A change that reaches a node by several paths (a mesh) meets a conflict there once per path:
-- it is logged the first time, found here the next.
CREATE INDEX conflict_key ON synclink.conflict (relid, key);

-- Choices made with sync_resolve, remembered so that the same two rows meeting again on the
-- same key are not asked about again. Rows are named by a hash of their values.
CREATE TABLE synclink.resolution (
    link_id     int NOT NULL,
    key         jsonb NOT NULL,
    rows        text[] NOT NULL,  -- the two row hashes, sorted, so both nodes agree
    kept        text NOT NULL,    -- the hash of the row that was kept
    resolved_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (link_id, key, rows)
);

REVOKE ALL ON ALL TABLES IN SCHEMA synclink FROM PUBLIC;
GRANT SELECT ON synclink.node, synclink.link, synclink.shared_sequence TO PUBLIC;
-- Peers' hosts and users are for administrators and monitoring.
GRANT SELECT ON synclink.peer TO pg_monitor;

-- The conflict log holds both versions of rows; the choices remembered name rows by key.
-- Each role sees only the entries of tables it may read.
ALTER TABLE synclink.conflict ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers_of_the_table ON synclink.conflict FOR SELECT
    USING (pg_catalog.has_table_privilege(relid::pg_catalog.oid, 'SELECT'));
ALTER TABLE synclink.resolution ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers_of_the_table ON synclink.resolution FOR SELECT
    USING (pg_catalog.has_table_privilege(
               (SELECT l.relid::pg_catalog.oid FROM synclink.link l
                 WHERE l.link_id OPERATOR(pg_catalog.=) resolution.link_id), 'SELECT'));
-- A change from a peer is applied as the owner of its table (src/pg/privilege.rs), in one
-- statement that also logs the conflicts it meets: the owner may log and settle those of its
-- own tables.
CREATE POLICY owners_of_the_table ON synclink.conflict FOR INSERT
    WITH CHECK (pg_catalog.pg_has_role(
                    (SELECT c.relowner FROM pg_catalog.pg_class c
                      WHERE c.oid OPERATOR(pg_catalog.=) relid::pg_catalog.oid), 'USAGE')
                AND EXISTS (SELECT FROM synclink.link l
                             WHERE l.link_id OPERATOR(pg_catalog.=) conflict.link_id
                               AND l.relid::pg_catalog.oid OPERATOR(pg_catalog.=) conflict.relid::pg_catalog.oid
                               AND l.peer_name OPERATOR(pg_catalog.=) conflict.peer_name));
CREATE POLICY owners_of_the_table_settle ON synclink.conflict FOR UPDATE
    USING (pg_catalog.pg_has_role(
               (SELECT c.relowner FROM pg_catalog.pg_class c
                 WHERE c.oid OPERATOR(pg_catalog.=) relid::pg_catalog.oid), 'USAGE'));
GRANT SELECT ON synclink.conflict, synclink.resolution TO PUBLIC;
GRANT INSERT (link_id, relid, peer_name, key, kind, policy, local_row, peer_row, columns,
              local_version, peer_version, outcome),
      UPDATE (outcome) ON synclink.conflict TO PUBLIC;
GRANT USAGE ON SEQUENCE synclink.conflict_conflict_id_seq TO PUBLIC;
