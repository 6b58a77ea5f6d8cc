-- The inventory projection: adjustments, the totals they move, and the read side
-- (unqualified tables: see orders.sql).

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
