-- govbus transactional outbox for an agency's own PostgreSQL.
--
-- Every INSERT / UPDATE / DELETE on a source table attached with the trigger
-- below writes a change row (before and after images, as JSON) into
-- govbus.outbox in the same transaction as the change itself. `govbus publish
-- --outbox <url>` relays the rows in commit order per entity and deletes each
-- row only after the change is durable in the publisher's store (and from
-- there, acknowledged by the broker).
--
-- Column names of the source table map to the dataset's schema by the same
-- convention the province tables use: nested fields are joined with `_`
-- (permanent_address.province_code <- permanent_address_province_code).
-- Columns the schema does not know are ignored.

CREATE SCHEMA IF NOT EXISTS govbus;

CREATE TABLE IF NOT EXISTS govbus.outbox (
    id         BIGSERIAL PRIMARY KEY,
    dataset    TEXT        NOT NULL,
    op         TEXT        NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE')),
    key        TEXT        NOT NULL,
    before     JSONB,
    after      JSONB,
    txid       BIGINT      NOT NULL DEFAULT txid_current(),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set on a row `govbus dlq replay` put back: its earlier dead letters,
    -- and the entity's sequence when it was refused (the relay refuses the
    -- row as `superseded` if the entity has changed since).
    replay_history TEXT,
    replay_expect_seq BIGINT
);
ALTER TABLE govbus.outbox ADD COLUMN IF NOT EXISTS replay_history TEXT;
ALTER TABLE govbus.outbox ADD COLUMN IF NOT EXISTS replay_expect_seq BIGINT;

-- govbus.capture(dataset, key_column): the trigger function.
CREATE OR REPLACE FUNCTION govbus.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ds     TEXT := TG_ARGV[0];
    keycol TEXT := TG_ARGV[1];
    old_k  TEXT;
    new_k  TEXT;
BEGIN
    IF TG_OP = 'DELETE' THEN
        old_k := to_jsonb(OLD) ->> keycol;
        INSERT INTO govbus.outbox (dataset, op, key, before, after)
        VALUES (ds, 'DELETE', old_k, to_jsonb(OLD), NULL);
        RETURN OLD;
    END IF;
    new_k := to_jsonb(NEW) ->> keycol;
    IF TG_OP = 'UPDATE' THEN
        old_k := to_jsonb(OLD) ->> keycol;
        IF old_k IS DISTINCT FROM new_k THEN
            -- A changed key is a delete of the old entity and a new one.
            INSERT INTO govbus.outbox (dataset, op, key, before, after)
            VALUES (ds, 'DELETE', old_k, to_jsonb(OLD), NULL);
            INSERT INTO govbus.outbox (dataset, op, key, before, after)
            VALUES (ds, 'INSERT', new_k, NULL, to_jsonb(NEW));
        ELSE
            INSERT INTO govbus.outbox (dataset, op, key, before, after)
            VALUES (ds, 'UPDATE', new_k, to_jsonb(OLD), to_jsonb(NEW));
        END IF;
    ELSE
        INSERT INTO govbus.outbox (dataset, op, key, before, after)
        VALUES (ds, 'INSERT', new_k, NULL, to_jsonb(NEW));
    END IF;
    RETURN NEW;
END
$$;

-- Attach it to a source table, e.g.:
--   CREATE TRIGGER residents_govbus
--     AFTER INSERT OR UPDATE OR DELETE ON public.residents
--     FOR EACH ROW EXECUTE FUNCTION govbus.capture('bca.residents', 'citizen_id');
