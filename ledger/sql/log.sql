-- The log's queries: appends, reads, the chain check. Loaded by ledger/sql/__init__.py.
-- A query starts at a "-- name:" line and runs to the next one.

-- name: append
SELECT out_position, out_duplicate
FROM ledger_append($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[],
                   $6::bytea[], $7::jsonb[], $8::text[]);

-- name: quarantine
INSERT INTO quarantine (message_id, headers, body, reason)
VALUES ($1, $2::jsonb, $3, $4)
RETURNING id;

-- name: head
SELECT position, hash FROM ledger_head WHERE id = 1;

-- name: rows_beyond_head
-- The head, and whether a row already holds the position the next append would take: one
-- statement, so one snapshot (an append moves the head in the transaction that inserts its rows,
-- so no append can make this true). One probe of the primary key.
SELECT h.position AS head,
       EXISTS (SELECT 1 FROM events e WHERE e.position = h.position + 1) AS beyond
FROM ledger_head h
WHERE h.id = 1;

-- name: schema_version
SELECT version FROM ledger_schema WHERE id = 1;


-- name: list_events
SELECT position, event_id, event_type, source, occurred_at, recorded_at, payload::text AS payload
FROM events
WHERE position > $1
ORDER BY position
LIMIT $2;

-- name: list_events_of_type
SELECT position, event_id, event_type, source, occurred_at, recorded_at, payload::text AS payload
FROM events
WHERE event_type = $3 AND position > $1
ORDER BY event_type, position
LIMIT $2;

-- name: events_at
-- The events at positions $1 (a few: one order's history), in log order, with what a follower reads
-- and what the console shows (headers as received, the hash chain).
SELECT e.position, e.event_id, e.event_type, e.source, e.occurred_at, e.recorded_at, e.raw_body,
       e.payload::text AS payload, e.headers::text AS headers, e.message_id, e.prev_hash, e.hash
FROM unnest($1::bigint[]) AS k(position)
CROSS JOIN LATERAL (SELECT * FROM events WHERE position = k.position LIMIT 1) e
ORDER BY e.position;

-- name: recorded_at
-- When the event at position $1 was recorded (one probe of the primary key).
SELECT recorded_at FROM events WHERE position = $1;

-- name: read_events
SELECT position, event_id, event_type, source, event_dt, occurred_at, recorded_at, payload::text AS payload
FROM events
WHERE position > $1
ORDER BY position
LIMIT $2;

-- name: verify_chain
-- Checks the rows at positions $1 < position <= $2: contiguous positions, each row linked to the
-- row before it within the range (the caller checks the first row's link: first_prev_hash), each
-- hash matching the row's content, and each payload equal to its raw body parsed. The range is
-- bounded by positions (never "the next N rows"), so each segment reads only its own rows whatever
-- the plan; the hashing runs on the rows as found, and only narrow rows are sorted for the window.
WITH segment AS MATERIALIZED (
    SELECT position, prev_hash, hash,
           hash_ok,
           -- parsed only where the hash holds (a body that is not JSON fails its hash first)
           CASE WHEN hash_ok THEN payload = convert_from(raw_body, 'UTF8')::jsonb END AS payload_ok
    FROM events,
         LATERAL (SELECT hash = sha256(prev_hash || ledger_row_digest(position, event_id, event_type, source,
                                                                     event_dt, occurred_at, recorded_at, raw_body,
                                                                     headers, message_id)) AS hash_ok) h
    WHERE position > $1 AND position <= $2
), checked AS (
    SELECT s.position,
           s.hash,
           s.prev_hash,
           CASE
               WHEN s.position <> $1 + row_number() OVER w
                   THEN 'position ' || ($1 + row_number() OVER w) || ' is missing'
               WHEN s.prev_hash <> coalesce(lag(s.hash) OVER w, s.prev_hash)
                   THEN 'its link to the previous row is broken'
               WHEN NOT s.hash_ok
                   THEN 'its content does not match its hash'
               WHEN NOT s.payload_ok
                   THEN 'its payload does not match its (hashed) raw body'
           END AS problem,
           $1 + row_number() OVER w AS expected
    FROM segment s
    WINDOW w AS (ORDER BY s.position)
)
SELECT count(*) AS rows,
       max(position) AS last_position,
       (array_agg(hash ORDER BY position DESC))[1] AS last_hash,
       min(position) AS first_position,
       (array_agg(prev_hash ORDER BY position))[1] AS first_prev_hash,
       (array_agg(expected ORDER BY position) FILTER (WHERE problem IS NOT NULL))[1] AS bad_position,
       (array_agg(problem ORDER BY position) FILTER (WHERE problem IS NOT NULL))[1] AS problem
FROM checked;

-- name: read_batch
SELECT position, event_type, raw_body
FROM events
WHERE position > $1 AND position <= $2 AND event_type LIKE ANY ($3::text[])
ORDER BY position;

-- name: log_summary
-- Positions are contiguous from 1, so the head is also the number of events.
SELECT h.position AS head, (SELECT count(*) FROM public.quarantine) AS quarantined
FROM public.ledger_head h;

-- name: event_body
-- One event's raw body, by its id (the unique index).
SELECT raw_body FROM events WHERE event_id = $1;

-- name: quarantine_list
-- Quarantined deliveries, newest first, before id $1, for the console.
SELECT id, received_at, message_id, headers::text AS headers, body, reason
FROM public.quarantine
WHERE id < $1
ORDER BY id DESC
LIMIT $2;

-- name: migrations_exist
-- Which of the schema's bookkeeping tables exist (a new database has neither).
SELECT to_regclass('public.ledger_schema') IS NOT NULL AS has_schema,
       to_regclass('public.ledger_migrations') IS NOT NULL AS has_migrations;

-- name: migrations_applied
SELECT number, name, checksum, applied_at, how FROM public.ledger_migrations ORDER BY number;

-- name: migrations_table
-- The record of steps, for a database an earlier release made (before it had one).
CREATE TABLE IF NOT EXISTS public.ledger_migrations (
    number      int PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    how         text NOT NULL CONSTRAINT ledger_migrations_how CHECK (how IN ('applied', 'baseline', 'schema'))
);

-- name: migration_record
INSERT INTO public.ledger_migrations (number, name, checksum, how)
VALUES ($1, $2, $3, $4)
ON CONFLICT (number) DO NOTHING;

-- name: migration_lock_timeout
-- A step waits this long for a lock, then gives up and is tried again: never queued behind a long
-- reader, where it would make every append queue behind it.
SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', '0', true);

-- name: migration_try_lock
SELECT pg_try_advisory_lock($1);

-- name: migration_unlock
SELECT pg_advisory_unlock($1);
