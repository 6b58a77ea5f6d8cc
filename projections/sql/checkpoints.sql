-- The checkpoints of the log's followers (projection runners and the fulfillment reactor): one
-- row each in projection_state, moved by compare-and-set in the follower's own transaction.

-- name: checkpoints_seed
-- One row per follower named in projections/registry.py ($1), with the shape of tables its code
-- writes ($2); a new follower starts at position 0.
INSERT INTO public.projection_state (name, fulfilled_sessions, shape)
SELECT name, 0, shape FROM unnest($1::text[], $2::int[]) AS f(name, shape)
ON CONFLICT (name) DO NOTHING;

-- name: shapes
SELECT name, shape FROM public.projection_state;

-- name: state_get
SELECT s.name, s.position, s.generation, h.position AS head
FROM public.projection_state s CROSS JOIN public.ledger_head h
WHERE s.name = $1;

-- name: state_all
SELECT s.name, s.position, s.generation, s.applied_events, s.ignored_events, s.failed_events,
       s.last_error, s.last_error_position, s.last_error_at, s.rebuild_position, s.rebuild_started_at,
       s.rebuilt_at, s.updated_at, s.shape, s.worker_failures, s.worker_error, s.worker_error_at,
       h.position AS head
FROM public.projection_state s CROSS JOIN public.ledger_head h
ORDER BY s.name;

-- name: checkpoint_advance
-- Compare-and-set: only the runner that read position $2 in generation $3 may move it. Returns a
-- row when it moved, and tells the read-your-writes watchers (at commit).
WITH moved AS (
    UPDATE public.projection_state
    SET position = $4, applied_events = applied_events + $5, ignored_events = ignored_events + $6,
        updated_at = now()
    WHERE name = $1 AND position = $2 AND generation = $3
    RETURNING name, position
)
SELECT pg_notify('ledger_checkpoints', name || ':' || position) FROM moved;

-- name: record_failure
-- An event follower $1 skipped: counted, and kept by position so a rebuild takes the same decision.
WITH kept AS (
    INSERT INTO public.projection_failures (name, position, reason)
    VALUES ($1, $3, $2)
    ON CONFLICT ON CONSTRAINT projection_failures_pkey DO NOTHING
)
UPDATE public.projection_state
SET failed_events = failed_events + 1, last_error = $2, last_error_position = $3, last_error_at = now()
WHERE name = $1;

-- name: failures_of
-- The positions follower $1 skipped (live mode's decisions), in log order.
SELECT position FROM public.projection_failures WHERE name = $1 ORDER BY position;

-- name: failures_listed
-- The events followers skipped, the latest $1 of each, for `ledger status` and the console.
SELECT f.name, f.position, f.reason, f.recorded_at
FROM public.projection_state s
CROSS JOIN LATERAL (
    SELECT * FROM public.projection_failures f WHERE f.name = s.name ORDER BY f.position DESC LIMIT $1
) f
ORDER BY f.name, f.position;

-- name: record_worker_failure
-- A runner failed and will restart ($2: what it failed of). No row for runners without a checkpoint.
UPDATE public.projection_state
SET worker_failures = worker_failures + 1, worker_error = $2, worker_error_at = now()
WHERE name = $1;
