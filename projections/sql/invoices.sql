-- The invoices projection and its read side (unqualified tables: see orders.sql).

-- name: invoices_load
SELECT k.id, t.position, t.state::text AS state
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT position, state FROM invoices WHERE invoice_id = k.id LIMIT 1) t;

-- name: invoices_upsert
INSERT INTO invoices (invoice_id, subscription_id, customer_id, status, test_mode, sort_at, position, state)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::boolean[], $6::bigint[], $7::bigint[],
                     $8::json[])
ON CONFLICT (invoice_id) DO UPDATE
SET subscription_id = EXCLUDED.subscription_id, customer_id = EXCLUDED.customer_id, status = EXCLUDED.status,
    test_mode = EXCLUDED.test_mode, sort_at = EXCLUDED.sort_at, position = EXCLUDED.position, state = EXCLUDED.state;

-- name: invoice_history_add
-- The events of a batch, by the invoices they touched ($1, $2 in step).
INSERT INTO invoice_history (entity_id, position)
SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT DO NOTHING;

-- name: invoice_history_of
-- The positions, up to $2, of the events that touched each invoice of $1 (entity_id, position), in
-- log order per invoice: one range probe of the key per invoice.
SELECT k.id AS entity_id, h.position
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT position FROM invoice_history WHERE entity_id = k.id AND position <= $2
                    ORDER BY position) h;

-- name: invoice_get
SELECT invoice_id, position, state::text AS state FROM invoices WHERE invoice_id = $1;

-- name: invoices_of_subscriptions
-- The invoices of each subscription in $1, newest first per subscription (the subscription's
-- document lists them): one probe of the subscription index each.
SELECT i.subscription_id, i.invoice_id
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT subscription_id, invoice_id FROM invoices WHERE subscription_id = k.id
                    ORDER BY sort_at DESC, invoice_id DESC LIMIT 1000) i;

-- Invoices, newest first: one query per leading filter, as for orders (see orders.sql). The cursor
-- ($4, $5) is the (sort_at, invoice_id) of the previous page's last row.

-- name: invoices_list
SELECT invoice_id, position, state::text AS state, sort_at
FROM invoices
WHERE (sort_at, invoice_id) < ($4::bigint, $5::text)
  AND ($1::text IS NULL OR subscription_id = $1)
  AND ($2::text IS NULL OR customer_id = $2)
  AND ($3::text IS NULL OR status = $3)
  AND ($7::boolean IS NULL OR test_mode = $7)
ORDER BY sort_at DESC, invoice_id DESC
LIMIT $6;

-- name: invoices_list_by_subscription
SELECT invoice_id, position, state::text AS state, sort_at
FROM invoices
WHERE subscription_id = $1 AND (sort_at, invoice_id) < ($4::bigint, $5::text)
  AND ($2::text IS NULL OR customer_id = $2)
  AND ($3::text IS NULL OR status = $3)
  AND ($7::boolean IS NULL OR test_mode = $7)
ORDER BY sort_at DESC, invoice_id DESC
LIMIT $6;

-- name: invoices_list_by_customer
SELECT invoice_id, position, state::text AS state, sort_at
FROM invoices
WHERE customer_id = $2 AND (sort_at, invoice_id) < ($4::bigint, $5::text)
  AND ($1::text IS NULL OR subscription_id = $1)
  AND ($3::text IS NULL OR status = $3)
  AND ($7::boolean IS NULL OR test_mode = $7)
ORDER BY sort_at DESC, invoice_id DESC
LIMIT $6;

-- name: invoices_list_by_status
SELECT invoice_id, position, state::text AS state, sort_at
FROM invoices
WHERE status = $3 AND (sort_at, invoice_id) < ($4::bigint, $5::text)
  AND ($1::text IS NULL OR subscription_id = $1)
  AND ($2::text IS NULL OR customer_id = $2)
  AND ($7::boolean IS NULL OR test_mode = $7)
ORDER BY sort_at DESC, invoice_id DESC
LIMIT $6;
