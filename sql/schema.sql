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
    mode             text NOT NULL DEFAULT 'sync' CHECK (mode IN ('sync', 'async')),
    initiator        text NOT NULL,
    row_type         text NOT NULL,
    capture_function text NOT NULL,
    triggers         text[] NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (relid, peer_name)
);

-- Where peers deliver changes. Rows are applied by a BEFORE trigger and never stored,
-- so a 100k-row batch costs no heap write or TOAST compression here.
CREATE TABLE synclink.inbox (
    origin        text NOT NULL,
    sender        text NOT NULL,
    target_schema text NOT NULL,
    target_table  text NOT NULL,
    op            "char" NOT NULL,
    new_rows      text,
    old_rows      text
);

-- Requests from peers to set up or remove their half of a link. Kept as an audit trail.
CREATE TABLE synclink.request (
    request_id  bigserial PRIMARY KEY,
    from_node   text NOT NULL,
    action      text NOT NULL,
    body        jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

REVOKE ALL ON ALL TABLES IN SCHEMA synclink FROM PUBLIC;
GRANT SELECT ON synclink.node, synclink.peer, synclink.link TO PUBLIC;
