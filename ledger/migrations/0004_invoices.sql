-- version: 10
-- Invoices: a projection of their own (invoice.* webhooks and observations of Flex's invoices), with
-- their history as orders keep theirs. A new projection starts at position 0 and catches up from
-- the log by itself. Outbound delivery's due messages get an index in the order a sender claims
-- them (the one before made every claim read and sort every due message).

CREATE TABLE IF NOT EXISTS invoices (
    invoice_id       text PRIMARY KEY,
    subscription_id  text,
    customer_id      text,
    status           text,                         -- draft | open | paid | void | uncollectible
    test_mode        boolean,
    sort_at          bigint NOT NULL,              -- microseconds: created_at, else period_start, else first seen
    position         bigint NOT NULL,
    state            json NOT NULL
);
CREATE INDEX IF NOT EXISTS invoices_sort_idx ON invoices (sort_at DESC, invoice_id DESC);
CREATE INDEX IF NOT EXISTS invoices_subscription_idx ON invoices (subscription_id, sort_at DESC, invoice_id DESC);
CREATE INDEX IF NOT EXISTS invoices_customer_idx ON invoices (customer_id, sort_at DESC, invoice_id DESC);
CREATE INDEX IF NOT EXISTS invoices_status_idx ON invoices (status, sort_at DESC, invoice_id DESC);
-- Which events touched which invoice: its history, for its documents as of any position.
CREATE TABLE IF NOT EXISTS invoice_history (
    entity_id  text NOT NULL,                      -- an invoice id
    position   bigint NOT NULL,
    CONSTRAINT invoice_history_pkey PRIMARY KEY (entity_id, position)
);

DROP INDEX IF EXISTS destination_messages_due;
CREATE INDEX IF NOT EXISTS destination_messages_due_order
    ON destination_messages (destination_id, next_attempt_at, position) WHERE status = 'retrying';

UPDATE ledger_schema SET version = 10, applied_at = now() WHERE id = 1 AND version < 10;
