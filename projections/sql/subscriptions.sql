-- The subscriptions projection and its read side (unqualified tables: see orders.sql).

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

-- name: subscription_history_add
-- The events of a batch, by the subscriptions they touched ($1, $2 in step).
INSERT INTO subscription_history (entity_id, position)
SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT DO NOTHING;

-- name: subscription_history_of
-- The positions, up to $2, of the events that touched each subscription of $1 (entity_id, position), in
-- log order per subscription: one range probe of the key per subscription.
SELECT k.id AS entity_id, h.position
FROM unnest($1::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT position FROM subscription_history WHERE entity_id = k.id AND position <= $2
                    ORDER BY position) h;

-- name: subscription_get
SELECT subscription_id, position, state::text AS state FROM subscriptions WHERE subscription_id = $1;
