-- synclink 0.1.0 -> 0.2.0, run by ALTER EXTENSION synclink UPDATE.
--
-- 0.2.0 is the release that closes synclink to roles it should not serve: a peer need not be
-- a superuser and is tied to the role it arrives as, conflict logs are filtered by row-level
-- security, privileged code runs as the extension's owner with a pinned search path, and
-- synclink's objects can only be removed the way they were made. This script brings a 0.1.0
-- catalog to exactly what CREATE EXTENSION synclink makes in 0.2.0 (a test compares the two),
-- keeping every row: peers, links, queued changes, the conflict log, remembered choices.
--
-- The library is replaced before this script runs (the server loads the new synclink.so on
-- restart); everything here is catalog. The objects each link has of its own (capture
-- function, triggers, version table) are made anew at the end by the 0.2.0 code.
--
-- A released script is never edited: a change after 0.2.0 goes into the next upgrade script.

\echo Use "ALTER EXTENSION synclink UPDATE TO '0.2.0'" to load this file. \quit

-------------------------------------------------------------------------------------------
-- Catalog tables
-------------------------------------------------------------------------------------------

-- A peer is tied to the role it reaches this node as: the first change or request it sends
-- binds the role, and nothing arriving as another role is taken as this peer's afterwards.
-- Existing peers start unbound, as a newly registered one does, and are bound by their next
-- change or request.
ALTER TABLE synclink.peer ADD COLUMN inbound_role oid;

-- Which synclink version's code generated a link's objects. Every link there is was made by
-- 0.1.0; the refresh at the end of this script records its own version for each. A link made
-- later gets the version of the code that makes it (no default here: the code sets it).
ALTER TABLE synclink.link ADD COLUMN generator text;
UPDATE synclink.link SET generator = '0.1.0';

-- A peer's role, no longer necessarily a superuser, inserts requests: an identity column
-- needs no rights on a sequence, where the serial's nextval() default did. The identity's
-- sequence takes over the old one's name and position, so request ids go on where they
-- stopped (requests are kept as an audit trail).
ALTER SEQUENCE synclink.request_request_id_seq RENAME TO request_request_id_seq_0_1_0;
ALTER TABLE synclink.request ALTER COLUMN request_id DROP DEFAULT;
ALTER TABLE synclink.request ALTER COLUMN request_id ADD GENERATED ALWAYS AS IDENTITY;
SELECT pg_catalog.setval('synclink.request_request_id_seq', s.last_value, s.is_called)
  FROM synclink.request_request_id_seq_0_1_0 s;
DROP SEQUENCE synclink.request_request_id_seq_0_1_0;

-- A conflict still open when its table is unlinked cannot be settled any more (sync_resolve
-- needs the link): 0.2.0 closes it as 'unlinked' when unlinking. 0.1.0 left such conflicts
-- open for ever; they are closed the same way here, so that sync_conflicts lists only
-- conflicts that can be resolved.
ALTER TABLE synclink.conflict DROP CONSTRAINT conflict_outcome_check;
ALTER TABLE synclink.conflict ADD CONSTRAINT conflict_outcome_check
    CHECK (outcome IN ('applied', 'kept', 'open', 'resolved', 'superseded', 'remembered', 'unlinked'));
UPDATE synclink.conflict c
   SET outcome = 'unlinked', resolved_at = pg_catalog.clock_timestamp()
 WHERE c.outcome = 'open'
   AND NOT EXISTS (SELECT FROM synclink.link l WHERE l.link_id = c.link_id);

-- Peers' hosts and users are for administrators and monitoring, not for every role.
REVOKE SELECT ON synclink.peer FROM PUBLIC;
GRANT SELECT ON synclink.peer TO pg_monitor;

-- The conflict log holds both versions of rows and the remembered choices name rows by key:
-- each role sees only the entries of tables it may read. Changes from a peer are applied as
-- the table's owner, who logs (and settles) the conflicts of its own tables.
ALTER TABLE synclink.conflict ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers_of_the_table ON synclink.conflict FOR SELECT
    USING (pg_catalog.has_table_privilege(relid::pg_catalog.oid, 'SELECT'));
