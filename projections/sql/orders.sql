-- The orders projection (orders, order_payment_intents) and its read side.
-- Hot-path queries reach the large tables only through index conditions, in a form whose plan
-- cannot change with planner statistics: per-key lookups are `unnest(keys) CROSS JOIN LATERAL
-- (... WHERE key = k.id LIMIT 1)`, one probe of the unique index each, and lists are keyset pages
-- over the index that gives their order (tests/integration/test_plans.py checks every query).
-- Table names are unqualified on purpose: `ledger rebuild` runs the same statements with the
-- build schema first on its search_path.

-- name: orders_load
SELECT k.id, t.position, t.state::text AS state
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT position, state FROM orders WHERE checkout_session_id = k.id LIMIT 1) t;

-- name: orders_upsert
-- payment_status is not written here: it depends on the intents too (orders_payment_status_set).
INSERT INTO orders (checkout_session_id, status, customer_id, client_reference_id, subscription_id, test_mode,
                    sort_at, position, state)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::boolean[], $7::bigint[],
                     $8::bigint[], $9::json[])
ON CONFLICT (checkout_session_id) DO UPDATE
SET status = EXCLUDED.status, customer_id = EXCLUDED.customer_id,
    client_reference_id = EXCLUDED.client_reference_id, subscription_id = EXCLUDED.subscription_id,
    test_mode = EXCLUDED.test_mode, sort_at = EXCLUDED.sort_at, position = EXCLUDED.position,
    state = EXCLUDED.state;

-- name: orders_get_many
SELECT o.checkout_session_id, o.position, o.state::text AS state
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT * FROM orders WHERE checkout_session_id = k.id LIMIT 1) o;

-- name: orders_ids_after
-- The next $2 order ids after $1, in key order (a rebuild settling every order).
SELECT checkout_session_id FROM orders WHERE checkout_session_id > $1 ORDER BY checkout_session_id LIMIT $2;

-- name: orders_payment_status_set
-- The payment status of each order in $1 is $2 (same place): each row found by a probe of the key,
-- then updated by its address.
UPDATE orders o SET payment_status = u.status
FROM unnest($1::text[], $2::text[]) AS u(id, status)
CROSS JOIN LATERAL (SELECT ctid FROM orders WHERE checkout_session_id = u.id LIMIT 1) t
WHERE o.ctid = t.ctid AND o.payment_status IS DISTINCT FROM u.status;

-- name: intents_load
SELECT k.id, t.position, t.state::text AS state
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT position, state FROM order_payment_intents WHERE payment_intent_id = k.id LIMIT 1) t;

-- name: intents_upsert
INSERT INTO order_payment_intents (payment_intent_id, checkout_session_id, position, state)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::json[])
ON CONFLICT (payment_intent_id) DO UPDATE
SET checkout_session_id = EXCLUDED.checkout_session_id, position = EXCLUDED.position, state = EXCLUDED.state;

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
  AND ($7::text IS NULL OR payment_status = $7)
  AND ($8::boolean IS NULL OR test_mode = $8)
ORDER BY sort_at DESC, checkout_session_id DESC
LIMIT $6;

-- name: orders_list_by_customer
SELECT checkout_session_id, position, state::text AS state, sort_at
FROM orders
WHERE customer_id = $1 AND (sort_at, checkout_session_id) < ($4::bigint, $5::text)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR client_reference_id = $3)
  AND ($7::text IS NULL OR payment_status = $7)
  AND ($8::boolean IS NULL OR test_mode = $8)
ORDER BY sort_at DESC, checkout_session_id DESC
LIMIT $6;

-- name: orders_list_by_status
SELECT checkout_session_id, position, state::text AS state, sort_at
FROM orders
WHERE status = $2 AND (sort_at, checkout_session_id) < ($4::bigint, $5::text)
  AND ($1::text IS NULL OR customer_id = $1)
  AND ($3::text IS NULL OR client_reference_id = $3)
  AND ($7::text IS NULL OR payment_status = $7)
  AND ($8::boolean IS NULL OR test_mode = $8)
ORDER BY sort_at DESC, checkout_session_id DESC
LIMIT $6;

-- name: orders_list_by_reference
SELECT checkout_session_id, position, state::text AS state, sort_at
FROM orders
WHERE client_reference_id = $3 AND (sort_at, checkout_session_id) < ($4::bigint, $5::text)
  AND ($1::text IS NULL OR customer_id = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($7::text IS NULL OR payment_status = $7)
  AND ($8::boolean IS NULL OR test_mode = $8)
ORDER BY sort_at DESC, checkout_session_id DESC
LIMIT $6;

-- name: orders_completed_by_reference
-- The completed sessions among the newest few of each client_reference_id in $1 (a second one is
-- a double payment): a probe of the reference index per id. The status is checked on the rows
-- found (the LIMIT keeps it out of the probe), never through the status index: that one holds
-- nearly every order.
SELECT r.ref AS client_reference_id, o.checkout_session_id
FROM unnest($1::text[]) AS r(ref)
CROSS JOIN LATERAL (
    SELECT checkout_session_id, status FROM orders WHERE client_reference_id = r.ref
    ORDER BY sort_at DESC, checkout_session_id DESC LIMIT 20
) o
WHERE o.status = 'complete';

-- name: order_history_add
-- The events of a batch, by the sessions and payment intents they touched ($1, $2 in step).
INSERT INTO order_history (entity_id, position)
SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT DO NOTHING;

-- name: order_history_of
-- The positions, up to $2, of the events that touched each of the entities $1 (a session or a
-- payment intent): (entity_id, position), in log order per entity; one range probe per entity.
SELECT k.id AS entity_id, h.position
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT position FROM order_history WHERE entity_id = k.id AND position <= $2
                    ORDER BY position) h;
