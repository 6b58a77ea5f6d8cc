-- Every runtime query of the projections, loaded once by ledger.db.Queries.
-- Hot-path queries reach the large tables only through index conditions, in a form whose plan
-- cannot change with planner statistics: per-key lookups are `unnest(keys) CROSS JOIN LATERAL
-- (... WHERE key = k.id LIMIT 1)`, one probe of the unique index each, and lists are keyset pages
-- over the index that gives their order (tests/integration/test_plans.py checks every query).
-- Table names are unqualified on purpose: `ledger rebuild` runs the same statements with the
-- build schema first on its search_path.

-- name: read_batch
SELECT position, event_type, raw_body
FROM events
WHERE position > $1 AND position <= $2 AND event_type LIKE ANY ($3::text[])
ORDER BY position;

-- name: state_get
SELECT s.name, s.position, s.generation, h.position AS head
FROM public.projection_state s CROSS JOIN public.ledger_head h
WHERE s.name = $1;

-- name: state_all
SELECT s.name, s.position, s.generation, s.applied_events, s.ignored_events, s.failed_events,
       s.last_error, s.last_error_position, s.last_error_at, s.rebuild_position, s.rebuild_started_at,
       s.rebuilt_at, s.updated_at, h.position AS head
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
UPDATE public.projection_state
SET failed_events = failed_events + 1, last_error = $2, last_error_position = $3, last_error_at = now()
WHERE name = $1;

-- name: orders_load
SELECT k.id, t.position, t.state::text AS state
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT position, state FROM orders WHERE checkout_session_id = k.id LIMIT 1) t;

-- name: orders_upsert
INSERT INTO orders (checkout_session_id, status, customer_id, client_reference_id, subscription_id, sort_at,
                    position, state)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
                     $8::json[])
ON CONFLICT (checkout_session_id) DO UPDATE
SET status = EXCLUDED.status, customer_id = EXCLUDED.customer_id,
    client_reference_id = EXCLUDED.client_reference_id, subscription_id = EXCLUDED.subscription_id,
    sort_at = EXCLUDED.sort_at, position = EXCLUDED.position, state = EXCLUDED.state;

-- name: intents_load
SELECT k.id, t.position, t.state::text AS state
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT position, state FROM order_payment_intents WHERE payment_intent_id = k.id LIMIT 1) t;

-- name: intents_upsert
INSERT INTO order_payment_intents (payment_intent_id, checkout_session_id, position, state)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::json[])
ON CONFLICT (payment_intent_id) DO UPDATE
SET checkout_session_id = EXCLUDED.checkout_session_id, position = EXCLUDED.position, state = EXCLUDED.state;

-- name: customers_load
SELECT k.id, t.position, t.state::text AS state
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT position, state FROM customers WHERE customer_id = k.id LIMIT 1) t;

-- name: customers_upsert
INSERT INTO customers (customer_id, email, deleted, position, state)
SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[], $4::bigint[], $5::json[])
ON CONFLICT (customer_id) DO UPDATE
SET email = EXCLUDED.email, deleted = EXCLUDED.deleted, position = EXCLUDED.position, state = EXCLUDED.state;

-- name: subscriptions_load
SELECT k.id, t.position, t.state::text AS state
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT position, state FROM subscriptions WHERE subscription_id = k.id LIMIT 1) t;

-- name: subscriptions_upsert
INSERT INTO subscriptions (subscription_id, customer_id, status, position, state)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::json[])
ON CONFLICT (subscription_id) DO UPDATE
SET customer_id = EXCLUDED.customer_id, status = EXCLUDED.status, position = EXCLUDED.position,
    state = EXCLUDED.state;

-- name: order_get
SELECT checkout_session_id, position, state::text AS state FROM orders WHERE checkout_session_id = $1;

