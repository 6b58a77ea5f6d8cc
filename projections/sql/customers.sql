-- The customers projection and its read side (unqualified tables: see orders.sql).

-- name: customers_load
SELECT k.id, t.position, t.state::text AS state
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT position, state FROM customers WHERE customer_id = k.id LIMIT 1) t;

-- name: customers_upsert
INSERT INTO customers (customer_id, email, deleted, position, state)
SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[], $4::bigint[], $5::json[])
ON CONFLICT (customer_id) DO UPDATE
SET email = EXCLUDED.email, deleted = EXCLUDED.deleted, position = EXCLUDED.position, state = EXCLUDED.state;

-- name: customer_history_add
-- The events of a batch, by the customers they touched ($1, $2 in step).
INSERT INTO customer_history (entity_id, position)
SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT DO NOTHING;

-- name: customer_history_of
-- The positions, up to $2, of the events that touched each customer of $1 (entity_id, position), in
-- log order per customer: one range probe of the key per customer.
SELECT k.id AS entity_id, h.position
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT position FROM customer_history WHERE entity_id = k.id AND position <= $2
                    ORDER BY position) h;

-- name: customer_get
SELECT customer_id, position, state::text AS state FROM customers WHERE customer_id = $1;

-- name: customers_by_email
-- The customers with this email, for the console's order search: through the email index (an
-- ORDER BY customer_id here would walk the primary key past every customer instead).
SELECT customer_id FROM customers WHERE email = $1 LIMIT 20;
