-- Blue/green rebuild (projections/rebuild.py). The build schema's DDL is in schema.sql: the
-- projections' table blocks and the ledger_build_* functions.

-- name: build_begin
-- A fresh, empty build schema, first on this session's search path.
SELECT ledger_build_begin(), set_config('search_path', 'ledger_build, public', false);

-- name: build_join
-- Another connection of the same rebuild: the build schema first on its search path, no statement limit.
SELECT set_config('search_path', 'ledger_build, public', false), set_config('statement_timeout', '0', false);

-- name: build_lock_live
-- The live tables, locked before the switch (reads wait a moment; nothing fails).
SELECT ledger_build_lock_live($1::text[]);

-- name: build_swap
-- The build tables replace the live ones.
SELECT ledger_build_swap($1::text[]);

-- name: build_end
SELECT ledger_build_end();

-- name: search_path_reset
SELECT set_config('search_path', reset_val, false) FROM pg_settings WHERE name = 'search_path';

-- name: no_statement_timeout
-- A rebuild reads the whole log: no statement limit on its own connection.
SELECT set_config('statement_timeout', '0', false);

-- name: rebuild_started
UPDATE public.projection_state SET rebuild_position = 0, rebuild_started_at = now() WHERE name = ANY ($1);

-- name: rebuild_progress
UPDATE public.projection_state SET rebuild_position = $2 WHERE name = ANY ($1);

-- name: rebuild_lock_states
SELECT 1 FROM public.projection_state WHERE name = ANY ($1) FOR UPDATE;

-- name: rebuild_switched
-- The new tables are in: the checkpoint jumps to where the rebuild got, in a new generation, and
-- the tables have the shape this release writes ($5); $6 events were skipped as live mode had.
UPDATE public.projection_state
SET position = $2, generation = generation + 1, applied_events = $3, ignored_events = $4, shape = $5,
    failed_events = $6::bigint,
    last_error = CASE WHEN $6::bigint > 0 THEN last_error END,
    last_error_position = CASE WHEN $6::bigint > 0 THEN last_error_position END,
    last_error_at = CASE WHEN $6::bigint > 0 THEN last_error_at END,
    rebuild_position = NULL, rebuilt_at = now(), updated_at = now()
WHERE name = $1;

-- name: failures_keep
-- After a switch, the skipped events of projection $1 are the ones this rebuild skipped ($2, why: $3).
WITH gone AS (
    DELETE FROM public.projection_failures WHERE name = $1 AND NOT (position = ANY ($2::bigint[]))
)
INSERT INTO public.projection_failures (name, position, reason)
SELECT $1, f.position, f.reason FROM unnest($2::bigint[], $3::text[]) AS f(position, reason)
ON CONFLICT ON CONSTRAINT projection_failures_pkey DO NOTHING;

-- name: build_primary_keys
-- The primary keys of the build tables $1, as statements that drop them and add them back: a
-- history table is loaded without its key (each (entity, position) is written once in a rebuild)
-- and the key is built once, with the other indexes, after the bulk of the rows is in.
SELECT format('ALTER TABLE ledger_build.%I DROP CONSTRAINT %I', t.relname, c.conname) AS drop_key,
       format('ALTER TABLE ledger_build.%I ADD CONSTRAINT %I %s', t.relname, c.conname, pg_get_constraintdef(c.oid))
           AS add_key
FROM pg_constraint c
JOIN pg_class t ON t.oid = c.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE c.contype = 'p' AND n.nspname = 'ledger_build' AND t.relname = ANY ($1::text[])
ORDER BY t.relname;
