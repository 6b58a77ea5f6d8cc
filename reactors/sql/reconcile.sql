-- Reconcile runs (reactors/reconcile.py): their record, and what status and metrics read of it.

-- name: reconcile_run_insert
INSERT INTO public.reconcile_runs (trigger, started_at, finished_at, since, outcome, error, examined, known, recorded,
                                   missed, kinds, first_position, last_position, skipped)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13, $14)
RETURNING run_id;

-- name: reconcile_last_started
-- When the last successful run began (automatic or not): the next automatic run is due an interval
-- after it.
SELECT max(started_at) FROM public.reconcile_runs WHERE outcome = 'ok';

-- name: reconcile_summary
-- One row: the runs so far, by outcome, the observations they recorded, and the last success.
SELECT count(*) AS runs,
       count(*) FILTER (WHERE outcome = 'failed') AS failures,
       coalesce(sum(recorded), 0) AS recorded,
       coalesce(sum(missed), 0) AS missed,
       coalesce(sum(skipped), 0) AS skipped,
       max(finished_at) FILTER (WHERE outcome = 'ok') AS last_success_at
FROM public.reconcile_runs;

-- name: reconcile_runs_recent
SELECT run_id, trigger, started_at, finished_at, since, outcome, error, examined, known, recorded, missed,
       skipped, kinds::text AS kinds,
       first_position, last_position
FROM public.reconcile_runs
ORDER BY run_id DESC
LIMIT $1;
