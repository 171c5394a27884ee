-- synclink 0.6.0 -> 0.7.0, run by ALTER EXTENSION synclink UPDATE.
--
-- 0.7.0 moves sync_clone's rows in COPY's own formats: a request to a peer can carry rows in
-- bulk beside its body (synclink.request.payload), which the peer reads and never keeps, and
-- a reply can carry them back; sync_clone can clone the peer into this database. This script
-- brings a 0.6.0 catalog to exactly what CREATE EXTENSION synclink makes in 0.7.0 (a test
-- compares the two), keeping every row.

\echo Use "ALTER EXTENSION synclink UPDATE TO '0.7.0'" to load this file. \quit

-- rows in bulk (sync_clone), beside the body: read by the handler and never kept
ALTER TABLE synclink.request ADD COLUMN payload bytea;
-- A reply's rows in bulk are kept only until the requester has read them: not compressed.
ALTER TABLE synclink.request ALTER payload SET STORAGE EXTERNAL;

DROP FUNCTION synclink.handle_request(text, text, jsonb);
CREATE  FUNCTION synclink."handle_request"(
	"from_node" TEXT, /* & str */
	"action" TEXT, /* & str */
	"body" jsonb, /* pgrx :: JsonB */
	"payload" bytea /* Option < & [u8] > */
) RETURNS TABLE (
	"reply" jsonb,  /* Option < pgrx :: JsonB > */
	"reply_payload" bytea  /* :: std :: option :: Option < Vec < u8 > > */
)

SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'handle_request_wrapper';
REVOKE ALL ON FUNCTION synclink.handle_request(text, text, jsonb, bytea) FROM PUBLIC;

CREATE OR REPLACE FUNCTION synclink.serve_request() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT r.reply, r.reply_payload INTO NEW.reply, NEW.payload
      FROM synclink.handle_request(NEW.from_node, NEW.action, NEW.body, NEW.payload) r;
    RETURN NEW;
END
$$;

-- Each peer gets a second foreign table onto its synclink.request, with the payload column,
-- for the requests that carry rows in bulk; the first one stays as it was, so that a peer not
-- yet updated takes every other request.
CREATE  FUNCTION synclink."add_bulk_tables"() RETURNS VOID /* Result < (), ErrorReport > */
STRICT 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'add_bulk_tables_wrapper';
REVOKE ALL ON FUNCTION synclink.add_bulk_tables() FROM PUBLIC;
SELECT synclink.add_bulk_tables();