ALTER TABLE synclink.resolution ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers_of_the_table ON synclink.resolution FOR SELECT
    USING (pg_catalog.has_table_privilege(
               (SELECT l.relid::pg_catalog.oid FROM synclink.link l
                 WHERE l.link_id OPERATOR(pg_catalog.=) resolution.link_id), 'SELECT'));
-- A change from a peer is applied as the owner of its table (src/privilege.rs), in one
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
-- (SELECT on both stays granted to PUBLIC, as in 0.1.0: the policies filter it now.)
GRANT INSERT (link_id, relid, peer_name, key, kind, policy, local_row, peer_row, columns,
              local_version, peer_version, outcome),
      UPDATE (outcome) ON synclink.conflict TO PUBLIC;
GRANT USAGE ON SEQUENCE synclink.conflict_conflict_id_seq TO PUBLIC;

-------------------------------------------------------------------------------------------
-- Functions
-------------------------------------------------------------------------------------------

-- The API functions are no longer STRICT: a NULL argument gets an error saying which one
-- (SQLSTATE 22004) instead of a silent NULL result. (The others that 0.2.0 declares without
-- STRICT were not STRICT in 0.1.0 either.)
ALTER FUNCTION @extschema@.sync_add_peer(text, text) CALLED ON NULL INPUT;
ALTER FUNCTION @extschema@.sync_drop_peer(text, boolean) CALLED ON NULL INPUT;
ALTER FUNCTION @extschema@.sync_resolve(bigint, text) CALLED ON NULL INPUT;
ALTER FUNCTION @extschema@.sync_set_node_name(text) CALLED ON NULL INPUT;

-- The wrappers that run synclink's own work for whoever fires them (a peer's role delivering
-- or asking, an application role whose DDL fires an event trigger) run it as the extension's
-- owner: each is a fixed call with no argument from the caller.
ALTER FUNCTION synclink.receive_done() SECURITY DEFINER;
ALTER FUNCTION synclink.serve_request() SECURITY DEFINER;
ALTER FUNCTION synclink.forget_answered() SECURITY DEFINER;
ALTER FUNCTION synclink.on_sql_drop() SECURITY DEFINER;
ALTER FUNCTION synclink.on_alter_table() SECURITY DEFINER;

-- Trigger functions are checked for EXECUTE when a trigger is made, not when it fires: closed
-- to everyone but superusers, none of synclink's can be attached to a table of someone else's
-- choosing (capture_one and receive act as other roles).
REVOKE ALL ON FUNCTION synclink.capture_one(), synclink.receive(), synclink.queued(),
    synclink.receive_done(), synclink.serve_request(), synclink.forget_answered() FROM PUBLIC;

-- Whether a peer is known to be down is read by sync_status, which is for superusers and
-- pg_monitor now; it reads synclink's state as the extension's owner.
ALTER FUNCTION synclink.peer_known_down(text) SECURITY DEFINER;
REVOKE ALL ON FUNCTION synclink.peer_known_down(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION synclink.peer_known_down(text) TO pg_monitor;

-- Every answered request is forgotten now (its reply went back through RETURNING), not only
-- diff requests: replies to conflict and row requests carry rows.
CREATE OR REPLACE TRIGGER forget_answered AFTER INSERT ON synclink.request
    FOR EACH ROW WHEN (NEW.reply IS NOT NULL) EXECUTE FUNCTION synclink.forget_answered();

-- New in 0.2.0, called by the event triggers below.
CREATE FUNCTION synclink.guard_drops() RETURNS void
    LANGUAGE c STRICT SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'guard_drops_wrapper';
CREATE FUNCTION synclink.check_renamed_schemas() RETURNS void
    LANGUAGE c STRICT SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'check_renamed_schemas_wrapper';

-------------------------------------------------------------------------------------------
-- Views
-------------------------------------------------------------------------------------------

-- sync_status gains the column problem (what keeps a link from working that nothing else
-- shows, with the command that fixes it), in the middle of its columns, so the view is made
-- anew (a view of one's own over sync_status must be dropped before this update and made
-- again after it). It shows peers' hosts and users: for superusers and pg_monitor only.
CREATE FUNCTION synclink.link_problem(l synclink.link) RETURNS text
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
SELECT coalesce(
    (SELECT format('capture trigger %I is missing: run sync_unlink_table(%L, %L) and link the table again',
                   t, l.relid, l.peer_name)
       FROM unnest(l.triggers) t
      WHERE NOT EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = l.relid AND g.tgname = t)
      LIMIT 1),
    (SELECT format('capture trigger %I is disabled, so changes to %s are not sent: ALTER TABLE %s ENABLE TRIGGER %I',
                   g.tgname, l.relid, l.relid, g.tgname)
       FROM pg_trigger g
      WHERE g.tgrelid = l.relid AND g.tgname = ANY (l.triggers) AND g.tgenabled IN ('D', 'R')
      LIMIT 1),
    (SELECT format('foreign server %I of peer %L is missing: run sync_drop_peer(%L, cascade => true) and register the peer again',
                   p.server_name, p.peer_name, p.peer_name)
       FROM synclink.peer p
      WHERE p.peer_name = l.peer_name
        AND NOT EXISTS (SELECT FROM pg_foreign_server s WHERE s.srvname = p.server_name)),
    CASE WHEN to_regclass(l.version_table) IS NULL OR to_regproc(l.capture_function) IS NULL
         THEN format('synclink''s objects for this link are missing: run sync_unlink_table(%L, %L) and link the table again',
                     l.relid, l.peer_name) END)
