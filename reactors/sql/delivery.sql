-- Outbound delivery: the merchant's destinations and the messages queued for each.

-- name: destination_insert
-- A new destination starts at the log's head: it is sent what happens from now on.
INSERT INTO public.destinations (destination_id, url, types, mode, description, secret, position)
SELECT $1, $2, $3::text[], $4, $5, $6, h.position FROM public.ledger_head h
RETURNING destination_id, position;

-- name: destinations_all
-- Every destination with its lag and its messages by status: delivered from a counter, retrying and
-- failed from their partial indexes (a bounded backlog, and what an operator must look at).
SELECT d.destination_id, d.url, d.types, d.mode, d.description, d.state, d.position, d.last_error,
       d.last_error_at, d.created_at, d.updated_at, d.previous_secret_until,
       greatest(h.position - d.position, 0) AS lag, d.delivered_count AS delivered,
       (SELECT count(*) FROM public.destination_messages m
        WHERE m.destination_id = d.destination_id AND m.status = 'retrying') AS retrying,
       (SELECT count(*) FROM public.destination_messages m
        WHERE m.destination_id = d.destination_id AND m.status = 'failed') AS failed
FROM public.destinations d
CROSS JOIN public.ledger_head h
WHERE $1::text IS NULL OR d.destination_id = $1
ORDER BY d.created_at, d.destination_id;

-- name: destination_set_state
UPDATE public.destinations SET state = $2, updated_at = now() WHERE destination_id = $1
RETURNING destination_id;

-- name: messages_due_now
-- A destination enabled again: what was queued is due at once.
UPDATE public.destination_messages SET next_attempt_at = now() WHERE destination_id = $1 AND status = 'retrying';

-- name: messages_release
-- Messages a stopped sender had claimed ahead and will not attempt (disabled, by hand or by a 410;
-- deleted): unleased, so they are due at once when it is enabled again.
UPDATE public.destination_messages SET leased_until = NULL
WHERE destination_id = $1 AND message_id = ANY($2::text[]) AND status = 'retrying';

-- name: destination_delete
DELETE FROM public.destinations WHERE destination_id = $1 RETURNING destination_id;

-- name: destination_rotate
-- The new secret signs from now on; the old one too, until $3.
UPDATE public.destinations
SET previous_secret = secret, previous_secret_until = $3, secret = $2, updated_at = now()
WHERE destination_id = $1
RETURNING destination_id;

-- name: destination_rewind
-- Replay: messages are derived again from position $2 on (their ids are the same as the first time).
UPDATE public.destinations SET position = greatest($2::bigint - 1, 0), updated_at = now()
WHERE destination_id = $1
RETURNING destination_id;

-- name: destination_checkpoint
-- The destination's checkpoint, and how far it may derive messages: the log's head, but no further
-- than the projections whose documents the messages carry have applied.
SELECT d.position, d.state,
       least(h.position, (SELECT min(position) FROM public.projection_state WHERE name = ANY($2::text[]))) AS head
FROM public.destinations d CROSS JOIN public.ledger_head h
WHERE d.destination_id = $1;

-- name: destination_advance
-- Compare-and-set: moves the checkpoint from $2 to $3.
UPDATE public.destinations SET position = $3 WHERE destination_id = $1 AND position = $2
RETURNING position;

-- name: destination_note_error
UPDATE public.destinations SET last_error = $2, last_error_at = now() WHERE destination_id = $1;

-- name: messages_enqueue
-- New messages are due after $6 seconds (the schedule's first delay). A message derived again (a
-- replay) is due again, its attempts counted afresh.
INSERT INTO public.destination_messages AS m (destination_id, message_id, position, type, body, next_attempt_at)
SELECT $1, i.message_id, i.position, i.type, i.body, now() + make_interval(secs => $6)
FROM unnest($2::text[], $3::bigint[], $4::text[], $5::bytea[]) AS i(message_id, position, type, body)
ON CONFLICT (destination_id, message_id) DO UPDATE
SET status = 'retrying', attempts = 0, next_attempt_at = EXCLUDED.next_attempt_at, body = EXCLUDED.body,
    delivered_at = NULL, leased_until = NULL;