-- name: order_intents
-- The intents the orders list ($1), and the intents that name the orders' sessions ($2): index
-- probes per key (the caller drops the rows found both ways).
SELECT p.payment_intent_id, p.checkout_session_id, p.position, p.state::text AS state
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT * FROM order_payment_intents WHERE payment_intent_id = k.id LIMIT 1) p
UNION ALL
SELECT p.payment_intent_id, p.checkout_session_id, p.position, p.state::text AS state
FROM unnest($2::text[]) AS s(id)
-- OFFSET 0 keeps the subquery a per-session probe (never flattened into a join over the table).
CROSS JOIN LATERAL (SELECT * FROM order_payment_intents WHERE checkout_session_id = s.id OFFSET 0) p;

-- Orders, newest first: one query per leading filter, so that the filter and the cursor are both
-- conditions of the one index that also gives the order (never a scan of all orders). The cursor
-- ($4, $5) is the (sort_at, checkout_session_id) of the previous page's last row; the first page
-- passes the largest bigint. The other filters, when given, are checked on the rows found.

-- name: orders_list
SELECT checkout_session_id, position, state::text AS state, sort_at
FROM orders
WHERE (sort_at, checkout_session_id) < ($4::bigint, $5::text)
  AND ($1::text IS NULL OR customer_id = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR client_reference_id = $3)
ORDER BY sort_at DESC, checkout_session_id DESC
LIMIT $6;

-- name: orders_list_by_customer
SELECT checkout_session_id, position, state::text AS state, sort_at
FROM orders
WHERE customer_id = $1 AND (sort_at, checkout_session_id) < ($4::bigint, $5::text)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR client_reference_id = $3)
ORDER BY sort_at DESC, checkout_session_id DESC
LIMIT $6;

-- name: orders_list_by_status
SELECT checkout_session_id, position, state::text AS state, sort_at
FROM orders
WHERE status = $2 AND (sort_at, checkout_session_id) < ($4::bigint, $5::text)
  AND ($1::text IS NULL OR customer_id = $1)
  AND ($3::text IS NULL OR client_reference_id = $3)
ORDER BY sort_at DESC, checkout_session_id DESC
LIMIT $6;

-- name: orders_list_by_reference
SELECT checkout_session_id, position, state::text AS state, sort_at
FROM orders
WHERE client_reference_id = $3 AND (sort_at, checkout_session_id) < ($4::bigint, $5::text)
  AND ($1::text IS NULL OR customer_id = $1)
  AND ($2::text IS NULL OR status = $2)
ORDER BY sort_at DESC, checkout_session_id DESC
LIMIT $6;

-- name: customer_get
SELECT customer_id, position, state::text AS state FROM customers WHERE customer_id = $1;

-- name: subscription_get
SELECT subscription_id, position, state::text AS state FROM subscriptions WHERE subscription_id = $1;

-- name: adjustments_load
SELECT k.id, t.position, t.state::text AS state
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT position, state FROM inventory_adjustments WHERE adjustment_id = k.id LIMIT 1) t;

-- name: adjustments_upsert
-- Writes the adjustments and moves their (price, product) totals by what changed: minus the rows
-- as they were (every sub-statement sees the same snapshot), plus the rows as written.
WITH input AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[],
                $8::text[], $9::bigint[], $10::bigint[], $11::json[])
         AS i(adjustment_id, checkout_session_id, line_item_id, price_id, product_id, upc_code, quantity_delta,
              reason, created_at, position, state)
), previous AS (
    SELECT a.price_id, a.product_id, -a.quantity_delta AS quantity_delta, -1 AS adjustments, 0::bigint AS position
    FROM input i
    CROSS JOIN LATERAL (SELECT price_id, product_id, quantity_delta FROM inventory_adjustments
                        WHERE adjustment_id = i.adjustment_id LIMIT 1) a
), written AS (
    INSERT INTO inventory_adjustments (adjustment_id, checkout_session_id, line_item_id, price_id, product_id,
                                       upc_code, quantity_delta, reason, created_at, position, state)
    SELECT * FROM input
    ON CONFLICT (adjustment_id) DO UPDATE
    SET price_id = EXCLUDED.price_id, product_id = EXCLUDED.product_id, upc_code = EXCLUDED.upc_code,
        quantity_delta = EXCLUDED.quantity_delta, reason = EXCLUDED.reason, created_at = EXCLUDED.created_at,
        position = EXCLUDED.position, state = EXCLUDED.state
    RETURNING price_id, product_id, quantity_delta, 1 AS adjustments, position
)
INSERT INTO inventory_levels (price_id, product_id, quantity_delta, adjustment_count, position)
SELECT price_id, product_id, sum(quantity_delta), sum(adjustments), max(position)
FROM (SELECT * FROM previous UNION ALL SELECT * FROM written) c
GROUP BY price_id, product_id
ON CONFLICT ON CONSTRAINT inventory_levels_key DO UPDATE
SET quantity_delta = inventory_levels.quantity_delta + EXCLUDED.quantity_delta,
    adjustment_count = inventory_levels.adjustment_count + EXCLUDED.adjustment_count,
    position = greatest(inventory_levels.position, EXCLUDED.position);

