-- synclink 0.3.0 -> 0.4.0, run by ALTER EXTENSION synclink UPDATE.
--
-- 0.4.0 lets a link carry changes one way: sync_link_table(..., direction => 'push' | 'pull').
-- This script brings a 0.3.0 catalog to exactly what CREATE EXTENSION synclink makes in 0.4.0
-- (a test compares the two), keeping every row. Existing links carry changes both ways, as
-- they did.
--
-- A released script is never edited: a change after 0.4.0 goes into the next upgrade script.

\echo Use "ALTER EXTENSION synclink UPDATE TO '0.4.0'" to load this file. \quit

-- Which way a link's changes travel, seen from this node (see schema.sql).
ALTER TABLE synclink.link
    ADD COLUMN direction text NOT NULL DEFAULT 'both' CHECK (direction IN ('both', 'push', 'pull'));

-- sync_link_table takes direction, after the options it had.
DROP FUNCTION @extschema@.sync_link_table(regclass, text, text, text[], text[], text, text, text);
CREATE FUNCTION @extschema@.sync_link_table(
    tbl regclass, peer text DEFAULT NULL, mode text DEFAULT 'sync', key text[] DEFAULT NULL,
    exclude text[] DEFAULT NULL, copy text DEFAULT 'none', conflict text DEFAULT 'last_write_wins',
    version_column text DEFAULT NULL, direction text DEFAULT 'both')
    RETURNS boolean
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c AS 'MODULE_PATHNAME', 'sync_link_table_wrapper';

-- sync_status shows each link's direction after its mode. A view of one's own over sync_status
-- must be dropped before this update and made again after it.
DROP VIEW @extschema@.sync_status;
CREATE VIEW @extschema@.sync_status AS
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
          FROM synclink.outbox o WHERE o.link_id = l.link_id) q ON true
 ORDER BY l.relid::text, l.peer_name;
REVOKE ALL ON @extschema@.sync_status FROM PUBLIC;
GRANT SELECT ON @extschema@.sync_status TO pg_monitor;

-- 0.4.0's code: a change this node applies from one peer and relays to another goes out
-- through the queue after the applying transaction commits, whatever the mode of the link it
-- leaves by. Each link's objects are made anew in place, keeping versions and queued changes.
SELECT @extschema@.sync_refresh_link(l.relid::pg_catalog.regclass, l.peer_name)
  FROM synclink.link l
 ORDER BY l.link_id;