$$;

DROP VIEW @extschema@.sync_status;
CREATE VIEW @extschema@.sync_status AS
SELECT l.relid            AS "table",
       l.peer_name        AS peer,
       p.node_name        AS peer_node,
       format('%I.%I', l.peer_schema, l.peer_table) AS peer_table,
       l.mode,
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

-- sync_conflicts reads synclink.conflict as whoever queries it, so that row-level security
-- shows each role the conflicts of the tables it may read, and no others.
ALTER VIEW @extschema@.sync_conflicts SET (security_invoker = true);

-------------------------------------------------------------------------------------------
-- Event triggers (made after everything this script drops: the first guards drops)
-------------------------------------------------------------------------------------------

-- What synclink made for a link or a peer goes the way it came: dropping it by hand (the
-- peer's foreign server, a link's triggers, anything in schema synclink) is refused, since
-- the link would break without a word. Enabled always: also for sessions in replica mode.
CREATE FUNCTION synclink.on_guarded_drop() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM synclink.guard_drops(); END $$;
CREATE EVENT TRIGGER synclink_guard_drops ON sql_drop
    WHEN TAG IN ('DROP SERVER', 'DROP FOREIGN TABLE', 'DROP USER MAPPING', 'DROP TRIGGER',
                 'DROP FUNCTION', 'DROP PROCEDURE', 'DROP ROUTINE', 'DROP TYPE', 'DROP DOMAIN',
                 'DROP TABLE', 'DROP VIEW', 'DROP SEQUENCE', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION synclink.on_guarded_drop();
ALTER EVENT TRIGGER synclink_guard_drops ENABLE ALWAYS;

-- A linked table's schema keeps its name: the peer addresses the table's changes by it.
CREATE FUNCTION synclink.on_alter_schema() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM synclink.check_renamed_schemas(); END $$;
CREATE EVENT TRIGGER synclink_check_renamed_schemas ON ddl_command_end
    WHEN TAG IN ('ALTER SCHEMA')
    EXECUTE FUNCTION synclink.on_alter_schema();

-------------------------------------------------------------------------------------------
-- Each link's own objects
-------------------------------------------------------------------------------------------

-- Every link's capture function, triggers and version table were generated by 0.1.0's code.
-- 0.2.0's differ: the capture function cuts change records by bytes as well as rows; the
-- version table has row-level security and grants, because changes from the peer are now
-- applied as the table's owner; and on the node that did not initiate the link, its objects
-- belong to the extension's owner (0.1.0 made them as the peer's role). sync_refresh_link
-- makes them anew in place, keeping the version rows and every queued change, and records
-- 0.2.0 as the link's generator.
CREATE FUNCTION @extschema@.sync_refresh_link(tbl regclass, peer text DEFAULT NULL)
    RETURNS integer
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c AS 'MODULE_PATHNAME', 'sync_refresh_link_wrapper';

SELECT @extschema@.sync_refresh_link(l.relid::pg_catalog.regclass, l.peer_name)
  FROM synclink.link l
 ORDER BY l.link_id;
