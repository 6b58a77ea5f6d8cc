-- flex-ledger schema: the whole current schema, what a fresh database gets (ledger/migrate.py);
-- older databases get the numbered steps in ledger/migrations instead. Every statement is idempotent.
-- PostgreSQL 15 or newer.

CREATE TABLE IF NOT EXISTS ledger_schema (
    id          int PRIMARY KEY CONSTRAINT ledger_schema_single_row CHECK (id = 1),
    version     int NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- The migration steps this database has (ledger/migrations/NNNN_name.sql; ledger/migrate.py): a
-- fresh database gets this file and every step recorded as 'schema'; an older one gets the steps
-- it lacks, each recorded as 'applied' (or 'baseline' when its version already had it).
CREATE TABLE IF NOT EXISTS ledger_migrations (
    number      int PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    how         text NOT NULL CONSTRAINT ledger_migrations_how CHECK (how IN ('applied', 'baseline', 'schema'))
);

-- The serialisation point of the log: one row holding the last position and its hash.
CREATE TABLE IF NOT EXISTS ledger_head (
    id        int PRIMARY KEY CONSTRAINT ledger_head_single_row CHECK (id = 1),
    position  bigint NOT NULL,
    hash      bytea NOT NULL
);
INSERT INTO ledger_head (id, position, hash)
VALUES (1, 0, '\x0000000000000000000000000000000000000000000000000000000000000000')
ON CONFLICT (id) DO NOTHING;

-- The log. Immutable (see the triggers below), contiguous positions from 1, hash-chained.
CREATE TABLE IF NOT EXISTS events (
    position     bigint PRIMARY KEY,
    event_id     text NOT NULL CONSTRAINT events_event_id_key UNIQUE,
    event_type   text NOT NULL,
    source       text NOT NULL,            -- 'flex' (a verified webhook) or 'ledger' (our own)
    event_dt     bigint,                   -- Flex's event_dt as sent
    occurred_at  timestamptz,              -- event_dt read as a time
    recorded_at  timestamptz NOT NULL,
    payload      jsonb NOT NULL,           -- the event as received (raw_body parsed)
    raw_body     bytea NOT NULL,           -- the exact bytes received (signed, for Flex events)
    headers      jsonb,                    -- the signature headers exactly as received
    message_id   text,                     -- Svix message id
    prev_hash    bytea NOT NULL,
    hash         bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS events_event_type_position_idx ON events (event_type, position);
-- Keep rows up to a page inline and uncompressed: appends are serialised, so every microsecond
-- spent compressing a typical 1-4 KiB event is spent by the whole log.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class
                   WHERE oid = 'events'::regclass AND 'toast_tuple_target=8160' = ANY (reloptions)) THEN
        ALTER TABLE events SET (toast_tuple_target = 8160);
    END IF;
END
$$;

-- Verified deliveries whose body is not a usable event: kept for an operator, never in the log.
CREATE TABLE IF NOT EXISTS quarantine (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    message_id   text,
    headers      jsonb NOT NULL,
    body         bytea NOT NULL,
    reason       text NOT NULL
);

-- The digest of one log row's content: every stored field, each length-prefixed so that no two
-- different rows serialise to the same bytes. `payload` is not hashed itself: it must equal the
-- hashed `raw_body` parsed as JSON, which `ledger verify` checks.
CREATE OR REPLACE FUNCTION ledger_row_digest(
    p_position bigint, p_event_id text, p_event_type text, p_source text, p_event_dt bigint,
    p_occurred_at timestamptz, p_recorded_at timestamptz, p_raw_body bytea, p_headers jsonb,
    p_message_id text
) RETURNS bytea
-- STABLE, not IMMUTABLE: concat_ws and convert_to are stable, and only a function declared no
-- stricter than its body is inlined where it is called (version 12).
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT sha256(
        convert_to(
            concat_ws(E'\n',
                p_position::text,
                octet_length(p_event_id) || ':' || p_event_id,
                octet_length(p_event_type) || ':' || p_event_type,
                octet_length(p_source) || ':' || p_source,
                coalesce(p_event_dt::text, '-'),
                coalesce((extract(epoch FROM p_occurred_at) * 1000000)::bigint::text, '-'),
                (extract(epoch FROM p_recorded_at) * 1000000)::bigint::text,
                coalesce(octet_length(p_message_id) || ':' || p_message_id, '-'),
                coalesce(p_headers::text, '-'),
                ''),
            'UTF8')
        || p_raw_body
    )
$$;

-- Appends a batch under the head lock, in one round trip. Returns, for every input in order,
-- its position and whether it was already in the log (a duplicate keeps the first copy's
-- position; within a batch the first copy wins). Set-based except for the hash chain itself.
CREATE OR REPLACE FUNCTION ledger_append(
    p_event_ids text[], p_event_types text[], p_sources text[], p_event_dts bigint[],
    p_occurred_ats timestamptz[], p_raw_bodies bytea[], p_headers jsonb[], p_message_ids text[]
) RETURNS TABLE (out_position bigint, out_duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_start    bigint;
    v_hash     bytea;
    v_now      timestamptz := now();
    v_new      int[];
    v_digests  bytea[];
    v_prevs    bytea[] := '{}';
    v_hashes   bytea[] := '{}';
    v_count    int;
BEGIN
    SELECT h.position, h.hash INTO v_start, v_hash FROM ledger_head h WHERE h.id = 1 FOR UPDATE;

    -- Inputs that are new: not in the log, and the first copy within this batch. Each input is one
    -- probe of the unique index (a LATERAL ... LIMIT 1 can only run as a nested loop of probes), so
    -- the cost never depends on the size of the log or on planner statistics: a plan cached while
    -- the log was empty must not turn every later append into a scan of the whole log.
    SELECT coalesce(array_agg(t.i ORDER BY t.i) FILTER (WHERE t.logged IS NULL AND t.copy = 1), '{}')
    INTO v_new
    FROM (
        SELECT u.i, d.position AS logged, row_number() OVER (PARTITION BY u.id ORDER BY u.i) AS copy
        FROM unnest(p_event_ids) WITH ORDINALITY AS u(id, i)
        LEFT JOIN LATERAL (SELECT e.position FROM events e WHERE e.event_id = u.id LIMIT 1) d ON true
    ) t;
    v_count := cardinality(v_new);

    IF v_count > 0 THEN
        -- The arrays are read by unnest (one pass), never by subscript: subscripting a large array
        -- parameter inside a query copies it for every row.
        SELECT array_agg(ledger_row_digest(v_start + n.k, u.event_id, u.event_type, u.source, u.event_dt,
                                           u.occurred_at, v_now, u.raw_body, u.headers, u.message_id)
                         ORDER BY n.k)
        INTO v_digests
        FROM unnest(p_event_ids, p_event_types, p_sources, p_event_dts, p_occurred_ats, p_raw_bodies,
                    p_headers, p_message_ids)
                 WITH ORDINALITY AS u(event_id, event_type, source, event_dt, occurred_at, raw_body,
                                      headers, message_id, i)
        JOIN unnest(v_new) WITH ORDINALITY AS n(i, k) ON n.i = u.i;

        FOR k IN 1 .. v_count LOOP
            v_prevs[k] := v_hash;
            v_hash := sha256(v_hash || v_digests[k]);
            v_hashes[k] := v_hash;
        END LOOP;

        INSERT INTO events (position, event_id, event_type, source, event_dt, occurred_at, recorded_at,
                            payload, raw_body, headers, message_id, prev_hash, hash)
        SELECT v_start + n.k, u.event_id, u.event_type, u.source, u.event_dt, u.occurred_at, v_now,
               convert_from(u.raw_body, 'UTF8')::jsonb, u.raw_body, u.headers, u.message_id,
               v_prevs[n.k], v_hashes[n.k]
        FROM unnest(p_event_ids, p_event_types, p_sources, p_event_dts, p_occurred_ats, p_raw_bodies,
                    p_headers, p_message_ids)
                 WITH ORDINALITY AS u(event_id, event_type, source, event_dt, occurred_at, raw_body,
                                      headers, message_id, i)
        JOIN unnest(v_new) WITH ORDINALITY AS n(i, k) ON n.i = u.i;

        UPDATE ledger_head SET position = v_start + v_count, hash = v_hash WHERE id = 1;
        PERFORM pg_notify('ledger_events', (v_start + v_count)::text);
    END IF;

    -- Every input's answer, in input order: new rows by rank, the rest by their logged position.
    RETURN QUERY
    SELECT coalesce(v_start + n.k, d.position), n.k IS NULL
    FROM unnest(p_event_ids) WITH ORDINALITY AS u(id, i)
    LEFT JOIN unnest(v_new) WITH ORDINALITY AS n(i, k) ON n.i = u.i
    LEFT JOIN LATERAL (SELECT e.position FROM events e WHERE n.k IS NULL AND e.event_id = u.id LIMIT 1) d ON true
    ORDER BY u.i;
END
$$;

-- The log is immutable, whoever the SQL comes from.
CREATE OR REPLACE FUNCTION ledger_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE OR REPLACE TRIGGER events_no_update_delete
    BEFORE UPDATE OR DELETE ON events FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE OR REPLACE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();

-- Projections: one checkpoint row each, advanced in the same transaction as their tables.
CREATE TABLE IF NOT EXISTS projection_state (
    name                 text PRIMARY KEY,
    position             bigint NOT NULL DEFAULT 0,
    generation           int NOT NULL DEFAULT 1,     -- bumped by every rebuild switch
    applied_events       bigint NOT NULL DEFAULT 0,
    ignored_events       bigint NOT NULL DEFAULT 0,
    failed_events        bigint NOT NULL DEFAULT 0,
    last_error           text,
    last_error_position  bigint,
    last_error_at        timestamptz,
    rebuild_position     bigint,
    rebuild_started_at   timestamptz,
    rebuilt_at           timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
-- The rows are seeded by the service from its registry of followers (projections/registry.py):
-- every projection and the fulfillment reactor, which has its own checkpoint (never rebuilt).
ALTER TABLE projection_state ADD COLUMN IF NOT EXISTS fulfilled_sessions bigint;  -- the reactor's count
-- A runner that failed (not an event: the runner itself, e.g. its connection) and restarted.
ALTER TABLE projection_state ADD COLUMN IF NOT EXISTS worker_failures bigint NOT NULL DEFAULT 0;
ALTER TABLE projection_state ADD COLUMN IF NOT EXISTS worker_error text;
ALTER TABLE projection_state ADD COLUMN IF NOT EXISTS worker_error_at timestamptz;

-- Events a follower could not apply (poison: data no table can hold, or a fold that fails on it),
-- one row per (follower, position), recorded when live mode skips them (schema version 8).
-- `ledger rebuild` skips the same positions again and lists them, instead of stopping on them.
CREATE TABLE IF NOT EXISTS projection_failures (
    name         text NOT NULL,
    position     bigint NOT NULL,
    reason       text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projection_failures_pkey PRIMARY KEY (name, position)
);
-- Before version 8 only the last failure of each follower was kept: that one is known.
INSERT INTO projection_failures (name, position, reason, recorded_at)
SELECT name, last_error_position, coalesce(last_error, 'failed'), coalesce(last_error_at, now())
FROM projection_state
WHERE last_error_position IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ledger_schema WHERE version >= 8)
ON CONFLICT ON CONSTRAINT projection_failures_pkey DO NOTHING;

-- Console sessions signed out before they expired (ledger/console_sessions.py; version 8).
CREATE TABLE IF NOT EXISTS console_revocations (
    session_id   text NOT NULL,
    expires_at   timestamptz NOT NULL,
    CONSTRAINT console_revocations_pkey PRIMARY KEY (session_id)
);

-- The fulfillment reactor's queue: one row per completed session, and one per paid invoice of a
-- subscription (kind 'renewal', keyed by the invoice's id; 'skipped' when it is the subscription's
-- first invoice, fulfilled as its checkout's sale).
CREATE TABLE IF NOT EXISTS fulfillment_queue (
    checkout_session_id  text PRIMARY KEY,              -- the session's id; a renewal's: the invoice's
    status               text NOT NULL DEFAULT 'pending'
                         CONSTRAINT fulfillment_queue_status
                         CHECK (status IN ('pending', 'fulfilled', 'failed', 'skipped')),
    attempts             int NOT NULL DEFAULT 0,        -- Flex calls that failed in this generation
    generation           int NOT NULL DEFAULT 1,        -- bumped by `ledger fulfill retry`
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    last_error           text,
    completed_position   bigint NOT NULL,               -- the checkout.session.completed that queued it
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE fulfillment_queue ADD COLUMN IF NOT EXISTS test_mode boolean NOT NULL DEFAULT false;  -- v6
ALTER TABLE fulfillment_queue ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'checkout'  -- v11
    CONSTRAINT fulfillment_queue_kind CHECK (kind IN ('checkout', 'renewal'));
ALTER TABLE fulfillment_queue ADD COLUMN IF NOT EXISTS subscription_id text;  -- v11: a renewal's
-- Counted once when the column arrives (schema version 4); kept by `queue_fulfilled` from then on.
UPDATE projection_state
SET fulfilled_sessions = (SELECT count(*) FROM fulfillment_queue WHERE status = 'fulfilled')
WHERE name = 'fulfillment' AND fulfilled_sessions IS NULL;
ALTER TABLE projection_state ALTER COLUMN fulfilled_sessions SET DEFAULT 0;
-- The reactor's "what is due" query reads this index in its own order; the failed sessions have one
-- of their own, so counting what is pending or failed never reads the fulfilled ones.
CREATE INDEX IF NOT EXISTS fulfillment_queue_due_order_idx ON fulfillment_queue (next_attempt_at, checkout_session_id)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS fulfillment_queue_failed_idx ON fulfillment_queue (checkout_session_id)
    WHERE status = 'failed';
DROP INDEX IF EXISTS public.fulfillment_queue_due_idx;
-- Payment intents with a succeeded refund, noted by the reactor's intake when
-- LEDGER_RESTOCK_ON_REFUND=full: once the orders projection has applied that refund ($position),
-- the reactor restocks the order if it is fully refunded and fulfilled, then forgets the note.
CREATE TABLE IF NOT EXISTS refund_checks (
    payment_intent_id  text PRIMARY KEY,
    position           bigint NOT NULL
);
-- What `ledger restock` (and the automatic restock of refunded orders) recorded, per line item and
-- request, written with the restock's adjustment events: checked, under the session's queue row
-- lock, so that what is restocked never exceeds what was sold.
CREATE TABLE IF NOT EXISTS restocks (
    checkout_session_id  text NOT NULL,
    line_item_id         text NOT NULL,
    request_id           text NOT NULL,
    quantity             bigint NOT NULL CONSTRAINT restocks_positive CHECK (quantity > 0),
    created_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (checkout_session_id, line_item_id, request_id)
);

-- Version 6 changed the shape of the projections' tables. The live tables are brought to the new
-- shape here, so that the running service keeps reading and writing them, and the service then
-- rebuilds every projection whose shape is older than its code from the log, blue/green
-- (projection_state.shape; projections/upgrade.py).
ALTER TABLE projection_state ADD COLUMN IF NOT EXISTS shape int NOT NULL DEFAULT 1;
ALTER TABLE IF EXISTS public.orders ADD COLUMN IF NOT EXISTS payment_status text;
ALTER TABLE IF EXISTS public.orders ADD COLUMN IF NOT EXISTS test_mode boolean;
ALTER TABLE IF EXISTS public.inventory_adjustments ADD COLUMN IF NOT EXISTS test_mode boolean NOT NULL DEFAULT false;
ALTER TABLE IF EXISTS public.inventory_adjustments DROP CONSTRAINT IF EXISTS inventory_adjustments_one_per_line_item;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = 'public' AND table_name = 'inventory_levels' AND column_name = 'quantity_delta') THEN
        DROP TABLE public.inventory_levels;  -- per (price, product) before v6; refilled below
    END IF;
END
$$;

-- Each projection's tables sit between "-- projection: NAME" and "-- end projection: NAME"
-- with unqualified names: `ledger rebuild` runs the same block in a build schema.

-- projection: orders
CREATE TABLE IF NOT EXISTS orders (
    checkout_session_id  text PRIMARY KEY,
    status               text,
    customer_id          text,
    client_reference_id  text,
    subscription_id      text,
    payment_status       text,                     -- projections/money.py, kept by the orders runner
    test_mode            boolean,
    sort_at              bigint NOT NULL,          -- microseconds: created_at, else first seen
    position             bigint NOT NULL,          -- last log position applied to this order
    state                json NOT NULL              -- the mergeable state (projections/state.py)
);
CREATE INDEX IF NOT EXISTS orders_sort_idx ON orders (sort_at DESC, checkout_session_id DESC);
CREATE INDEX IF NOT EXISTS orders_customer_idx ON orders (customer_id, sort_at DESC, checkout_session_id DESC);
CREATE INDEX IF NOT EXISTS orders_reference_idx ON orders (client_reference_id, sort_at DESC, checkout_session_id DESC);
CREATE INDEX IF NOT EXISTS orders_status_idx ON orders (status, sort_at DESC, checkout_session_id DESC);
CREATE TABLE IF NOT EXISTS order_payment_intents (
    payment_intent_id    text PRIMARY KEY,
    checkout_session_id  text,
    position             bigint NOT NULL,
    state                json NOT NULL              -- the mergeable state (projections/state.py)
);
CREATE INDEX IF NOT EXISTS order_payment_intents_session_idx ON order_payment_intents (checkout_session_id);
-- Which events touched which session or payment intent: an order's history and time travel.
CREATE TABLE IF NOT EXISTS order_history (
    entity_id  text NOT NULL,                      -- a checkout session id or a payment intent id
    position   bigint NOT NULL,
    CONSTRAINT order_history_pkey PRIMARY KEY (entity_id, position)
);
-- end projection: orders

-- projection: customers
CREATE TABLE IF NOT EXISTS customers (
    customer_id  text PRIMARY KEY,
    email        text,
    deleted      boolean NOT NULL DEFAULT false,
    position     bigint NOT NULL,
    state        json NOT NULL
);
CREATE INDEX IF NOT EXISTS customers_email_idx ON customers (email);
-- Which events touched which customer: its history, for its documents as of any position.
CREATE TABLE IF NOT EXISTS customer_history (
    entity_id  text NOT NULL,                      -- a customer id
    position   bigint NOT NULL,
    CONSTRAINT customer_history_pkey PRIMARY KEY (entity_id, position)
);
-- end projection: customers

-- projection: subscriptions
CREATE TABLE IF NOT EXISTS subscriptions (
    subscription_id  text PRIMARY KEY,
    customer_id      text,
    status           text,
    position         bigint NOT NULL,
    state            json NOT NULL
);
CREATE INDEX IF NOT EXISTS subscriptions_customer_idx ON subscriptions (customer_id);
-- Which events touched which subscription: its history, for its documents as of any position.
CREATE TABLE IF NOT EXISTS subscription_history (
    entity_id  text NOT NULL,                      -- a subscription id
    position   bigint NOT NULL,
    CONSTRAINT subscription_history_pkey PRIMARY KEY (entity_id, position)
);
-- end projection: subscriptions

-- projection: invoices
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
-- end projection: invoices

-- projection: inventory
CREATE TABLE IF NOT EXISTS inventory_adjustments (
    adjustment_id        text PRIMARY KEY,
    checkout_session_id  text,                     -- null for a renewal's (invoice_id says which)
    line_item_id         text NOT NULL,
    price_id             text,
    product_id           text,
    upc_code             text,
    quantity_delta       bigint NOT NULL,
    reason               text NOT NULL,
    created_at           bigint,                   -- microseconds
    position             bigint NOT NULL,          -- the ledger.inventory.adjusted event
    state                json NOT NULL,
    test_mode            boolean NOT NULL DEFAULT false,
    invoice_id           text                      -- a renewal's invoice
);
-- One sale per (session, line item); restocks may be many.
CREATE UNIQUE INDEX IF NOT EXISTS inventory_adjustments_one_sale_per_line_item
    ON inventory_adjustments (checkout_session_id, line_item_id) WHERE reason = 'sale';
CREATE INDEX IF NOT EXISTS inventory_adjustments_feed_idx ON inventory_adjustments (position, adjustment_id);
-- Totals per (price, product, mode), kept by the adjustments upsert: one row per catalogue entry
-- and mode, so that test sales never move live stock.
CREATE TABLE IF NOT EXISTS inventory_levels (
    price_id            text,
    product_id          text,
    test_mode           boolean NOT NULL,
    quantity_sold       bigint NOT NULL,
    quantity_restocked  bigint NOT NULL,
    adjustment_count    bigint NOT NULL,
    position            bigint NOT NULL,
    CONSTRAINT inventory_levels_mode_key UNIQUE NULLS NOT DISTINCT (price_id, product_id, test_mode)
);
-- end projection: inventory
DROP INDEX IF EXISTS public.inventory_adjustments_position_idx;  -- replaced by inventory_adjustments_feed_idx
-- No query reads these; every projection write paid for them (schema version 4).
DROP INDEX IF EXISTS public.orders_subscription_idx;
DROP INDEX IF EXISTS public.inventory_adjustments_price_idx;
-- Levels per mode arrive with schema version 6: summed once from the adjustments already there
-- (the rebuild that follows recounts them from the log).
INSERT INTO inventory_levels (price_id, product_id, test_mode, quantity_sold, quantity_restocked, adjustment_count,
                              position)
SELECT price_id, product_id, test_mode,
       sum(CASE WHEN quantity_delta < 0 THEN -quantity_delta ELSE 0 END),
       sum(CASE WHEN quantity_delta > 0 THEN quantity_delta ELSE 0 END), count(*), max(position)
FROM inventory_adjustments
WHERE NOT EXISTS (SELECT 1 FROM ledger_schema WHERE version >= 6)
GROUP BY price_id, product_id, test_mode
ON CONFLICT ON CONSTRAINT inventory_levels_mode_key DO NOTHING;

-- One row per reconcile run (`ledger reconcile`, and the automatic runs of `serve`/`work`): what
-- it examined in Flex's API and how many observations it recorded (the drift). Not a projection:
-- the observations themselves are in the log; this is the runs' own record (schema version 7).
CREATE TABLE IF NOT EXISTS reconcile_runs (
    run_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trigger      text NOT NULL,                 -- 'command' or 'automatic'
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    since        timestamptz NOT NULL,          -- the window's start
    outcome      text NOT NULL CONSTRAINT reconcile_runs_outcome_check CHECK (outcome IN ('ok', 'failed')),
    error        text,
    examined     int NOT NULL,
    known        int NOT NULL,
    recorded     int NOT NULL,                  -- observations recorded: the drift
    missed       int NOT NULL,                  -- of those, money: a completed checkout, a payment, a refund
    kinds        jsonb NOT NULL,                -- {kind: {examined, known, recorded, missed}}
    first_position bigint,                      -- the observations it recorded, when any
    last_position  bigint
);
-- Resources Flex listed that could not be recorded (no id, an id no index holds, \u0000): skipped
-- and reported, never blocking the run (schema version 8).
ALTER TABLE reconcile_runs ADD COLUMN IF NOT EXISTS skipped int NOT NULL DEFAULT 0;

-- `ledger rebuild` builds projections' tables in this schema, from their blocks above, and swaps
-- them in (projections/rebuild.py). The table names come from the service's projection registry.
CREATE OR REPLACE FUNCTION ledger_build_begin() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DROP SCHEMA IF EXISTS ledger_build CASCADE;
    CREATE SCHEMA ledger_build;
END
$$;
CREATE OR REPLACE FUNCTION ledger_build_lock_live(tables text[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE (SELECT 'LOCK TABLE ' || string_agg(format('public.%I', t), ', ') || ' IN ACCESS EXCLUSIVE MODE'
             FROM unnest(tables) AS t);
END
$$;
CREATE OR REPLACE FUNCTION ledger_build_swap(tables text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY tables LOOP
        EXECUTE format('DROP TABLE public.%I', t);
        EXECUTE format('ALTER TABLE ledger_build.%I SET SCHEMA public', t);
    END LOOP;
END
$$;
CREATE OR REPLACE FUNCTION ledger_build_end() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DROP SCHEMA IF EXISTS ledger_build CASCADE;
END
$$;

-- Outbound delivery (schema version 9): the merchant's destinations, each following the log with its own checkpoint
-- (destinations.position), and the messages queued for each, with their attempts
-- (destination_messages: operational records, not log events).

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
-- What is due, in the order a sender claims it (due time, then log position): a claim reads only
-- the rows it takes, however many wait.
CREATE INDEX IF NOT EXISTS destination_messages_due_order
    ON destination_messages (destination_id, next_attempt_at, position) WHERE status = 'retrying';
CREATE INDEX IF NOT EXISTS destination_messages_failed
    ON destination_messages (destination_id, position, message_id) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS destination_messages_in_order
    ON destination_messages (destination_id, position, message_id);
CREATE INDEX IF NOT EXISTS destination_messages_delivered_at
    ON destination_messages (delivered_at) WHERE status = 'delivered';

-- Version 5: the rebuild functions above; checkpoints seeded by the service. Version 6: money
-- after the sale on orders, test and live apart, projection shapes (see above). Version 7:
-- reconcile runs. Version 8: events a follower skipped, by position (projection_failures); console sign-outs.
-- Version 9: outbound delivery (destinations, destination_messages); customers' and subscriptions'
-- histories (their documents as of any position, for the messages). Versions 10 and 11: invoices;
-- renewals. Version 12: the row digest is inlined (STABLE).
INSERT INTO ledger_schema (id, version) VALUES (1, 12)
ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, applied_at = now()
WHERE ledger_schema.version < EXCLUDED.version;
