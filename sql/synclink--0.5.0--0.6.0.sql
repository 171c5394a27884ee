-- synclink 0.5.0 -> 0.6.0, run by ALTER EXTENSION synclink UPDATE.
--
-- 0.6.0 gives every row version a generation: the count of changes made on a preferred node
-- (a link's prefer_node) that the version descends from, compared before the time, so that a
-- table whose links prefer a node converges on every node of a mesh; sync_link_table can make
-- the peer's table, and sync_clone a whole schema with its rows. This script brings a
-- 0.5.0 catalog to exactly what CREATE EXTENSION synclink makes in 0.6.0 (a test compares the
-- two), keeping every row.

\echo Use "ALTER EXTENSION synclink UPDATE TO '0.6.0'" to load this file. \quit

-- Stamps kept before (the conflict log's versions) read with no generation: 0. Change records
-- queued before the update carry stamps of five fields, which the apply reads as generation 0.
ALTER TYPE synclink.stamp ADD ATTRIBUTE gen bigint;

-- Every version there is was made without a preferred node's generation: 0. A constant
-- default does not rewrite the table.
DO $$
DECLARE
    vt text;
BEGIN
    FOR vt IN SELECT DISTINCT l.version_table FROM synclink.link l
               WHERE pg_catalog.to_regclass(l.version_table) IS NOT NULL
    LOOP
        EXECUTE pg_catalog.format(
            'ALTER TABLE %s ADD COLUMN IF NOT EXISTS "synclink$gen" bigint NOT NULL DEFAULT 0', vt);
    END LOOP;
END
$$;

-- A request may carry rows by the megabyte (sync_clone): stored, until it is answered, with
-- the cheaper compression where the server has it.
DO $$
BEGIN
    ALTER TABLE synclink.request ALTER body SET COMPRESSION lz4, ALTER reply SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;

-- sync_link_table takes create_missing, after the options it had: make the table on the peer
-- first when the peer has none. Privileges granted on it by hand are to be granted again.
DROP FUNCTION @extschema@.sync_link_table(regclass, text, text, text[], text[], text, text, text, text);
CREATE FUNCTION @extschema@.sync_link_table(
    tbl regclass, peer text DEFAULT NULL, mode text DEFAULT 'sync', key text[] DEFAULT NULL,
    exclude text[] DEFAULT NULL, copy text DEFAULT 'none', conflict text DEFAULT 'last_write_wins',
    version_column text DEFAULT NULL, direction text DEFAULT 'both', create_missing boolean DEFAULT false)
    RETURNS boolean
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c AS 'MODULE_PATHNAME', 'sync_link_table_wrapper';

-- sync_clone: this database's schema and rows made again in a peer's. It reads the caller's
-- search path (the schemas it clones by default), then pins its own.
CREATE FUNCTION @extschema@.sync_clone(
    peer text, tables text[] DEFAULT NULL, objects text[] DEFAULT NULL,
    max_rows bigint DEFAULT NULL, direction text DEFAULT 'to_peer')
    RETURNS TABLE (object_kind text, object_name text, action text, "rows" bigint, detail text)
    LANGUAGE c AS 'MODULE_PATHNAME', 'sync_clone_wrapper';

-- 0.6.0's code: the capture stamps each version with its generation (raised where a link of
-- the table prefers this node), the apply and sync_resolve compare and keep it.
SELECT @extschema@.sync_refresh_link(l.relid::pg_catalog.regclass, l.peer_name)
  FROM synclink.link l
 ORDER BY l.link_id;
