-- version: 9
-- Outbound delivery: the merchant's destinations, each following the log with its own checkpoint
-- (destinations.position), and the messages queued for each, with their attempts
-- (destination_messages: operational records, not log events). Customers and subscriptions keep
-- their history, as orders do (their documents as of any position, for the messages): filled by
-- the rebuild their new shape brings.

CREATE TABLE IF NOT EXISTS destinations (
    destination_id        text PRIMARY KEY,
    url                   text NOT NULL,
    types                 text[] NOT NULL DEFAULT '{}',  -- message types or prefixes (order.*); none: all
    mode                  text NOT NULL DEFAULT 'live'
                          CONSTRAINT destinations_mode CHECK (mode IN ('live', 'test', 'all')),
    description           text,
    state                 text NOT NULL DEFAULT 'enabled'
                          CONSTRAINT destinations_state CHECK (state IN ('enabled', 'disabled', 'disabled_by_receiver')),
    secret                text NOT NULL,                 -- whsec_…: signs every message
    previous_secret       text,                          -- after a rotation, also signs until:
    previous_secret_until timestamptz,
    position              bigint NOT NULL,               -- messages queued through this log position
    delivered_count       bigint NOT NULL DEFAULT 0,     -- messages delivered, in all (replays included)
    last_error            text,
    last_error_at         timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS destination_messages (
    destination_id   text NOT NULL REFERENCES destinations (destination_id) ON DELETE CASCADE,
    message_id       text NOT NULL,
    position         bigint NOT NULL,
    type             text NOT NULL,
    body             bytea NOT NULL,                     -- derived from the log alone
    status           text NOT NULL DEFAULT 'retrying'
                     CONSTRAINT destination_messages_status CHECK (status IN ('retrying', 'delivered', 'failed')),
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,                        -- retrying: due then
    leased_until     timestamptz,                        -- in flight until then (a process may die mid-attempt)
    last_status_code int,
    last_error       text,
    last_attempt_at  timestamptz,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT destination_messages_pkey PRIMARY KEY (destination_id, message_id)
);
CREATE INDEX IF NOT EXISTS destination_messages_due
    ON destination_messages (destination_id, next_attempt_at) WHERE status = 'retrying';
CREATE INDEX IF NOT EXISTS destination_messages_failed
    ON destination_messages (destination_id, position, message_id) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS destination_messages_in_order
    ON destination_messages (destination_id, position, message_id);
CREATE INDEX IF NOT EXISTS destination_messages_delivered_at
    ON destination_messages (delivered_at) WHERE status = 'delivered';

-- Which events touched which customer: its history, for its documents as of any position.
CREATE TABLE IF NOT EXISTS customer_history (
    entity_id  text NOT NULL,                      -- a customer id
    position   bigint NOT NULL,
    CONSTRAINT customer_history_pkey PRIMARY KEY (entity_id, position)
);

-- Which events touched which subscription: its history, for its documents as of any position.
CREATE TABLE IF NOT EXISTS subscription_history (
    entity_id  text NOT NULL,                      -- a subscription id
    position   bigint NOT NULL,
    CONSTRAINT subscription_history_pkey PRIMARY KEY (entity_id, position)
);

UPDATE ledger_schema SET version = 9, applied_at = now() WHERE id = 1 AND version < 9;
