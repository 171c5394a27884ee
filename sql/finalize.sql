-- Receiving: a peer INSERTs a change record into synclink.inbox; the row trigger
-- synclink.receive() (in Rust: it runs once per record) applies it and keeps nothing. The
-- role the peer connects as needs INSERT on synclink.inbox and INSERT, UPDATE and DELETE on
-- the linked tables (src/pg/privilege.rs checks); synclink's bookkeeping then runs as the
-- extension's owner, and the rows are written as their table's owner.
CREATE TRIGGER receive BEFORE INSERT ON synclink.inbox
    FOR EACH ROW EXECUTE FUNCTION synclink.receive();

-- Queued records are held by the row trigger until the delivering statement ends; this applies them,
-- a run of records for one table as one statement.
CREATE FUNCTION synclink.receive_done() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM synclink.apply_pending();
    RETURN NULL;
END
$$;
CREATE TRIGGER receive_done AFTER INSERT ON synclink.inbox
    FOR EACH STATEMENT EXECUTE FUNCTION synclink.receive_done();

-- The triggers of a table whose links that send are all async call this with the id of one
-- of them (src/data/capture/one_row.rs): a statement that changed one row is queued here for
-- every such link, any other goes to the table's generated capture function. It checks that
-- it runs as one of the triggers synclink made on that link's table.
CREATE FUNCTION synclink.capture_one() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'synclink_capture_one';

-- Whatever queued changes (an async capture function, a sync write that could not reach
-- its peer), the delivery worker is woken when the transaction commits.
CREATE TRIGGER queued AFTER INSERT ON synclink.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION synclink.queued();
CREATE TRIGGER queued AFTER INSERT ON synclink.fanout
    FOR EACH STATEMENT EXECUTE FUNCTION synclink.queued();
-- The seq default notes every 1000th change, so that the trigger above looks at the backlog
-- then and only then. A record for several peers draws its seq from the same sequence.
ALTER TABLE synclink.outbox ALTER COLUMN seq SET DEFAULT synclink.next_outbox_seq();
ALTER TABLE synclink.fanout ALTER COLUMN seq SET DEFAULT synclink.next_outbox_seq();

-- A peer asking this node to set up or remove its half of a link, compare rows or settle a
-- conflict. The peer's role needs INSERT (from_node, action, body) and SELECT (reply) on
-- synclink.request; the request is carried out as the extension's owner, for the tables that
-- role may reach (synclink.handle_request checks its rights on each).
CREATE FUNCTION synclink.serve_request() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT r.reply, r.reply_payload INTO NEW.reply, NEW.payload
      FROM synclink.handle_request(NEW.from_node, NEW.action, NEW.body, NEW.payload) r;
    RETURN NEW;
END
$$;
CREATE TRIGGER serve BEFORE INSERT ON synclink.request
    FOR EACH ROW EXECUTE FUNCTION synclink.serve_request();

-- An answered request (its reply already went back through RETURNING) is not kept: replies
-- carry row hashes by the thousand, or rows. Link and unlink requests stay as an audit trail.
CREATE FUNCTION synclink.forget_answered() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM synclink.request WHERE request_id = NEW.request_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER forget_answered AFTER INSERT ON synclink.request
    FOR EACH ROW WHEN (NEW.reply IS NOT NULL) EXECUTE FUNCTION synclink.forget_answered();

-- The data path is not for application roles: with these an ordinary role could write rows
-- that are never captured, or send rows to a peer that were never written here.
REVOKE ALL ON FUNCTION synclink.apply(text, text, text, text, "char", text, text, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION synclink.apply_pending() FROM PUBLIC;
REVOKE ALL ON FUNCTION synclink.shared_nextval(oid, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION synclink.ship(integer, "char", text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION synclink.handle_request(text, text, jsonb, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION synclink.add_bulk_tables() FROM PUBLIC;
REVOKE ALL ON FUNCTION synclink.next_outbox_seq() FROM PUBLIC;
-- Trigger functions are checked for EXECUTE when a trigger is made, not when it fires: closed
-- to everyone but superusers, none of synclink's can be attached to a table of someone else's
-- choosing (capture_one and receive act as other roles).
REVOKE ALL ON FUNCTION synclink.capture_one(), synclink.receive(), synclink.queued(),
    synclink.receive_done(), synclink.serve_request(), synclink.forget_answered() FROM PUBLIC;

-- What keeps a link from working that nothing else reports, with the way out: NULL when
-- nothing does. Its capture triggers must exist and fire (a disabled one captures nothing),
-- and the peer's foreign server and synclink's own objects must be there.
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

-- One row per link. Queue figures are the link's own; delivery counters and errors are the
-- peer's (one queue per peer keeps its changes in order). peer_reachable is what synclink
-- last saw: false from a failed attempt until synclink.retry_interval has passed. problem:
-- what keeps the link from working that the other columns do not show, and what to do.
-- It shows no row data, but it does show peers' hosts and users: for superusers and
-- members of pg_monitor.
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
          FROM (SELECT o.seq, o.queued_at, o.reason FROM synclink.outbox o WHERE o.link_id = l.link_id
                UNION ALL
                SELECT f.seq, f.queued_at, NULL FROM synclink.fanout f WHERE l.link_id = ANY (f.link_ids)) o) q ON true
 ORDER BY l.relid::text, l.peer_name;
REVOKE ALL ON @extschema@.sync_status FROM PUBLIC;
GRANT SELECT ON @extschema@.sync_status TO pg_monitor;
REVOKE ALL ON FUNCTION synclink.peer_known_down(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION synclink.peer_known_down(text) TO pg_monitor;

CREATE FUNCTION synclink.before_drop() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'synclink_before_drop';
CREATE EVENT TRIGGER synclink_before_drop ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION')
    EXECUTE FUNCTION synclink.before_drop();

-- A dropped table takes its links along; an ALTER TABLE that would break a link is refused.
-- Event triggers fire for whoever runs the DDL, an application role dropping its own table
-- too; the checks read synclink's catalog and unlinking asks the peer, so they run as the
-- extension's owner (SECURITY DEFINER), each a fixed call with no argument.
CREATE FUNCTION synclink.on_sql_drop() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM synclink.forget_dropped_tables(); END $$;
CREATE EVENT TRIGGER synclink_forget_dropped_tables ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION synclink.on_sql_drop();

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

CREATE FUNCTION synclink.on_alter_table() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM synclink.check_altered_tables(); END $$;
CREATE EVENT TRIGGER synclink_check_altered_tables ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION synclink.on_alter_table();

-- Open conflicts (policy manual), one row per differing column, for a person to review and
-- settle with sync_resolve(conflict_id, keep => 'local' | 'peer' | <node name>). It reads
-- synclink.conflict as whoever queries it, so row-level security shows each role the
-- conflicts of the tables it may read, and no others.
CREATE VIEW @extschema@.sync_conflicts WITH (security_invoker = true) AS
SELECT c.conflict_id,
       c.relid            AS "table",
       c.peer_name        AS peer,
       c.key,
       c.kind,
       col                AS "column",
       c.local_row -> col AS local_value,
       c.peer_row -> col  AS peer_value,
       c.detected_at
  FROM synclink.conflict c
 CROSS JOIN LATERAL unnest(c.columns) col
 WHERE c.outcome = 'open'
 ORDER BY c.conflict_id, col;
GRANT SELECT ON @extschema@.sync_conflicts TO PUBLIC;
