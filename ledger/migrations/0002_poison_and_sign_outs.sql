-- version: 8
-- Events a follower skipped, by position, so a rebuild takes the same decision
-- (projection_failures); console sessions signed out (console_revocations); resources reconcile
-- skipped (reconcile_runs.skipped); the record of these steps (ledger_migrations).

CREATE TABLE IF NOT EXISTS ledger_migrations (
    number      int PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    how         text NOT NULL CONSTRAINT ledger_migrations_how CHECK (how IN ('applied', 'baseline', 'schema'))
);

CREATE TABLE IF NOT EXISTS projection_failures (
    name         text NOT NULL,
    position     bigint NOT NULL,
    reason       text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projection_failures_pkey PRIMARY KEY (name, position)
);
-- Before version 8 only the last failure of each follower was kept: that one is known.
INSERT INTO projection_failures (name, position, reason, recorded_at)
SELECT name, last_error_position, coalesce(last_error, 'failed'), coalesce(last_error_at, now())
FROM projection_state
WHERE last_error_position IS NOT NULL
ON CONFLICT ON CONSTRAINT projection_failures_pkey DO NOTHING;

CREATE TABLE IF NOT EXISTS console_revocations (
    session_id   text NOT NULL,
    expires_at   timestamptz NOT NULL,
    CONSTRAINT console_revocations_pkey PRIMARY KEY (session_id)
);

ALTER TABLE reconcile_runs ADD COLUMN IF NOT EXISTS skipped int NOT NULL DEFAULT 0;

UPDATE ledger_schema SET version = 8, applied_at = now() WHERE id = 1 AND version < 8;