-- name: adjustments_list
SELECT adjustment_id, position, checkout_session_id, line_item_id, price_id, product_id, upc_code,
       quantity_delta, reason, created_at
FROM inventory_adjustments
WHERE position > $1
ORDER BY position, adjustment_id
LIMIT $2;

-- name: inventory_levels
SELECT price_id, product_id, -quantity_delta AS quantity_sold, adjustment_count, position
FROM inventory_levels
WHERE adjustment_count > 0
ORDER BY price_id NULLS LAST, product_id NULLS LAST;

-- name: queue_enqueue
INSERT INTO fulfillment_queue (checkout_session_id, completed_position)
SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT (checkout_session_id) DO NOTHING;

-- name: queue_due
SELECT checkout_session_id, generation, attempts
FROM fulfillment_queue
WHERE status = 'pending' AND next_attempt_at <= now()
ORDER BY next_attempt_at, checkout_session_id
LIMIT $1;

-- name: queue_lock
SELECT status, generation, attempts FROM fulfillment_queue WHERE checkout_session_id = $1 FOR UPDATE;

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

-- name: queue_requeue
-- `ledger fulfill retry`: failed sessions (all of them when $1 is NULL) go back to pending.
UPDATE fulfillment_queue
SET status = 'pending', attempts = 0, generation = generation + 1, next_attempt_at = now(), last_error = NULL,
    updated_at = now()
WHERE status = 'failed' AND ($1::text[] IS NULL OR checkout_session_id = ANY ($1::text[]))
RETURNING checkout_session_id, generation;

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

-- name: try_lock
SELECT pg_try_advisory_lock($1, $2);

-- name: unlock
SELECT pg_advisory_unlock($1, $2);

-- name: held_locks
-- The advisory locks (namespace, id) some session of this database holds.
SELECT classid::bigint AS classid, objid::bigint AS objid
FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database());

-- name: rebuild_started
UPDATE public.projection_state SET rebuild_position = 0, rebuild_started_at = now() WHERE name = ANY ($1);

-- name: rebuild_progress
UPDATE public.projection_state SET rebuild_position = $2 WHERE name = ANY ($1);

-- name: rebuild_lock_states
SELECT 1 FROM public.projection_state WHERE name = ANY ($1) FOR UPDATE;

-- name: rebuild_switched
-- The new tables are in: the checkpoint jumps to where the rebuild got, in a new generation.
UPDATE public.projection_state
SET position = $2, generation = generation + 1, applied_events = $3, ignored_events = $4,
    failed_events = 0, last_error = NULL, last_error_position = NULL, last_error_at = NULL,
    rebuild_position = NULL, rebuilt_at = now(), updated_at = now()
WHERE name = $1;

-- name: log_summary
-- Positions are contiguous from 1, so the head is also the number of events.
SELECT h.position AS head, (SELECT count(*) FROM public.quarantine) AS quarantined
FROM public.ledger_head h;
