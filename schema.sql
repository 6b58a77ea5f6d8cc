-- flex-ledger schema. Applied at every start; every statement is idempotent.
-- PostgreSQL 15 or newer.

CREATE TABLE IF NOT EXISTS ledger_schema (
    id          int PRIMARY KEY CONSTRAINT ledger_schema_single_row CHECK (id = 1),
    version     int NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
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
    payload      jsonb NOT NULL,           -- the event as received
    raw_body     bytea,                    -- the exact bytes that were signed (Flex events)
    headers      jsonb,                    -- the signature headers exactly as received
    message_id   text,                     -- Svix message id
    prev_hash    bytea NOT NULL,
    hash         bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS events_event_type_position_idx ON events (event_type, position);

-- Verified deliveries whose body is not a usable event: kept for an operator, never in the log.
CREATE TABLE IF NOT EXISTS quarantine (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    message_id   text,
    headers      jsonb NOT NULL,
    body         bytea NOT NULL,
    reason       text NOT NULL
);

-- The hash of one log row: sha256 over the previous row's hash and every stored field,
-- each length-prefixed so that no two different rows can serialise to the same bytes.
CREATE OR REPLACE FUNCTION ledger_row_hash(
    p_prev_hash bytea, p_position bigint, p_event_id text, p_event_type text, p_source text,
    p_event_dt bigint, p_occurred_at timestamptz, p_recorded_at timestamptz, p_payload jsonb,
    p_raw_body bytea, p_headers jsonb, p_message_id text
) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(
        p_prev_hash
        || convert_to(
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
                p_payload::text),
            'UTF8')
        || coalesce(sha256(p_raw_body), '\x'::bytea)
    )
$$;

-- Appends a batch under the head lock, in one round trip. Returns, for every input in order,
-- its position and whether it was already in the log (a duplicate keeps the first copy).
CREATE OR REPLACE FUNCTION ledger_append(
    p_event_ids text[], p_event_types text[], p_sources text[], p_event_dts bigint[],
    p_occurred_ats timestamptz[], p_payloads text[], p_raw_bodies bytea[], p_headers text[],
    p_message_ids text[]
) RETURNS TABLE (out_position bigint, out_duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_start     bigint;
    v_position  bigint;
    v_hash      bytea;
    v_prev      bytea;
    v_existing  bigint;
    v_now       timestamptz := now();
    v_payload   jsonb;
    v_headers   jsonb;
BEGIN
    SELECT h.position, h.hash INTO v_position, v_hash FROM ledger_head h WHERE h.id = 1 FOR UPDATE;
    v_start := v_position;
    FOR i IN 1 .. coalesce(cardinality(p_event_ids), 0) LOOP
        SELECT e.position INTO v_existing FROM events e WHERE e.event_id = p_event_ids[i];
        IF FOUND THEN
            out_position := v_existing;
            out_duplicate := true;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_position := v_position + 1;
        v_prev := v_hash;
        v_payload := p_payloads[i]::jsonb;
        v_headers := p_headers[i]::jsonb;
        v_hash := ledger_row_hash(v_prev, v_position, p_event_ids[i], p_event_types[i], p_sources[i],
                                  p_event_dts[i], p_occurred_ats[i], v_now, v_payload,
                                  p_raw_bodies[i], v_headers, p_message_ids[i]);
        INSERT INTO events (position, event_id, event_type, source, event_dt, occurred_at,
                            recorded_at, payload, raw_body, headers, message_id, prev_hash, hash)
        VALUES (v_position, p_event_ids[i], p_event_types[i], p_sources[i], p_event_dts[i],
                p_occurred_ats[i], v_now, v_payload, p_raw_bodies[i], v_headers,
                p_message_ids[i], v_prev, v_hash);
        out_position := v_position;
        out_duplicate := false;
        RETURN NEXT;
    END LOOP;
    IF v_position > v_start THEN
        UPDATE ledger_head SET position = v_position, hash = v_hash WHERE id = 1;
        PERFORM pg_notify('ledger_events', v_position::text);
    END IF;
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

INSERT INTO ledger_schema (id, version) VALUES (1, 1)
ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, applied_at = now()
WHERE ledger_schema.version < EXCLUDED.version;
