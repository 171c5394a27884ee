-- synclink 0.4.0 -> 0.5.0, run by ALTER EXTENSION synclink UPDATE.
--
-- 0.5.0 captures a table's changes once for all its links. This script brings a 0.4.0 catalog
-- to exactly what CREATE EXTENSION synclink makes in 0.5.0 (a test compares the two), keeping
-- every row.

\echo Use "ALTER EXTENSION synclink UPDATE TO '0.5.0'" to load this file. \quit

-- A change that reaches a node by several paths (a mesh) meets a conflict there once per path:
-- it is logged the first time, found here the next.
CREATE INDEX conflict_key ON synclink.conflict (relid, key);

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
REVOKE ALL ON synclink.fanout FROM PUBLIC;
DO $$
BEGIN
    ALTER TABLE synclink.fanout ALTER new_rows SET COMPRESSION lz4,
                                ALTER old_rows SET COMPRESSION lz4,
                                ALTER stamps SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;
CREATE TRIGGER queued AFTER INSERT ON synclink.fanout
    FOR EACH STATEMENT EXECUTE FUNCTION synclink.queued();
ALTER TABLE synclink.fanout ALTER COLUMN seq SET DEFAULT synclink.next_outbox_seq();

-- sync_status counts a link's records waiting in either table.
CREATE OR REPLACE VIEW @extschema@.sync_status AS
SELECT l.relid            AS "table",
       l.peer_name        AS peer,
       p.node_name        AS peer_node,
       format('%I.%I', l.peer_schema, l.peer_table) AS peer_table,
       l.mode,
       l.direction,
       NOT synclink.peer_known_down(l.peer_name) AS peer_reachable,
       q.queued,
       q.oldest_queued_at,
       clock_timestamp() - q.oldest_queued_at AS oldest_queued_age,
       s.last_delivered_at,
       s.delivered,
       s.failed,
       coalesce(CASE WHEN q.last_queued_at > s.last_error_at OR s.last_error_at IS NULL
                     THEN q.last_reason END, s.last_error) AS last_error,
       synclink.link_problem(l) AS problem,
       l.key_columns      AS key,
       l.columns,
       l.excluded,
       CASE l.conflict WHEN 'prefer_node' THEN 'prefer_node: ' || l.prefer_node
                       WHEN 'last_write_wins' THEN 'last_write_wins'
                            || coalesce(' by ' || l.version_column, '')
                       ELSE l.conflict END AS conflict,
       (SELECT count(*) FROM synclink.conflict c WHERE c.link_id = l.link_id) AS conflicts,
       (SELECT count(*) FROM synclink.conflict c
         WHERE c.link_id = l.link_id AND c.outcome = 'open') AS open_conflicts,
       l.initiator,
       p.conninfo,
       l.created_at
  FROM synclink.link l
  JOIN synclink.peer p USING (peer_name)
  LEFT JOIN synclink.peer_state s USING (peer_name)
  LEFT JOIN LATERAL (
        SELECT count(*) AS queued, min(o.queued_at) AS oldest_queued_at,
               max(o.queued_at) AS last_queued_at,
               (array_agg(o.reason ORDER BY o.seq DESC) FILTER (WHERE o.reason IS NOT NULL))[1] AS last_reason
          FROM (SELECT o.seq, o.queued_at, o.reason FROM synclink.outbox o WHERE o.link_id = l.link_id
                UNION ALL
                SELECT f.seq, f.queued_at, NULL FROM synclink.fanout f WHERE l.link_id = ANY (f.link_ids)) o) q ON true
 ORDER BY l.relid::text, l.peer_name;

-- A change applied from a peer and passed on keeps the version the apply gave its row, and
-- only a row the apply stamped in this transaction keeps it.
CREATE FUNCTION synclink."written_in_this_transaction"(
	"xid" xid /* pg_sys :: TransactionId */
) RETURNS bool /* bool */
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'written_in_this_transaction_wrapper';

-- 0.5.0's code: a table's changes are captured once, by one function and one set of triggers
-- for all its links, stamping versions in one version table the links share; a change passed
-- on from one peer to another keeps the version it came with. Each table's capture is made
-- anew in place: the versions of its links' version tables are merged into one (the later
-- version of each key kept), queued changes stay.
SELECT @extschema@.sync_refresh_link(l.relid::pg_catalog.regclass, l.peer_name)
  FROM synclink.link l
 ORDER BY l.link_id;
