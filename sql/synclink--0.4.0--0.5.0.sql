-- synclink 0.4.0 -> 0.5.0, run by ALTER EXTENSION synclink UPDATE.
--
-- 0.5.0 captures a table's changes once for all its links. This script brings a 0.4.0 catalog
-- to exactly what CREATE EXTENSION synclink makes in 0.5.0 (a test compares the two), keeping
-- every row.

\echo Use "ALTER EXTENSION synclink UPDATE TO '0.5.0'" to load this file. \quit

-- A change that reaches a node by several paths (a mesh) meets a conflict there once per path:
-- it is logged the first time, found here the next.
CREATE INDEX conflict_key ON synclink.conflict (relid, key);

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
