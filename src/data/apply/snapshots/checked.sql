-- The checked apply statement for a sample link: table "public"."p" ("id", "name",
-- "updated_at"), key "id", peer b, link 3. Written by the test
-- data::apply::checked::tests::the_statement_is_as_in_its_snapshot; after a change to the
-- statement, SNAPSHOT_UPDATE=1 cargo test --features pg15 --lib checked writes it anew.

-- ==========================================================================================
-- upsert, run of records, last_write_wins, version column updated_at
-- ==========================================================================================
WITH m AS (
  -- per key: the last version sent, and the base of the first change in this run
  SELECT DISTINCT ON (x."id") x.*,
         first_value(x."synclink$base_at") OVER w AS "synclink$first_at",
         first_value(x."synclink$base_node") OVER w AS "synclink$first_node",
         first_value(x."synclink$op") OVER w AS "synclink$first_op"
    FROM unnest($1::synclink."p_b_row"[], $2::synclink.stamp[])
         WITH ORDINALITY AS x("id", "name", "updated_at", "synclink$at", "synclink$node", "synclink$base_at", "synclink$base_node", "synclink$op", "synclink$gen", "synclink$ord")
  WINDOW w AS (PARTITION BY x."id" ORDER BY x."synclink$ord")
   ORDER BY x."id", x."synclink$ord" DESC
), c AS (
  SELECT m.*,
         t."id" IS NOT NULL AS "synclink$exists",
         CASE WHEN t."id" IS NOT NULL THEN ROW(t."id", t."name", t."updated_at")::synclink."p_b_row" END AS "synclink$here",
         v."synclink$at" AS "synclink$here_at",
         v."synclink$node" AS "synclink$here_node",
         v."synclink$gen" AS "synclink$here_gen",
         (v."synclink$at", v."synclink$node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
         OR (v."synclink$base_at", v."synclink$base_node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$seen",
         (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$first_at", m."synclink$first_node")
         AND (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
         AND (v."synclink$base_at", v."synclink$base_node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$conflict"
    FROM m
    LEFT JOIN LATERAL (SELECT * FROM "public"."p" t WHERE t."id" = m."id" OFFSET 0) t ON true
    LEFT JOIN LATERAL (SELECT * FROM synclink."p_b_version" v WHERE v."id" = m."id" OFFSET 0) v ON true
), d AS (
  SELECT c.*,
         NOT c."synclink$conflict" OR coalesce(CASE
           WHEN c."synclink$exists" AND c."updated_at" IS NOT NULL AND (c."synclink$here")."updated_at" IS NOT NULL
                AND c."updated_at" <> (c."synclink$here")."updated_at"
           THEN c."updated_at" > (c."synclink$here")."updated_at"
           ELSE (coalesce(c."synclink$gen", 0), c."synclink$at", c."synclink$node") > (coalesce(c."synclink$here_gen", -1), coalesce(c."synclink$here_at", -1), coalesce(c."synclink$here_node", ''))
           END, false) AS "synclink$wins"
    FROM c
), r AS (
  SELECT d.*,
         CASE WHEN d."synclink$conflict"
              THEN (SELECT r.kept FROM synclink.resolution r
                     WHERE r.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
                       AND r.key = jsonb_build_object('id', d."id")
                       AND r.rows = ARRAY[least(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), md5(to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row")::text)),
                                          greatest(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), md5(to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row")::text))]
                     ORDER BY r.resolved_at DESC LIMIT 1)
              END AS "synclink$remembered",
         d."synclink$conflict"
         AND EXISTS (SELECT FROM synclink.conflict o
                      WHERE o.relid = '"public"."p"'::regclass AND o.key = jsonb_build_object('id', d."id")
                        AND ((o.local_version).at, (o.local_version).node)
                            = (d."synclink$here_at", d."synclink$here_node")
                        AND ((o.peer_version).at, (o.peer_version).node)
                            = (d."synclink$at", d."synclink$node")
                        AND o.policy <> 'manual') AS "synclink$met_before"
    FROM d
), e AS (
  SELECT r.*,
         CASE WHEN r."synclink$remembered" IS NULL THEN r."synclink$wins"
              ELSE r."synclink$remembered" = md5(to_jsonb(ROW(r."id", r."name", r."updated_at")::synclink."p_b_row")::text) END AS "synclink$applies"
    FROM r
), w AS (
  SELECT * FROM e WHERE e."synclink$applies" AND NOT e."synclink$seen"
), written AS (
  INSERT INTO "public"."p" AS t ("id", "name", "updated_at") OVERRIDING SYSTEM VALUE
  SELECT w."id", w."name", w."updated_at" FROM w ORDER BY w."synclink$ord"
  ON CONFLICT ("id")
  DO UPDATE SET "name" = EXCLUDED."name", "updated_at" = EXCLUDED."updated_at"
          WHERE (t."name", t."updated_at") IS DISTINCT FROM (EXCLUDED."name", EXCLUDED."updated_at")
  RETURNING t.xmax::text = '0' AS "synclink$fresh"
), versions AS (
  INSERT INTO synclink."p_b_version" AS v ("id", "synclink$at", "synclink$node", "synclink$gen")
  SELECT w."id", w."synclink$at", w."synclink$node", w."synclink$gen" FROM w
  ON CONFLICT ("id") DO UPDATE
     SET "synclink$at" = EXCLUDED."synclink$at", "synclink$node" = EXCLUDED."synclink$node",
         "synclink$gen" = EXCLUDED."synclink$gen",
         "synclink$base_at" = v."synclink$at", "synclink$base_node" = v."synclink$node"
), superseded AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before" AND o.outcome = 'open'
     AND o.link_id = 3 AND o.key = jsonb_build_object('id', d."id")
), moved_on AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM w d
   WHERE NOT d."synclink$conflict"
     AND EXISTS (SELECT FROM synclink.conflict x WHERE x.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass) AND x.outcome = 'open')
     AND o.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
     AND o.outcome = 'open' AND o.key = jsonb_build_object('id', d."id")
), logged AS (
  INSERT INTO synclink.conflict (link_id, relid, peer_name, key, kind, policy, local_row, peer_row,
                                 columns, local_version, peer_version, outcome)
  SELECT 3,
         '"public"."p"'::regclass,
         'b',
         jsonb_build_object('id', d."id"),
         CASE WHEN d."synclink$first_op" = 'I' AND d."synclink$exists" THEN 'insert_exists'
              WHEN false AND NOT d."synclink$exists" THEN 'delete_missing'
              WHEN false THEN 'delete_changed'
              WHEN NOT d."synclink$exists" THEN 'update_missing'
              ELSE 'update_changed' END,
         'last_write_wins',
         to_jsonb(d."synclink$here"),
         to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row"),
         CASE WHEN NOT d."synclink$exists" THEN ARRAY['id', 'name', 'updated_at']::text[]
              ELSE array_remove(ARRAY[CASE WHEN (d."synclink$here")."name" IS DISTINCT FROM d."name" THEN 'name' END,
                                      CASE WHEN (d."synclink$here")."updated_at" IS DISTINCT FROM d."updated_at" THEN 'updated_at' END]::text[], NULL) END,
         ROW(d."synclink$here_at", d."synclink$here_node", NULL, NULL, NULL, d."synclink$here_gen")::synclink.stamp,
         ROW(d."synclink$at", d."synclink$node", d."synclink$first_at", d."synclink$first_node", d."synclink$first_op", d."synclink$gen")::synclink.stamp,
         CASE WHEN d."synclink$remembered" IS NOT NULL THEN 'remembered'
              WHEN false THEN 'open'
              WHEN d."synclink$applies" THEN 'applied'
              ELSE 'kept' END
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before"
)
-- rows found inserted meanwhile; the rows that already were as sent, to pass on
SELECT (SELECT count(*) FILTER (WHERE NOT "synclink$fresh") FROM written)
         - (SELECT count(*) FROM w WHERE w."synclink$exists" AND ((w."synclink$here")."name", (w."synclink$here")."updated_at") IS DISTINCT FROM (w."name", w."updated_at")),
       array_agg(ROW(w."id", w."name", w."updated_at")::synclink."p_b_row"),
       array_agg(ROW(w."synclink$at", w."synclink$node", w."synclink$here_at", w."synclink$here_node", 'U', w."synclink$gen")::synclink.stamp)
  FROM w WHERE w."synclink$exists"
         AND NOT ((w."synclink$here")."name", (w."synclink$here")."updated_at") IS DISTINCT FROM (w."name", w."updated_at");

-- ==========================================================================================
-- upsert, run of records, last_write_wins, no version column
-- ==========================================================================================
WITH m AS (
  -- per key: the last version sent, and the base of the first change in this run
  SELECT DISTINCT ON (x."id") x.*,
         first_value(x."synclink$base_at") OVER w AS "synclink$first_at",
         first_value(x."synclink$base_node") OVER w AS "synclink$first_node",
         first_value(x."synclink$op") OVER w AS "synclink$first_op"
    FROM unnest($1::synclink."p_b_row"[], $2::synclink.stamp[])
         WITH ORDINALITY AS x("id", "name", "updated_at", "synclink$at", "synclink$node", "synclink$base_at", "synclink$base_node", "synclink$op", "synclink$gen", "synclink$ord")
  WINDOW w AS (PARTITION BY x."id" ORDER BY x."synclink$ord")
   ORDER BY x."id", x."synclink$ord" DESC
), c AS (
  SELECT m.*,
         t."id" IS NOT NULL AS "synclink$exists",
         CASE WHEN t."id" IS NOT NULL THEN ROW(t."id", t."name", t."updated_at")::synclink."p_b_row" END AS "synclink$here",
         v."synclink$at" AS "synclink$here_at",
         v."synclink$node" AS "synclink$here_node",
         v."synclink$gen" AS "synclink$here_gen",
         (v."synclink$at", v."synclink$node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
         OR (v."synclink$base_at", v."synclink$base_node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$seen",
         (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$first_at", m."synclink$first_node")
         AND (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
         AND (v."synclink$base_at", v."synclink$base_node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$conflict"
    FROM m
    LEFT JOIN LATERAL (SELECT * FROM "public"."p" t WHERE t."id" = m."id" OFFSET 0) t ON true
    LEFT JOIN LATERAL (SELECT * FROM synclink."p_b_version" v WHERE v."id" = m."id" OFFSET 0) v ON true
), d AS (
  SELECT c.*,
         NOT c."synclink$conflict" OR coalesce((coalesce(c."synclink$gen", 0), c."synclink$at", c."synclink$node") > (coalesce(c."synclink$here_gen", -1), coalesce(c."synclink$here_at", -1), coalesce(c."synclink$here_node", '')), false) AS "synclink$wins"
    FROM c
), r AS (
  SELECT d.*,
         CASE WHEN d."synclink$conflict"
              THEN (SELECT r.kept FROM synclink.resolution r
                     WHERE r.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
                       AND r.key = jsonb_build_object('id', d."id")
                       AND r.rows = ARRAY[least(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), md5(to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row")::text)),
                                          greatest(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), md5(to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row")::text))]
                     ORDER BY r.resolved_at DESC LIMIT 1)
              END AS "synclink$remembered",
         d."synclink$conflict"
         AND EXISTS (SELECT FROM synclink.conflict o
                      WHERE o.relid = '"public"."p"'::regclass AND o.key = jsonb_build_object('id', d."id")
                        AND ((o.local_version).at, (o.local_version).node)
                            = (d."synclink$here_at", d."synclink$here_node")
                        AND ((o.peer_version).at, (o.peer_version).node)
                            = (d."synclink$at", d."synclink$node")
                        AND o.policy <> 'manual') AS "synclink$met_before"
    FROM d
), e AS (
  SELECT r.*,
         CASE WHEN r."synclink$remembered" IS NULL THEN r."synclink$wins"
              ELSE r."synclink$remembered" = md5(to_jsonb(ROW(r."id", r."name", r."updated_at")::synclink."p_b_row")::text) END AS "synclink$applies"
    FROM r
), w AS (
  SELECT * FROM e WHERE e."synclink$applies" AND NOT e."synclink$seen"
), written AS (
  INSERT INTO "public"."p" AS t ("id", "name", "updated_at") OVERRIDING SYSTEM VALUE
  SELECT w."id", w."name", w."updated_at" FROM w ORDER BY w."synclink$ord"
  ON CONFLICT ("id")
  DO UPDATE SET "name" = EXCLUDED."name", "updated_at" = EXCLUDED."updated_at"
          WHERE (t."name", t."updated_at") IS DISTINCT FROM (EXCLUDED."name", EXCLUDED."updated_at")
  RETURNING t.xmax::text = '0' AS "synclink$fresh"
), versions AS (
  INSERT INTO synclink."p_b_version" AS v ("id", "synclink$at", "synclink$node", "synclink$gen")
  SELECT w."id", w."synclink$at", w."synclink$node", w."synclink$gen" FROM w
  ON CONFLICT ("id") DO UPDATE
     SET "synclink$at" = EXCLUDED."synclink$at", "synclink$node" = EXCLUDED."synclink$node",
         "synclink$gen" = EXCLUDED."synclink$gen",
         "synclink$base_at" = v."synclink$at", "synclink$base_node" = v."synclink$node"
), superseded AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before" AND o.outcome = 'open'
     AND o.link_id = 3 AND o.key = jsonb_build_object('id', d."id")
), moved_on AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM w d
   WHERE NOT d."synclink$conflict"
     AND EXISTS (SELECT FROM synclink.conflict x WHERE x.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass) AND x.outcome = 'open')
     AND o.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
     AND o.outcome = 'open' AND o.key = jsonb_build_object('id', d."id")
), logged AS (
  INSERT INTO synclink.conflict (link_id, relid, peer_name, key, kind, policy, local_row, peer_row,
                                 columns, local_version, peer_version, outcome)
  SELECT 3,
         '"public"."p"'::regclass,
         'b',
         jsonb_build_object('id', d."id"),
         CASE WHEN d."synclink$first_op" = 'I' AND d."synclink$exists" THEN 'insert_exists'
              WHEN false AND NOT d."synclink$exists" THEN 'delete_missing'
              WHEN false THEN 'delete_changed'
              WHEN NOT d."synclink$exists" THEN 'update_missing'
              ELSE 'update_changed' END,
         'last_write_wins',
         to_jsonb(d."synclink$here"),
         to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row"),
         CASE WHEN NOT d."synclink$exists" THEN ARRAY['id', 'name', 'updated_at']::text[]
              ELSE array_remove(ARRAY[CASE WHEN (d."synclink$here")."name" IS DISTINCT FROM d."name" THEN 'name' END,
                                      CASE WHEN (d."synclink$here")."updated_at" IS DISTINCT FROM d."updated_at" THEN 'updated_at' END]::text[], NULL) END,
         ROW(d."synclink$here_at", d."synclink$here_node", NULL, NULL, NULL, d."synclink$here_gen")::synclink.stamp,
         ROW(d."synclink$at", d."synclink$node", d."synclink$first_at", d."synclink$first_node", d."synclink$first_op", d."synclink$gen")::synclink.stamp,
         CASE WHEN d."synclink$remembered" IS NOT NULL THEN 'remembered'
              WHEN false THEN 'open'
              WHEN d."synclink$applies" THEN 'applied'
              ELSE 'kept' END
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before"
)
-- rows found inserted meanwhile; the rows that already were as sent, to pass on
SELECT (SELECT count(*) FILTER (WHERE NOT "synclink$fresh") FROM written)
         - (SELECT count(*) FROM w WHERE w."synclink$exists" AND ((w."synclink$here")."name", (w."synclink$here")."updated_at") IS DISTINCT FROM (w."name", w."updated_at")),
       array_agg(ROW(w."id", w."name", w."updated_at")::synclink."p_b_row"),
       array_agg(ROW(w."synclink$at", w."synclink$node", w."synclink$here_at", w."synclink$here_node", 'U', w."synclink$gen")::synclink.stamp)
  FROM w WHERE w."synclink$exists"
         AND NOT ((w."synclink$here")."name", (w."synclink$here")."updated_at") IS DISTINCT FROM (w."name", w."updated_at");

-- ==========================================================================================
-- upsert, run of records, prefer_node:shop_a
-- ==========================================================================================
WITH m AS (
  -- per key: the last version sent, and the base of the first change in this run
  SELECT DISTINCT ON (x."id") x.*,
         first_value(x."synclink$base_at") OVER w AS "synclink$first_at",
         first_value(x."synclink$base_node") OVER w AS "synclink$first_node",
         first_value(x."synclink$op") OVER w AS "synclink$first_op"
    FROM unnest($1::synclink."p_b_row"[], $2::synclink.stamp[])
         WITH ORDINALITY AS x("id", "name", "updated_at", "synclink$at", "synclink$node", "synclink$base_at", "synclink$base_node", "synclink$op", "synclink$gen", "synclink$ord")
  WINDOW w AS (PARTITION BY x."id" ORDER BY x."synclink$ord")
   ORDER BY x."id", x."synclink$ord" DESC
), c AS (
  SELECT m.*,
         t."id" IS NOT NULL AS "synclink$exists",
         CASE WHEN t."id" IS NOT NULL THEN ROW(t."id", t."name", t."updated_at")::synclink."p_b_row" END AS "synclink$here",
         v."synclink$at" AS "synclink$here_at",
         v."synclink$node" AS "synclink$here_node",
         v."synclink$gen" AS "synclink$here_gen",
         (v."synclink$at", v."synclink$node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
         OR (v."synclink$base_at", v."synclink$base_node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$seen",
         (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$first_at", m."synclink$first_node")
         AND (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
         AND (v."synclink$base_at", v."synclink$base_node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$conflict"
    FROM m
    LEFT JOIN LATERAL (SELECT * FROM "public"."p" t WHERE t."id" = m."id" OFFSET 0) t ON true
    LEFT JOIN LATERAL (SELECT * FROM synclink."p_b_version" v WHERE v."id" = m."id" OFFSET 0) v ON true
), d AS (
  SELECT c.*,
         NOT c."synclink$conflict" OR coalesce(CASE
           WHEN c."synclink$here_node" IS NULL THEN c."synclink$node" = 'shop_a'
           ELSE (coalesce(c."synclink$gen", 0), c."synclink$at", c."synclink$node") > (coalesce(c."synclink$here_gen", -1), coalesce(c."synclink$here_at", -1), coalesce(c."synclink$here_node", ''))
           END, false) AS "synclink$wins"
    FROM c
), r AS (
  SELECT d.*,
         CASE WHEN d."synclink$conflict"
              THEN (SELECT r.kept FROM synclink.resolution r
                     WHERE r.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
                       AND r.key = jsonb_build_object('id', d."id")
                       AND r.rows = ARRAY[least(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), md5(to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row")::text)),
                                          greatest(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), md5(to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row")::text))]
                     ORDER BY r.resolved_at DESC LIMIT 1)
              END AS "synclink$remembered",
         d."synclink$conflict"
         AND EXISTS (SELECT FROM synclink.conflict o
                      WHERE o.relid = '"public"."p"'::regclass AND o.key = jsonb_build_object('id', d."id")
                        AND ((o.local_version).at, (o.local_version).node)
                            = (d."synclink$here_at", d."synclink$here_node")
                        AND ((o.peer_version).at, (o.peer_version).node)
                            = (d."synclink$at", d."synclink$node")
                        AND o.policy <> 'manual') AS "synclink$met_before"
    FROM d
), e AS (
  SELECT r.*,
         CASE WHEN r."synclink$remembered" IS NULL THEN r."synclink$wins"
              ELSE r."synclink$remembered" = md5(to_jsonb(ROW(r."id", r."name", r."updated_at")::synclink."p_b_row")::text) END AS "synclink$applies"
    FROM r
), w AS (
  SELECT * FROM e WHERE e."synclink$applies" AND NOT e."synclink$seen"
), written AS (
  INSERT INTO "public"."p" AS t ("id", "name", "updated_at") OVERRIDING SYSTEM VALUE
  SELECT w."id", w."name", w."updated_at" FROM w ORDER BY w."synclink$ord"
  ON CONFLICT ("id")
  DO UPDATE SET "name" = EXCLUDED."name", "updated_at" = EXCLUDED."updated_at"
          WHERE (t."name", t."updated_at") IS DISTINCT FROM (EXCLUDED."name", EXCLUDED."updated_at")
  RETURNING t.xmax::text = '0' AS "synclink$fresh"
), versions AS (
  INSERT INTO synclink."p_b_version" AS v ("id", "synclink$at", "synclink$node", "synclink$gen")
  SELECT w."id", w."synclink$at", w."synclink$node", w."synclink$gen" FROM w
  ON CONFLICT ("id") DO UPDATE
     SET "synclink$at" = EXCLUDED."synclink$at", "synclink$node" = EXCLUDED."synclink$node",
         "synclink$gen" = EXCLUDED."synclink$gen",
         "synclink$base_at" = v."synclink$at", "synclink$base_node" = v."synclink$node"
), superseded AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before" AND o.outcome = 'open'
     AND o.link_id = 3 AND o.key = jsonb_build_object('id', d."id")
), moved_on AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM w d
   WHERE NOT d."synclink$conflict"
     AND EXISTS (SELECT FROM synclink.conflict x WHERE x.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass) AND x.outcome = 'open')
     AND o.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
     AND o.outcome = 'open' AND o.key = jsonb_build_object('id', d."id")
), logged AS (
  INSERT INTO synclink.conflict (link_id, relid, peer_name, key, kind, policy, local_row, peer_row,
                                 columns, local_version, peer_version, outcome)
  SELECT 3,
         '"public"."p"'::regclass,
         'b',
         jsonb_build_object('id', d."id"),
         CASE WHEN d."synclink$first_op" = 'I' AND d."synclink$exists" THEN 'insert_exists'
              WHEN false AND NOT d."synclink$exists" THEN 'delete_missing'
              WHEN false THEN 'delete_changed'
              WHEN NOT d."synclink$exists" THEN 'update_missing'
              ELSE 'update_changed' END,
         'prefer_node:shop_a',
         to_jsonb(d."synclink$here"),
         to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row"),
         CASE WHEN NOT d."synclink$exists" THEN ARRAY['id', 'name', 'updated_at']::text[]
              ELSE array_remove(ARRAY[CASE WHEN (d."synclink$here")."name" IS DISTINCT FROM d."name" THEN 'name' END,
                                      CASE WHEN (d."synclink$here")."updated_at" IS DISTINCT FROM d."updated_at" THEN 'updated_at' END]::text[], NULL) END,
         ROW(d."synclink$here_at", d."synclink$here_node", NULL, NULL, NULL, d."synclink$here_gen")::synclink.stamp,
         ROW(d."synclink$at", d."synclink$node", d."synclink$first_at", d."synclink$first_node", d."synclink$first_op", d."synclink$gen")::synclink.stamp,
         CASE WHEN d."synclink$remembered" IS NOT NULL THEN 'remembered'
              WHEN false THEN 'open'
              WHEN d."synclink$applies" THEN 'applied'
              ELSE 'kept' END
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before"
)
-- rows found inserted meanwhile; the rows that already were as sent, to pass on
SELECT (SELECT count(*) FILTER (WHERE NOT "synclink$fresh") FROM written)
         - (SELECT count(*) FROM w WHERE w."synclink$exists" AND ((w."synclink$here")."name", (w."synclink$here")."updated_at") IS DISTINCT FROM (w."name", w."updated_at")),
       array_agg(ROW(w."id", w."name", w."updated_at")::synclink."p_b_row"),
       array_agg(ROW(w."synclink$at", w."synclink$node", w."synclink$here_at", w."synclink$here_node", 'U', w."synclink$gen")::synclink.stamp)
  FROM w WHERE w."synclink$exists"
         AND NOT ((w."synclink$here")."name", (w."synclink$here")."updated_at") IS DISTINCT FROM (w."name", w."updated_at");

-- ==========================================================================================
-- upsert, run of records, manual
-- ==========================================================================================
WITH m AS (
  -- per key: the last version sent, and the base of the first change in this run
  SELECT DISTINCT ON (x."id") x.*,
         first_value(x."synclink$base_at") OVER w AS "synclink$first_at",
         first_value(x."synclink$base_node") OVER w AS "synclink$first_node",
         first_value(x."synclink$op") OVER w AS "synclink$first_op"
    FROM unnest($1::synclink."p_b_row"[], $2::synclink.stamp[])
         WITH ORDINALITY AS x("id", "name", "updated_at", "synclink$at", "synclink$node", "synclink$base_at", "synclink$base_node", "synclink$op", "synclink$gen", "synclink$ord")
  WINDOW w AS (PARTITION BY x."id" ORDER BY x."synclink$ord")
   ORDER BY x."id", x."synclink$ord" DESC
), c AS (
  SELECT m.*,
         t."id" IS NOT NULL AS "synclink$exists",
         CASE WHEN t."id" IS NOT NULL THEN ROW(t."id", t."name", t."updated_at")::synclink."p_b_row" END AS "synclink$here",
         v."synclink$at" AS "synclink$here_at",
         v."synclink$node" AS "synclink$here_node",
         v."synclink$gen" AS "synclink$here_gen",
         (v."synclink$at", v."synclink$node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
         OR (v."synclink$base_at", v."synclink$base_node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$seen",
         (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$first_at", m."synclink$first_node")
         AND (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
         AND (v."synclink$base_at", v."synclink$base_node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$conflict"
    FROM m
    LEFT JOIN LATERAL (SELECT * FROM "public"."p" t WHERE t."id" = m."id" OFFSET 0) t ON true
    LEFT JOIN LATERAL (SELECT * FROM synclink."p_b_version" v WHERE v."id" = m."id" OFFSET 0) v ON true
), d AS (
  SELECT c.*,
         NOT c."synclink$conflict" OR coalesce(false, false) AS "synclink$wins"
    FROM c
), r AS (
  SELECT d.*,
         CASE WHEN d."synclink$conflict"
              THEN (SELECT r.kept FROM synclink.resolution r
                     WHERE r.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
                       AND r.key = jsonb_build_object('id', d."id")
                       AND r.rows = ARRAY[least(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), md5(to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row")::text)),
                                          greatest(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), md5(to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row")::text))]
                     ORDER BY r.resolved_at DESC LIMIT 1)
              END AS "synclink$remembered",
         d."synclink$conflict"
         AND EXISTS (SELECT FROM synclink.conflict o
                      WHERE o.relid = '"public"."p"'::regclass AND o.key = jsonb_build_object('id', d."id")
                        AND ((o.local_version).at, (o.local_version).node)
                            = (d."synclink$here_at", d."synclink$here_node")
                        AND ((o.peer_version).at, (o.peer_version).node)
                            = (d."synclink$at", d."synclink$node")
                        AND o.policy = 'manual') AS "synclink$met_before"
    FROM d
), e AS (
  SELECT r.*,
         CASE WHEN r."synclink$remembered" IS NULL THEN r."synclink$wins"
              ELSE r."synclink$remembered" = md5(to_jsonb(ROW(r."id", r."name", r."updated_at")::synclink."p_b_row")::text) END AS "synclink$applies"
    FROM r
), w AS (
  SELECT * FROM e WHERE e."synclink$applies" AND NOT e."synclink$seen"
), written AS (
  INSERT INTO "public"."p" AS t ("id", "name", "updated_at") OVERRIDING SYSTEM VALUE
  SELECT w."id", w."name", w."updated_at" FROM w ORDER BY w."synclink$ord"
  ON CONFLICT ("id")
  DO UPDATE SET "name" = EXCLUDED."name", "updated_at" = EXCLUDED."updated_at"
          WHERE (t."name", t."updated_at") IS DISTINCT FROM (EXCLUDED."name", EXCLUDED."updated_at")
  RETURNING t.xmax::text = '0' AS "synclink$fresh"
), versions AS (
  INSERT INTO synclink."p_b_version" AS v ("id", "synclink$at", "synclink$node", "synclink$gen")
  SELECT w."id", w."synclink$at", w."synclink$node", w."synclink$gen" FROM w
  ON CONFLICT ("id") DO UPDATE
     SET "synclink$at" = EXCLUDED."synclink$at", "synclink$node" = EXCLUDED."synclink$node",
         "synclink$gen" = EXCLUDED."synclink$gen",
         "synclink$base_at" = v."synclink$at", "synclink$base_node" = v."synclink$node"
), superseded AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before" AND o.outcome = 'open'
     AND o.link_id = 3 AND o.key = jsonb_build_object('id', d."id")
), moved_on AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM w d
   WHERE NOT d."synclink$conflict"
     AND EXISTS (SELECT FROM synclink.conflict x WHERE x.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass) AND x.outcome = 'open')
     AND o.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
     AND o.outcome = 'open' AND o.key = jsonb_build_object('id', d."id")
), logged AS (
  INSERT INTO synclink.conflict (link_id, relid, peer_name, key, kind, policy, local_row, peer_row,
                                 columns, local_version, peer_version, outcome)
  SELECT 3,
         '"public"."p"'::regclass,
         'b',
         jsonb_build_object('id', d."id"),
         CASE WHEN d."synclink$first_op" = 'I' AND d."synclink$exists" THEN 'insert_exists'
              WHEN false AND NOT d."synclink$exists" THEN 'delete_missing'
              WHEN false THEN 'delete_changed'
              WHEN NOT d."synclink$exists" THEN 'update_missing'
              ELSE 'update_changed' END,
         'manual',
         to_jsonb(d."synclink$here"),
         to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row"),
         CASE WHEN NOT d."synclink$exists" THEN ARRAY['id', 'name', 'updated_at']::text[]
              ELSE array_remove(ARRAY[CASE WHEN (d."synclink$here")."name" IS DISTINCT FROM d."name" THEN 'name' END,
                                      CASE WHEN (d."synclink$here")."updated_at" IS DISTINCT FROM d."updated_at" THEN 'updated_at' END]::text[], NULL) END,
         ROW(d."synclink$here_at", d."synclink$here_node", NULL, NULL, NULL, d."synclink$here_gen")::synclink.stamp,
         ROW(d."synclink$at", d."synclink$node", d."synclink$first_at", d."synclink$first_node", d."synclink$first_op", d."synclink$gen")::synclink.stamp,
         CASE WHEN d."synclink$remembered" IS NOT NULL THEN 'remembered'
              WHEN true THEN 'open'
              WHEN d."synclink$applies" THEN 'applied'
              ELSE 'kept' END
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before"
)
-- rows found inserted meanwhile; the rows that already were as sent, to pass on
SELECT (SELECT count(*) FILTER (WHERE NOT "synclink$fresh") FROM written)
         - (SELECT count(*) FROM w WHERE w."synclink$exists" AND ((w."synclink$here")."name", (w."synclink$here")."updated_at") IS DISTINCT FROM (w."name", w."updated_at")),
       array_agg(ROW(w."id", w."name", w."updated_at")::synclink."p_b_row"),
       array_agg(ROW(w."synclink$at", w."synclink$node", w."synclink$here_at", w."synclink$here_node", 'U', w."synclink$gen")::synclink.stamp)
  FROM w WHERE w."synclink$exists"
         AND NOT ((w."synclink$here")."name", (w."synclink$here")."updated_at") IS DISTINCT FROM (w."name", w."updated_at");

-- ==========================================================================================
-- delete, run of records, last_write_wins, version column updated_at
-- ==========================================================================================
WITH m AS (
  -- per key: the last version sent, and the base of the first change in this run
  SELECT DISTINCT ON (x."id") x.*,
         first_value(x."synclink$base_at") OVER w AS "synclink$first_at",
         first_value(x."synclink$base_node") OVER w AS "synclink$first_node",
         first_value(x."synclink$op") OVER w AS "synclink$first_op"
    FROM unnest($1::synclink."p_b_row"[], $2::synclink.stamp[])
         WITH ORDINALITY AS x("id", "name", "updated_at", "synclink$at", "synclink$node", "synclink$base_at", "synclink$base_node", "synclink$op", "synclink$gen", "synclink$ord")
  WINDOW w AS (PARTITION BY x."id" ORDER BY x."synclink$ord")
   ORDER BY x."id", x."synclink$ord" DESC
), c AS (
  SELECT m.*,
         t."id" IS NOT NULL AS "synclink$exists",
         CASE WHEN t."id" IS NOT NULL THEN ROW(t."id", t."name", t."updated_at")::synclink."p_b_row" END AS "synclink$here",
         v."synclink$at" AS "synclink$here_at",
         v."synclink$node" AS "synclink$here_node",
         v."synclink$gen" AS "synclink$here_gen",
         (v."synclink$at", v."synclink$node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
         OR (v."synclink$base_at", v."synclink$base_node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$seen",
         (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$first_at", m."synclink$first_node")
         AND (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
         AND (v."synclink$base_at", v."synclink$base_node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$conflict"
    FROM m
    LEFT JOIN LATERAL (SELECT * FROM "public"."p" t WHERE t."id" = m."id" OFFSET 0) t ON true
    LEFT JOIN LATERAL (SELECT * FROM synclink."p_b_version" v WHERE v."id" = m."id" OFFSET 0) v ON true
), d AS (
  SELECT c.*,
         NOT c."synclink$conflict" OR coalesce((coalesce(c."synclink$gen", 0), c."synclink$at", c."synclink$node") > (coalesce(c."synclink$here_gen", -1), coalesce(c."synclink$here_at", -1), coalesce(c."synclink$here_node", '')), false) AS "synclink$wins"
    FROM c
), r AS (
  SELECT d.*,
         CASE WHEN d."synclink$conflict"
              THEN (SELECT r.kept FROM synclink.resolution r
                     WHERE r.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
                       AND r.key = jsonb_build_object('id', d."id")
                       AND r.rows = ARRAY[least(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), 'absent'),
                                          greatest(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), 'absent')]
                     ORDER BY r.resolved_at DESC LIMIT 1)
              END AS "synclink$remembered",
         d."synclink$conflict"
         AND EXISTS (SELECT FROM synclink.conflict o
                      WHERE o.relid = '"public"."p"'::regclass AND o.key = jsonb_build_object('id', d."id")
                        AND ((o.local_version).at, (o.local_version).node)
                            = (d."synclink$here_at", d."synclink$here_node")
                        AND ((o.peer_version).at, (o.peer_version).node)
                            = (d."synclink$at", d."synclink$node")
                        AND o.policy <> 'manual') AS "synclink$met_before"
    FROM d
), e AS (
  SELECT r.*,
         CASE WHEN r."synclink$remembered" IS NULL THEN r."synclink$wins"
              ELSE r."synclink$remembered" = 'absent' END AS "synclink$applies"
    FROM r
), w AS (
  SELECT * FROM e WHERE e."synclink$applies" AND NOT e."synclink$seen"
), written AS (
  DELETE FROM "public"."p" t USING w WHERE t."id" = w."id"
), versions AS (
  INSERT INTO synclink."p_b_version" AS v ("id", "synclink$at", "synclink$node", "synclink$gen")
  SELECT w."id", w."synclink$at", w."synclink$node", w."synclink$gen" FROM w
  ON CONFLICT ("id") DO UPDATE
     SET "synclink$at" = EXCLUDED."synclink$at", "synclink$node" = EXCLUDED."synclink$node",
         "synclink$gen" = EXCLUDED."synclink$gen",
         "synclink$base_at" = v."synclink$at", "synclink$base_node" = v."synclink$node"
), superseded AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before" AND o.outcome = 'open'
     AND o.link_id = 3 AND o.key = jsonb_build_object('id', d."id")
), moved_on AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM w d
   WHERE NOT d."synclink$conflict"
     AND EXISTS (SELECT FROM synclink.conflict x WHERE x.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass) AND x.outcome = 'open')
     AND o.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
     AND o.outcome = 'open' AND o.key = jsonb_build_object('id', d."id")
), logged AS (
  INSERT INTO synclink.conflict (link_id, relid, peer_name, key, kind, policy, local_row, peer_row,
                                 columns, local_version, peer_version, outcome)
  SELECT 3,
         '"public"."p"'::regclass,
         'b',
         jsonb_build_object('id', d."id"),
         CASE WHEN d."synclink$first_op" = 'I' AND d."synclink$exists" THEN 'insert_exists'
              WHEN true AND NOT d."synclink$exists" THEN 'delete_missing'
              WHEN true THEN 'delete_changed'
              WHEN NOT d."synclink$exists" THEN 'update_missing'
              ELSE 'update_changed' END,
         'last_write_wins',
         to_jsonb(d."synclink$here"),
         NULL::jsonb,
         ARRAY['id', 'name', 'updated_at'],
         ROW(d."synclink$here_at", d."synclink$here_node", NULL, NULL, NULL, d."synclink$here_gen")::synclink.stamp,
         ROW(d."synclink$at", d."synclink$node", d."synclink$first_at", d."synclink$first_node", d."synclink$first_op", d."synclink$gen")::synclink.stamp,
         CASE WHEN d."synclink$remembered" IS NOT NULL THEN 'remembered'
              WHEN false THEN 'open'
              WHEN d."synclink$applies" THEN 'applied'
              ELSE 'kept' END
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before"
)
-- the deletes that found no row here, to pass on
SELECT 0,
       array_agg(ROW(w."id", w."name", w."updated_at")::synclink."p_b_row"),
       array_agg(ROW(w."synclink$at", w."synclink$node", w."synclink$here_at", w."synclink$here_node", 'D', w."synclink$gen")::synclink.stamp)
  FROM w WHERE NOT w."synclink$exists";

-- ==========================================================================================
-- delete, run of records, last_write_wins, no version column
-- ==========================================================================================
-- the same statement as: delete, run of records, last_write_wins, version column updated_at

-- ==========================================================================================
-- delete, run of records, prefer_node:shop_a
-- ==========================================================================================
WITH m AS (
  -- per key: the last version sent, and the base of the first change in this run
  SELECT DISTINCT ON (x."id") x.*,
         first_value(x."synclink$base_at") OVER w AS "synclink$first_at",
         first_value(x."synclink$base_node") OVER w AS "synclink$first_node",
         first_value(x."synclink$op") OVER w AS "synclink$first_op"
    FROM unnest($1::synclink."p_b_row"[], $2::synclink.stamp[])
         WITH ORDINALITY AS x("id", "name", "updated_at", "synclink$at", "synclink$node", "synclink$base_at", "synclink$base_node", "synclink$op", "synclink$gen", "synclink$ord")
  WINDOW w AS (PARTITION BY x."id" ORDER BY x."synclink$ord")
   ORDER BY x."id", x."synclink$ord" DESC
), c AS (
  SELECT m.*,
         t."id" IS NOT NULL AS "synclink$exists",
         CASE WHEN t."id" IS NOT NULL THEN ROW(t."id", t."name", t."updated_at")::synclink."p_b_row" END AS "synclink$here",
         v."synclink$at" AS "synclink$here_at",
         v."synclink$node" AS "synclink$here_node",
         v."synclink$gen" AS "synclink$here_gen",
         (v."synclink$at", v."synclink$node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
         OR (v."synclink$base_at", v."synclink$base_node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$seen",
         (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$first_at", m."synclink$first_node")
         AND (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
         AND (v."synclink$base_at", v."synclink$base_node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$conflict"
    FROM m
    LEFT JOIN LATERAL (SELECT * FROM "public"."p" t WHERE t."id" = m."id" OFFSET 0) t ON true
    LEFT JOIN LATERAL (SELECT * FROM synclink."p_b_version" v WHERE v."id" = m."id" OFFSET 0) v ON true
), d AS (
  SELECT c.*,
         NOT c."synclink$conflict" OR coalesce(CASE
           WHEN c."synclink$here_node" IS NULL THEN c."synclink$node" = 'shop_a'
           ELSE (coalesce(c."synclink$gen", 0), c."synclink$at", c."synclink$node") > (coalesce(c."synclink$here_gen", -1), coalesce(c."synclink$here_at", -1), coalesce(c."synclink$here_node", ''))
           END, false) AS "synclink$wins"
    FROM c
), r AS (
  SELECT d.*,
         CASE WHEN d."synclink$conflict"
              THEN (SELECT r.kept FROM synclink.resolution r
                     WHERE r.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
                       AND r.key = jsonb_build_object('id', d."id")
                       AND r.rows = ARRAY[least(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), 'absent'),
                                          greatest(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), 'absent')]
                     ORDER BY r.resolved_at DESC LIMIT 1)
              END AS "synclink$remembered",
         d."synclink$conflict"
         AND EXISTS (SELECT FROM synclink.conflict o
                      WHERE o.relid = '"public"."p"'::regclass AND o.key = jsonb_build_object('id', d."id")
                        AND ((o.local_version).at, (o.local_version).node)
                            = (d."synclink$here_at", d."synclink$here_node")
                        AND ((o.peer_version).at, (o.peer_version).node)
                            = (d."synclink$at", d."synclink$node")
                        AND o.policy <> 'manual') AS "synclink$met_before"
    FROM d
), e AS (
  SELECT r.*,
         CASE WHEN r."synclink$remembered" IS NULL THEN r."synclink$wins"
              ELSE r."synclink$remembered" = 'absent' END AS "synclink$applies"
    FROM r
), w AS (
  SELECT * FROM e WHERE e."synclink$applies" AND NOT e."synclink$seen"
), written AS (
  DELETE FROM "public"."p" t USING w WHERE t."id" = w."id"
), versions AS (
  INSERT INTO synclink."p_b_version" AS v ("id", "synclink$at", "synclink$node", "synclink$gen")
  SELECT w."id", w."synclink$at", w."synclink$node", w."synclink$gen" FROM w
  ON CONFLICT ("id") DO UPDATE
     SET "synclink$at" = EXCLUDED."synclink$at", "synclink$node" = EXCLUDED."synclink$node",
         "synclink$gen" = EXCLUDED."synclink$gen",
         "synclink$base_at" = v."synclink$at", "synclink$base_node" = v."synclink$node"
), superseded AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before" AND o.outcome = 'open'
     AND o.link_id = 3 AND o.key = jsonb_build_object('id', d."id")
), moved_on AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM w d
   WHERE NOT d."synclink$conflict"
     AND EXISTS (SELECT FROM synclink.conflict x WHERE x.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass) AND x.outcome = 'open')
     AND o.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
     AND o.outcome = 'open' AND o.key = jsonb_build_object('id', d."id")
), logged AS (
  INSERT INTO synclink.conflict (link_id, relid, peer_name, key, kind, policy, local_row, peer_row,
                                 columns, local_version, peer_version, outcome)
  SELECT 3,
         '"public"."p"'::regclass,
         'b',
         jsonb_build_object('id', d."id"),
         CASE WHEN d."synclink$first_op" = 'I' AND d."synclink$exists" THEN 'insert_exists'
              WHEN true AND NOT d."synclink$exists" THEN 'delete_missing'
              WHEN true THEN 'delete_changed'
              WHEN NOT d."synclink$exists" THEN 'update_missing'
              ELSE 'update_changed' END,
         'prefer_node:shop_a',
         to_jsonb(d."synclink$here"),
         NULL::jsonb,
         ARRAY['id', 'name', 'updated_at'],
         ROW(d."synclink$here_at", d."synclink$here_node", NULL, NULL, NULL, d."synclink$here_gen")::synclink.stamp,
         ROW(d."synclink$at", d."synclink$node", d."synclink$first_at", d."synclink$first_node", d."synclink$first_op", d."synclink$gen")::synclink.stamp,
         CASE WHEN d."synclink$remembered" IS NOT NULL THEN 'remembered'
              WHEN false THEN 'open'
              WHEN d."synclink$applies" THEN 'applied'
              ELSE 'kept' END
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before"
)
-- the deletes that found no row here, to pass on
SELECT 0,
       array_agg(ROW(w."id", w."name", w."updated_at")::synclink."p_b_row"),
       array_agg(ROW(w."synclink$at", w."synclink$node", w."synclink$here_at", w."synclink$here_node", 'D', w."synclink$gen")::synclink.stamp)
  FROM w WHERE NOT w."synclink$exists";

-- ==========================================================================================
-- delete, run of records, manual
-- ==========================================================================================
WITH m AS (
  -- per key: the last version sent, and the base of the first change in this run
  SELECT DISTINCT ON (x."id") x.*,
         first_value(x."synclink$base_at") OVER w AS "synclink$first_at",
         first_value(x."synclink$base_node") OVER w AS "synclink$first_node",
         first_value(x."synclink$op") OVER w AS "synclink$first_op"
    FROM unnest($1::synclink."p_b_row"[], $2::synclink.stamp[])
         WITH ORDINALITY AS x("id", "name", "updated_at", "synclink$at", "synclink$node", "synclink$base_at", "synclink$base_node", "synclink$op", "synclink$gen", "synclink$ord")
  WINDOW w AS (PARTITION BY x."id" ORDER BY x."synclink$ord")
   ORDER BY x."id", x."synclink$ord" DESC
), c AS (
  SELECT m.*,
         t."id" IS NOT NULL AS "synclink$exists",
         CASE WHEN t."id" IS NOT NULL THEN ROW(t."id", t."name", t."updated_at")::synclink."p_b_row" END AS "synclink$here",
         v."synclink$at" AS "synclink$here_at",
         v."synclink$node" AS "synclink$here_node",
         v."synclink$gen" AS "synclink$here_gen",
         (v."synclink$at", v."synclink$node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
         OR (v."synclink$base_at", v."synclink$base_node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$seen",
         (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$first_at", m."synclink$first_node")
         AND (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
         AND (v."synclink$base_at", v."synclink$base_node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$conflict"
    FROM m
    LEFT JOIN LATERAL (SELECT * FROM "public"."p" t WHERE t."id" = m."id" OFFSET 0) t ON true
    LEFT JOIN LATERAL (SELECT * FROM synclink."p_b_version" v WHERE v."id" = m."id" OFFSET 0) v ON true
), d AS (
  SELECT c.*,
         NOT c."synclink$conflict" OR coalesce(false, false) AS "synclink$wins"
    FROM c
), r AS (
  SELECT d.*,
         CASE WHEN d."synclink$conflict"
              THEN (SELECT r.kept FROM synclink.resolution r
                     WHERE r.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
                       AND r.key = jsonb_build_object('id', d."id")
                       AND r.rows = ARRAY[least(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), 'absent'),
                                          greatest(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), 'absent')]
                     ORDER BY r.resolved_at DESC LIMIT 1)
              END AS "synclink$remembered",
         d."synclink$conflict"
         AND EXISTS (SELECT FROM synclink.conflict o
                      WHERE o.relid = '"public"."p"'::regclass AND o.key = jsonb_build_object('id', d."id")
                        AND ((o.local_version).at, (o.local_version).node)
                            = (d."synclink$here_at", d."synclink$here_node")
                        AND ((o.peer_version).at, (o.peer_version).node)
                            = (d."synclink$at", d."synclink$node")
                        AND o.policy = 'manual') AS "synclink$met_before"
    FROM d
), e AS (
  SELECT r.*,
         CASE WHEN r."synclink$remembered" IS NULL THEN r."synclink$wins"
              ELSE r."synclink$remembered" = 'absent' END AS "synclink$applies"
    FROM r
), w AS (
  SELECT * FROM e WHERE e."synclink$applies" AND NOT e."synclink$seen"
), written AS (
  DELETE FROM "public"."p" t USING w WHERE t."id" = w."id"
), versions AS (
  INSERT INTO synclink."p_b_version" AS v ("id", "synclink$at", "synclink$node", "synclink$gen")
  SELECT w."id", w."synclink$at", w."synclink$node", w."synclink$gen" FROM w
  ON CONFLICT ("id") DO UPDATE
     SET "synclink$at" = EXCLUDED."synclink$at", "synclink$node" = EXCLUDED."synclink$node",
         "synclink$gen" = EXCLUDED."synclink$gen",
         "synclink$base_at" = v."synclink$at", "synclink$base_node" = v."synclink$node"
), superseded AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before" AND o.outcome = 'open'
     AND o.link_id = 3 AND o.key = jsonb_build_object('id', d."id")
), moved_on AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM w d
   WHERE NOT d."synclink$conflict"
     AND EXISTS (SELECT FROM synclink.conflict x WHERE x.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass) AND x.outcome = 'open')
     AND o.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
     AND o.outcome = 'open' AND o.key = jsonb_build_object('id', d."id")
), logged AS (
  INSERT INTO synclink.conflict (link_id, relid, peer_name, key, kind, policy, local_row, peer_row,
                                 columns, local_version, peer_version, outcome)
  SELECT 3,
         '"public"."p"'::regclass,
         'b',
         jsonb_build_object('id', d."id"),
         CASE WHEN d."synclink$first_op" = 'I' AND d."synclink$exists" THEN 'insert_exists'
              WHEN true AND NOT d."synclink$exists" THEN 'delete_missing'
              WHEN true THEN 'delete_changed'
              WHEN NOT d."synclink$exists" THEN 'update_missing'
              ELSE 'update_changed' END,
         'manual',
         to_jsonb(d."synclink$here"),
         NULL::jsonb,
         ARRAY['id', 'name', 'updated_at'],
         ROW(d."synclink$here_at", d."synclink$here_node", NULL, NULL, NULL, d."synclink$here_gen")::synclink.stamp,
         ROW(d."synclink$at", d."synclink$node", d."synclink$first_at", d."synclink$first_node", d."synclink$first_op", d."synclink$gen")::synclink.stamp,
         CASE WHEN d."synclink$remembered" IS NOT NULL THEN 'remembered'
              WHEN true THEN 'open'
              WHEN d."synclink$applies" THEN 'applied'
              ELSE 'kept' END
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before"
)
-- the deletes that found no row here, to pass on
SELECT 0,
       array_agg(ROW(w."id", w."name", w."updated_at")::synclink."p_b_row"),
       array_agg(ROW(w."synclink$at", w."synclink$node", w."synclink$here_at", w."synclink$here_node", 'D', w."synclink$gen")::synclink.stamp)
  FROM w WHERE NOT w."synclink$exists";

-- ==========================================================================================
-- upsert, single record, last_write_wins, version column updated_at
-- ==========================================================================================
WITH m AS (
  SELECT x.*,
         x."synclink$base_at" AS "synclink$first_at",
         x."synclink$base_node" AS "synclink$first_node",
         x."synclink$op" AS "synclink$first_op"
    FROM unnest($1::synclink."p_b_row"[], $2::synclink.stamp[])
         WITH ORDINALITY AS x("id", "name", "updated_at", "synclink$at", "synclink$node", "synclink$base_at", "synclink$base_node", "synclink$op", "synclink$gen", "synclink$ord")
), c AS (
  SELECT m.*,
         t."id" IS NOT NULL AS "synclink$exists",
         CASE WHEN t."id" IS NOT NULL THEN ROW(t."id", t."name", t."updated_at")::synclink."p_b_row" END AS "synclink$here",
         v."synclink$at" AS "synclink$here_at",
         v."synclink$node" AS "synclink$here_node",
         v."synclink$gen" AS "synclink$here_gen",
         (v."synclink$at", v."synclink$node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
         OR (v."synclink$base_at", v."synclink$base_node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$seen",
         (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$first_at", m."synclink$first_node")
         AND (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
         AND (v."synclink$base_at", v."synclink$base_node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$conflict"
    FROM m
    LEFT JOIN LATERAL (SELECT * FROM "public"."p" t WHERE t."id" = m."id" OFFSET 0) t ON true
    LEFT JOIN LATERAL (SELECT * FROM synclink."p_b_version" v WHERE v."id" = m."id" OFFSET 0) v ON true
), d AS (
  SELECT c.*,
         NOT c."synclink$conflict" OR coalesce(CASE
           WHEN c."synclink$exists" AND c."updated_at" IS NOT NULL AND (c."synclink$here")."updated_at" IS NOT NULL
                AND c."updated_at" <> (c."synclink$here")."updated_at"
           THEN c."updated_at" > (c."synclink$here")."updated_at"
           ELSE (coalesce(c."synclink$gen", 0), c."synclink$at", c."synclink$node") > (coalesce(c."synclink$here_gen", -1), coalesce(c."synclink$here_at", -1), coalesce(c."synclink$here_node", ''))
           END, false) AS "synclink$wins"
    FROM c
), r AS (
  SELECT d.*,
         CASE WHEN d."synclink$conflict"
              THEN (SELECT r.kept FROM synclink.resolution r
                     WHERE r.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
                       AND r.key = jsonb_build_object('id', d."id")
                       AND r.rows = ARRAY[least(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), md5(to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row")::text)),
                                          greatest(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), md5(to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row")::text))]
                     ORDER BY r.resolved_at DESC LIMIT 1)
              END AS "synclink$remembered",
         d."synclink$conflict"
         AND EXISTS (SELECT FROM synclink.conflict o
                      WHERE o.relid = '"public"."p"'::regclass AND o.key = jsonb_build_object('id', d."id")
                        AND ((o.local_version).at, (o.local_version).node)
                            = (d."synclink$here_at", d."synclink$here_node")
                        AND ((o.peer_version).at, (o.peer_version).node)
                            = (d."synclink$at", d."synclink$node")
                        AND o.policy <> 'manual') AS "synclink$met_before"
    FROM d
), e AS (
  SELECT r.*,
         CASE WHEN r."synclink$remembered" IS NULL THEN r."synclink$wins"
              ELSE r."synclink$remembered" = md5(to_jsonb(ROW(r."id", r."name", r."updated_at")::synclink."p_b_row")::text) END AS "synclink$applies"
    FROM r
), w AS (
  SELECT * FROM e WHERE e."synclink$applies" AND NOT e."synclink$seen"
), written AS (
  INSERT INTO "public"."p" AS t ("id", "name", "updated_at") OVERRIDING SYSTEM VALUE
  SELECT w."id", w."name", w."updated_at" FROM w ORDER BY w."synclink$ord"
  ON CONFLICT ("id")
  DO UPDATE SET "name" = EXCLUDED."name", "updated_at" = EXCLUDED."updated_at"
          WHERE (t."name", t."updated_at") IS DISTINCT FROM (EXCLUDED."name", EXCLUDED."updated_at")
  RETURNING t.xmax::text = '0' AS "synclink$fresh"
), versions AS (
  INSERT INTO synclink."p_b_version" AS v ("id", "synclink$at", "synclink$node", "synclink$gen")
  SELECT w."id", w."synclink$at", w."synclink$node", w."synclink$gen" FROM w
  ON CONFLICT ("id") DO UPDATE
     SET "synclink$at" = EXCLUDED."synclink$at", "synclink$node" = EXCLUDED."synclink$node",
         "synclink$gen" = EXCLUDED."synclink$gen",
         "synclink$base_at" = v."synclink$at", "synclink$base_node" = v."synclink$node"
), superseded AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before" AND o.outcome = 'open'
     AND o.link_id = 3 AND o.key = jsonb_build_object('id', d."id")
), moved_on AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM w d
   WHERE NOT d."synclink$conflict"
     AND EXISTS (SELECT FROM synclink.conflict x WHERE x.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass) AND x.outcome = 'open')
     AND o.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
     AND o.outcome = 'open' AND o.key = jsonb_build_object('id', d."id")
), logged AS (
  INSERT INTO synclink.conflict (link_id, relid, peer_name, key, kind, policy, local_row, peer_row,
                                 columns, local_version, peer_version, outcome)
  SELECT 3,
         '"public"."p"'::regclass,
         'b',
         jsonb_build_object('id', d."id"),
         CASE WHEN d."synclink$first_op" = 'I' AND d."synclink$exists" THEN 'insert_exists'
              WHEN false AND NOT d."synclink$exists" THEN 'delete_missing'
              WHEN false THEN 'delete_changed'
              WHEN NOT d."synclink$exists" THEN 'update_missing'
              ELSE 'update_changed' END,
         'last_write_wins',
         to_jsonb(d."synclink$here"),
         to_jsonb(ROW(d."id", d."name", d."updated_at")::synclink."p_b_row"),
         CASE WHEN NOT d."synclink$exists" THEN ARRAY['id', 'name', 'updated_at']::text[]
              ELSE array_remove(ARRAY[CASE WHEN (d."synclink$here")."name" IS DISTINCT FROM d."name" THEN 'name' END,
                                      CASE WHEN (d."synclink$here")."updated_at" IS DISTINCT FROM d."updated_at" THEN 'updated_at' END]::text[], NULL) END,
         ROW(d."synclink$here_at", d."synclink$here_node", NULL, NULL, NULL, d."synclink$here_gen")::synclink.stamp,
         ROW(d."synclink$at", d."synclink$node", d."synclink$first_at", d."synclink$first_node", d."synclink$first_op", d."synclink$gen")::synclink.stamp,
         CASE WHEN d."synclink$remembered" IS NOT NULL THEN 'remembered'
              WHEN false THEN 'open'
              WHEN d."synclink$applies" THEN 'applied'
              ELSE 'kept' END
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before"
)
-- rows found inserted meanwhile; the rows that already were as sent, to pass on
SELECT (SELECT count(*) FILTER (WHERE NOT "synclink$fresh") FROM written)
         - (SELECT count(*) FROM w WHERE w."synclink$exists" AND ((w."synclink$here")."name", (w."synclink$here")."updated_at") IS DISTINCT FROM (w."name", w."updated_at")),
       array_agg(ROW(w."id", w."name", w."updated_at")::synclink."p_b_row"),
       array_agg(ROW(w."synclink$at", w."synclink$node", w."synclink$here_at", w."synclink$here_node", 'U', w."synclink$gen")::synclink.stamp)
  FROM w WHERE w."synclink$exists"
         AND NOT ((w."synclink$here")."name", (w."synclink$here")."updated_at") IS DISTINCT FROM (w."name", w."updated_at");

-- ==========================================================================================
-- delete, single record, last_write_wins, no version column
-- ==========================================================================================
WITH m AS (
  SELECT x.*,
         x."synclink$base_at" AS "synclink$first_at",
         x."synclink$base_node" AS "synclink$first_node",
         x."synclink$op" AS "synclink$first_op"
    FROM unnest($1::synclink."p_b_row"[], $2::synclink.stamp[])
         WITH ORDINALITY AS x("id", "name", "updated_at", "synclink$at", "synclink$node", "synclink$base_at", "synclink$base_node", "synclink$op", "synclink$gen", "synclink$ord")
), c AS (
  SELECT m.*,
         t."id" IS NOT NULL AS "synclink$exists",
         CASE WHEN t."id" IS NOT NULL THEN ROW(t."id", t."name", t."updated_at")::synclink."p_b_row" END AS "synclink$here",
         v."synclink$at" AS "synclink$here_at",
         v."synclink$node" AS "synclink$here_node",
         v."synclink$gen" AS "synclink$here_gen",
         (v."synclink$at", v."synclink$node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
         OR (v."synclink$base_at", v."synclink$base_node") IS NOT DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$seen",
         (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$first_at", m."synclink$first_node")
         AND (v."synclink$at", v."synclink$node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
         AND (v."synclink$base_at", v."synclink$base_node") IS DISTINCT FROM (m."synclink$at", m."synclink$node")
             AS "synclink$conflict"
    FROM m
    LEFT JOIN LATERAL (SELECT * FROM "public"."p" t WHERE t."id" = m."id" OFFSET 0) t ON true
    LEFT JOIN LATERAL (SELECT * FROM synclink."p_b_version" v WHERE v."id" = m."id" OFFSET 0) v ON true
), d AS (
  SELECT c.*,
         NOT c."synclink$conflict" OR coalesce((coalesce(c."synclink$gen", 0), c."synclink$at", c."synclink$node") > (coalesce(c."synclink$here_gen", -1), coalesce(c."synclink$here_at", -1), coalesce(c."synclink$here_node", '')), false) AS "synclink$wins"
    FROM c
), r AS (
  SELECT d.*,
         CASE WHEN d."synclink$conflict"
              THEN (SELECT r.kept FROM synclink.resolution r
                     WHERE r.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
                       AND r.key = jsonb_build_object('id', d."id")
                       AND r.rows = ARRAY[least(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), 'absent'),
                                          greatest(coalesce(md5(to_jsonb(d."synclink$here")::text), 'absent'), 'absent')]
                     ORDER BY r.resolved_at DESC LIMIT 1)
              END AS "synclink$remembered",
         d."synclink$conflict"
         AND EXISTS (SELECT FROM synclink.conflict o
                      WHERE o.relid = '"public"."p"'::regclass AND o.key = jsonb_build_object('id', d."id")
                        AND ((o.local_version).at, (o.local_version).node)
                            = (d."synclink$here_at", d."synclink$here_node")
                        AND ((o.peer_version).at, (o.peer_version).node)
                            = (d."synclink$at", d."synclink$node")
                        AND o.policy <> 'manual') AS "synclink$met_before"
    FROM d
), e AS (
  SELECT r.*,
         CASE WHEN r."synclink$remembered" IS NULL THEN r."synclink$wins"
              ELSE r."synclink$remembered" = 'absent' END AS "synclink$applies"
    FROM r
), w AS (
  SELECT * FROM e WHERE e."synclink$applies" AND NOT e."synclink$seen"
), written AS (
  DELETE FROM "public"."p" t USING w WHERE t."id" = w."id"
), versions AS (
  INSERT INTO synclink."p_b_version" AS v ("id", "synclink$at", "synclink$node", "synclink$gen")
  SELECT w."id", w."synclink$at", w."synclink$node", w."synclink$gen" FROM w
  ON CONFLICT ("id") DO UPDATE
     SET "synclink$at" = EXCLUDED."synclink$at", "synclink$node" = EXCLUDED."synclink$node",
         "synclink$gen" = EXCLUDED."synclink$gen",
         "synclink$base_at" = v."synclink$at", "synclink$base_node" = v."synclink$node"
), superseded AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before" AND o.outcome = 'open'
     AND o.link_id = 3 AND o.key = jsonb_build_object('id', d."id")
), moved_on AS (
  UPDATE synclink.conflict o SET outcome = 'superseded'
    FROM w d
   WHERE NOT d."synclink$conflict"
     AND EXISTS (SELECT FROM synclink.conflict x WHERE x.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass) AND x.outcome = 'open')
     AND o.link_id IN (SELECT l.link_id FROM synclink.link l WHERE l.relid = '"public"."p"'::regclass)
     AND o.outcome = 'open' AND o.key = jsonb_build_object('id', d."id")
), logged AS (
  INSERT INTO synclink.conflict (link_id, relid, peer_name, key, kind, policy, local_row, peer_row,
                                 columns, local_version, peer_version, outcome)
  SELECT 3,
         '"public"."p"'::regclass,
         'b',
         jsonb_build_object('id', d."id"),
         CASE WHEN d."synclink$first_op" = 'I' AND d."synclink$exists" THEN 'insert_exists'
              WHEN true AND NOT d."synclink$exists" THEN 'delete_missing'
              WHEN true THEN 'delete_changed'
              WHEN NOT d."synclink$exists" THEN 'update_missing'
              ELSE 'update_changed' END,
         'last_write_wins',
         to_jsonb(d."synclink$here"),
         NULL::jsonb,
         ARRAY['id', 'name', 'updated_at'],
         ROW(d."synclink$here_at", d."synclink$here_node", NULL, NULL, NULL, d."synclink$here_gen")::synclink.stamp,
         ROW(d."synclink$at", d."synclink$node", d."synclink$first_at", d."synclink$first_node", d."synclink$first_op", d."synclink$gen")::synclink.stamp,
         CASE WHEN d."synclink$remembered" IS NOT NULL THEN 'remembered'
              WHEN false THEN 'open'
              WHEN d."synclink$applies" THEN 'applied'
              ELSE 'kept' END
    FROM e d
   WHERE d."synclink$conflict" AND NOT d."synclink$met_before"
)
-- the deletes that found no row here, to pass on
SELECT 0,
       array_agg(ROW(w."id", w."name", w."updated_at")::synclink."p_b_row"),
       array_agg(ROW(w."synclink$at", w."synclink$node", w."synclink$here_at", w."synclink$here_node", 'D', w."synclink$gen")::synclink.stamp)
  FROM w WHERE NOT w."synclink$exists";
