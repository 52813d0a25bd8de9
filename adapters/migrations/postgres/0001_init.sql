-- Rocket Rides canonical store, outbox and consumer state (Postgres).
-- Times are BIGINT milliseconds since the Unix epoch, as in every other backend, so that the
-- domain decides on the same numbers everywhere (and tests can drive a manual clock).

CREATE TABLE users (
    id    BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE CHECK (char_length(email) <= 255)
);

INSERT INTO users (id, email) VALUES
    (1, 'user@example.com'),
    (2, 'user-bad-source@example.com');
-- The seeded ids were explicit: make the sequence continue after them.
SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users));

CREATE TABLE idempotency_keys (
    id              BIGSERIAL PRIMARY KEY,
    user_id         BIGINT NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    idempotency_key TEXT NOT NULL CHECK (char_length(idempotency_key) <= 100),
    created_at_ms   BIGINT NOT NULL,
    last_run_at_ms  BIGINT NOT NULL,
    locked_at_ms    BIGINT NULL,
    request_method  TEXT NOT NULL CHECK (char_length(request_method) <= 10),
    request_path    TEXT NOT NULL CHECK (char_length(request_path) <= 100),
    request_params  JSONB NOT NULL,
    recovery_point  TEXT NOT NULL CHECK (char_length(recovery_point) <= 50),
    response_code   INT NULL,
    response_body   JSONB NULL,
    UNIQUE (user_id, idempotency_key)
);

CREATE TABLE rides (
    id                 BIGSERIAL PRIMARY KEY,
    user_id            BIGINT NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    idempotency_key_id BIGINT NULL UNIQUE REFERENCES idempotency_keys (id) ON DELETE SET NULL,
    -- DOUBLE PRECISION (not the reference's NUMERIC(13,10)) so parameters round-trip exactly.
    origin_lat         DOUBLE PRECISION NOT NULL,
    origin_lon         DOUBLE PRECISION NOT NULL,
    target_lat         DOUBLE PRECISION NOT NULL,
    target_lon         DOUBLE PRECISION NOT NULL,
    distance_mm        BIGINT NOT NULL CHECK (distance_mm >= 0),
    charge_id          TEXT NULL UNIQUE CHECK (char_length(charge_id) <= 50),
    created_at_ms      BIGINT NOT NULL
);
CREATE INDEX rides_user_id ON rides (user_id, id DESC);

CREATE TABLE audit_records (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    action        TEXT NOT NULL CHECK (char_length(action) <= 50),
    data          JSONB NOT NULL,
    -- TEXT rather than CIDR: a malformed client address must never fail a phase.
    origin_ip     TEXT NOT NULL,
    resource_type TEXT NOT NULL CHECK (char_length(resource_type) <= 50),
    resource_id   BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE consumer_checkpoints (
    name          TEXT PRIMARY KEY,
    position      TEXT NOT NULL,
    state         JSONB NOT NULL,
    version       BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- One row per fact about this store; `producer` names the sequence its records carry.
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (name, value)
VALUES ('producer', 'pg-' || substr(md5(random()::text || clock_timestamp()::text), 1, 8));

-- The outbox, which is also the Postgres-only log. Phases insert rows with seq NULL; the
-- sequencer (one at a time, under an advisory lock) gives committed rows consecutive seqs.
-- `producer`/`producer_seq` are set only for records appended from another store's outbox.
CREATE TABLE outbox (
    id             BIGSERIAL PRIMARY KEY,
    seq            BIGINT NULL UNIQUE,
    producer       TEXT NULL,
    producer_seq   BIGINT NULL,
    record_id      UUID NOT NULL,
    stream         TEXT NOT NULL,
    key            TEXT NOT NULL,
    kind           TEXT NOT NULL,
    payload        JSONB NOT NULL,
    correlation_id UUID NULL,
    causation_id   UUID NULL,
    recorded_at_ms BIGINT NOT NULL
);
CREATE INDEX outbox_unsequenced ON outbox (id) WHERE seq IS NULL;

-- The next seq to hand out; exactly one row.
CREATE TABLE outbox_counter (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    next_seq BIGINT NOT NULL
);
INSERT INTO outbox_counter (only_row, next_seq) VALUES (TRUE, 1);
