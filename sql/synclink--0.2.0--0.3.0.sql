-- synclink 0.2.0 -> 0.3.0: cheaper writes on linked tables.

-- Change records are stored with lz4 compression where the server has it (see schema.sql).
DO $$
BEGIN
    ALTER TABLE synclink.outbox ALTER new_rows SET COMPRESSION lz4,
                                ALTER old_rows SET COMPRESSION lz4,
                                ALTER stamps SET COMPRESSION lz4;
    ALTER TABLE synclink.inbox ALTER new_rows SET COMPRESSION lz4,
                               ALTER old_rows SET COMPRESSION lz4,
                               ALTER stamps SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;

-- Version tables leave half of each page free for updates of the versions on the same page;
-- pages written from now on do.
DO $$
DECLARE
    l record;
BEGIN
    FOR l IN SELECT version_table FROM synclink.link
              WHERE pg_catalog.to_regclass(version_table) IS NOT NULL ORDER BY link_id
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s SET (fillfactor = 50)', l.version_table);
    END LOOP;
END
$$;

-- 0.3.0's capture functions plan a statement of 100 rows or more for its own size and write
-- the versions of its keys, when it is an update or a delete, with a plain UPDATE; each link's
-- code is made anew in place, keeping its versions and queued changes.
SELECT @extschema@.sync_refresh_link(l.relid::pg_catalog.regclass, l.peer_name)
  FROM synclink.link l
 ORDER BY l.link_id;
