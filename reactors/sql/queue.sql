-- The fulfillment queue: one row per completed session, and one per paid invoice of a subscription
-- (kind 'renewal', keyed by the invoice's id), worked by the reactor.

-- name: queue_enqueue
INSERT INTO fulfillment_queue (checkout_session_id, completed_position, test_mode)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::boolean[])
ON CONFLICT (checkout_session_id) DO NOTHING;

-- name: queue_enqueue_renewals
-- Paid invoices ($1), each with its position, mode and subscription: decided and fulfilled later.
INSERT INTO fulfillment_queue (checkout_session_id, completed_position, test_mode, kind, subscription_id)
SELECT k, p, m, 'renewal', s FROM unnest($1::text[], $2::bigint[], $3::boolean[], $4::text[]) AS i(k, p, m, s)
ON CONFLICT (checkout_session_id) DO NOTHING;

-- name: queue_due
-- $2 picks a mode (NULL: both): only sessions a key is configured for.
SELECT checkout_session_id, generation, attempts, test_mode, kind, subscription_id, completed_position
FROM fulfillment_queue
WHERE status = 'pending' AND next_attempt_at <= now() AND ($2::boolean IS NULL OR test_mode = $2)
ORDER BY next_attempt_at, checkout_session_id
LIMIT $1;

-- name: queue_lock
SELECT status, generation, attempts, test_mode, kind FROM fulfillment_queue WHERE checkout_session_id = $1 FOR UPDATE;

-- name: queue_fulfilled
-- The session is done; the reactor's count of fulfilled sessions moves with it (so that counting
-- them never reads the whole queue).
WITH done AS (
    UPDATE fulfillment_queue SET status = 'fulfilled', last_error = NULL, updated_at = now()
    WHERE checkout_session_id = $1 AND status <> 'fulfilled'
    RETURNING 1
)
UPDATE public.projection_state SET fulfilled_sessions = fulfilled_sessions + (SELECT count(*) FROM done)
WHERE name = 'fulfillment';

-- name: queue_failed
UPDATE fulfillment_queue SET status = 'failed', attempts = attempts + 1, last_error = $2, updated_at = now()
WHERE checkout_session_id = $1;

-- name: queue_retry_later
UPDATE fulfillment_queue
SET attempts = attempts + 1, last_error = $2, next_attempt_at = now() + make_interval(secs => $3),
    updated_at = now()
WHERE checkout_session_id = $1;

-- name: queue_wait
-- Not decidable yet (a renewal waiting for what tells it from a first invoice): looked at again in
-- $3 seconds, without counting an attempt.
UPDATE fulfillment_queue
SET last_error = $2, next_attempt_at = now() + make_interval(secs => $3), updated_at = now()
WHERE checkout_session_id = $1 AND status = 'pending';

-- name: queue_skipped
-- A paid invoice that is not a renewal (the subscription's first: its checkout's sale fulfills it).
UPDATE fulfillment_queue SET status = 'skipped', last_error = $2, updated_at = now()
WHERE checkout_session_id = $1 AND status = 'pending';

-- name: queue_requeue
-- `ledger fulfill retry`: failed sessions (all of them when $1 is NULL) go back to pending.
UPDATE fulfillment_queue
SET status = 'pending', attempts = 0, generation = generation + 1, next_attempt_at = now(), last_error = NULL,
    updated_at = now()
WHERE status = 'failed' AND ($1::text[] IS NULL OR checkout_session_id = ANY ($1::text[]))
RETURNING checkout_session_id, generation, kind;

-- name: queue_get
SELECT checkout_session_id, status, attempts, generation, last_error FROM fulfillment_queue
WHERE checkout_session_id = ANY ($1::text[]);

-- name: queue_counts
-- Pending and failed sessions are read from their partial indexes; fulfilled ones are counted as
-- they are fulfilled.
SELECT (SELECT count(*) FROM fulfillment_queue WHERE status = 'pending') AS pending,
       (SELECT count(*) FROM fulfillment_queue WHERE status = 'failed') AS failed,
       (SELECT fulfilled_sessions FROM public.projection_state WHERE name = 'fulfillment') AS fulfilled;

-- name: queue_status
SELECT status FROM fulfillment_queue WHERE checkout_session_id = $1;

-- name: restocked_of_session
SELECT line_item_id, sum(quantity)::bigint AS quantity FROM restocks WHERE checkout_session_id = $1
GROUP BY line_item_id;

-- name: restocks_record
INSERT INTO restocks (checkout_session_id, line_item_id, request_id, quantity)
SELECT $1, line_item_id, $2, quantity FROM unnest($3::text[], $4::bigint[]) AS r(line_item_id, quantity);

-- name: restock_request_seen
SELECT EXISTS (SELECT 1 FROM restocks WHERE checkout_session_id = $1 AND request_id = $2 LIMIT 1);

-- name: refund_checks_note
INSERT INTO refund_checks (payment_intent_id, position)
SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT (payment_intent_id) DO UPDATE SET position = greatest(refund_checks.position, EXCLUDED.position);

-- name: refund_checks_ready
-- The notes the orders projection has caught up with, each with its order's payment status and
-- fulfillment (NULL where not known).
SELECT c.payment_intent_id, c.position, p.checkout_session_id, o.payment_status, q.status AS fulfillment
FROM (SELECT * FROM refund_checks
      WHERE position <= (SELECT position FROM public.projection_state WHERE name = 'orders')
      ORDER BY position LIMIT $1) c
LEFT JOIN LATERAL (SELECT checkout_session_id FROM order_payment_intents
                   WHERE payment_intent_id = c.payment_intent_id LIMIT 1) p ON true
LEFT JOIN LATERAL (SELECT payment_status FROM orders WHERE checkout_session_id = p.checkout_session_id LIMIT 1) o ON true
LEFT JOIN LATERAL (SELECT status FROM fulfillment_queue WHERE checkout_session_id = p.checkout_session_id LIMIT 1) q
    ON true;

-- name: refund_checks_done
DELETE FROM refund_checks WHERE payment_intent_id = $1 AND position = $2;

-- name: queue_failed_list
-- The failed sessions, most recently failed first (their partial index), for the console.
SELECT checkout_session_id, attempts, generation, last_error, updated_at, test_mode, kind, subscription_id
FROM fulfillment_queue
WHERE status = 'failed'
ORDER BY updated_at DESC
LIMIT $1;
