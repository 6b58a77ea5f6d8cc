-- version: 11
-- Renewals are fulfilled through the same queue as checkouts: a paid invoice of a subscription is a
-- row keyed by the invoice's id (kind 'renewal'), 'skipped' when it turns out to be the
-- subscription's first (fulfilled as its checkout's sale). A renewal's inventory adjustments name
-- their invoice and no checkout session.

ALTER TABLE fulfillment_queue ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'checkout'
    CONSTRAINT fulfillment_queue_kind CHECK (kind IN ('checkout', 'renewal'));
ALTER TABLE fulfillment_queue ADD COLUMN IF NOT EXISTS subscription_id text;
ALTER TABLE fulfillment_queue DROP CONSTRAINT IF EXISTS fulfillment_queue_status;
ALTER TABLE fulfillment_queue ADD CONSTRAINT fulfillment_queue_status
    CHECK (status IN ('pending', 'fulfilled', 'failed', 'skipped'));

ALTER TABLE inventory_adjustments ALTER COLUMN checkout_session_id DROP NOT NULL;
ALTER TABLE inventory_adjustments ADD COLUMN IF NOT EXISTS invoice_id text;

UPDATE ledger_schema SET version = 11, applied_at = now() WHERE id = 1 AND version < 11;