-- name: messages_claim
-- A round of a destination's sender, in one round trip: the attempts answered 2xx since its last
-- round recorded ($4: message ids, $5: statuses), then up to $2 due messages, oldest first, leased
-- for $3 seconds (a process that dies mid-attempt leaves them to be attempted again when the lease
-- ends, or when the next worker starts: leases_clear), each with what signs it now: the secret, and
-- the previous one during a rotation's overlap. Nothing is claimed unless the destination is enabled.
WITH done AS (
    -- each message found by a probe of the key, then updated by its address (never a join over
    -- the destination's backlog)
    UPDATE public.destination_messages m
    SET status = 'delivered', attempts = m.attempts + 1, last_status_code = i.status, last_error = NULL,
        last_attempt_at = now(), delivered_at = now(), next_attempt_at = NULL, leased_until = NULL
    FROM unnest($4::text[], $5::int[]) AS i(message_id, status)
    CROSS JOIN LATERAL (SELECT ctid FROM public.destination_messages
                        WHERE destination_id = $1 AND message_id = i.message_id LIMIT 1) t
    WHERE m.ctid = t.ctid AND m.status = 'retrying'
    RETURNING 1
), counted AS (
    UPDATE public.destinations SET delivered_count = delivered_count + (SELECT count(*) FROM done)
    WHERE destination_id = $1 AND cardinality($4::text[]) > 0
), signing AS (
    SELECT url, secret, CASE WHEN previous_secret_until > now() THEN previous_secret END AS previous_secret
    FROM public.destinations WHERE destination_id = $1 AND state = 'enabled'
), claimed AS (
    UPDATE public.destination_messages m SET leased_until = now() + make_interval(secs => $3)
    FROM (
        SELECT message_id FROM public.destination_messages
        WHERE destination_id = $1 AND status = 'retrying' AND next_attempt_at <= now()
          AND (leased_until IS NULL OR leased_until < now()) AND message_id <> ALL($4::text[])
          AND EXISTS (SELECT 1 FROM signing)
        ORDER BY next_attempt_at, position
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) due
    WHERE m.destination_id = $1 AND m.message_id = due.message_id
    RETURNING m.message_id, m.position, m.type, m.body, m.attempts
)
SELECT c.message_id, c.position, c.type, c.body, c.attempts, s.url, s.secret, s.previous_secret
FROM claimed c CROSS JOIN signing s;

-- name: leases_clear
-- The delivery worker starting (it holds the delivery lock: no attempt is in flight anywhere).
UPDATE public.destination_messages SET leased_until = NULL WHERE status = 'retrying' AND leased_until IS NOT NULL;

-- name: messages_purge
-- Delivered messages older than $1 go (a replay derives them again from the log), $2 at a time.
DELETE FROM public.destination_messages m
USING (SELECT destination_id, message_id FROM public.destination_messages
       WHERE status = 'delivered' AND delivered_at < $1 ORDER BY delivered_at LIMIT $2) old
WHERE m.destination_id = old.destination_id AND m.message_id = old.message_id;

-- name: message_retry
-- A failed attempt: due again in $5 seconds, or failed for good when $5 is NULL.
UPDATE public.destination_messages
SET attempts = attempts + 1, last_status_code = $3, last_error = $4, last_attempt_at = now(),
    status = CASE WHEN $5::float8 IS NULL THEN 'failed' ELSE 'retrying' END,
    next_attempt_at = CASE WHEN $5::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $5) END,
    leased_until = NULL
WHERE destination_id = $1 AND message_id = $2;

-- name: messages_retry_failed
-- Failed messages queued again ($2: these ids; NULL: all of the destination's), attempts afresh.
UPDATE public.destination_messages
SET status = 'retrying', attempts = 0, next_attempt_at = now()
WHERE destination_id = $1 AND status = 'failed' AND ($2::text[] IS NULL OR message_id = ANY($2::text[]))
RETURNING message_id;

-- name: messages_list
SELECT message_id, type, position, status, attempts, next_attempt_at, last_status_code, last_error,
       last_attempt_at, delivered_at
FROM public.destination_messages
WHERE destination_id = $1 AND ($2::text IS NULL OR status = $2) AND (position, message_id) > ($3::bigint, $5::text)
ORDER BY position, message_id
LIMIT $4;

-- name: message_bodies
SELECT message_id, body FROM public.destination_messages WHERE destination_id = $1 AND message_id = ANY($2::text[]);

-- name: events_recorded_at
SELECT e.position, e.recorded_at
FROM unnest($1::bigint[]) AS k(position)
CROSS JOIN LATERAL (SELECT position, recorded_at FROM public.events WHERE position = k.position LIMIT 1) e;

-- name: intents_sessions
SELECT p.payment_intent_id, p.checkout_session_id
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT payment_intent_id, checkout_session_id FROM public.order_payment_intents
                    WHERE payment_intent_id = k.id LIMIT 1) p
WHERE p.checkout_session_id IS NOT NULL;
