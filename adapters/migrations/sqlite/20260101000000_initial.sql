-- Rocket Rides on SQLite: canonical store, outbox and consumer state in one file.
-- Mirrors the reference schemas (rocket-rides-atomic 2.2, rocket-rides-log 1.2), with times in
-- milliseconds since the Unix epoch and JSON stored as TEXT.

-- Users; the demo trusts the Authorization header as the user's email.
CREATE TABLE users (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT    NOT NULL UNIQUE CHECK (length(email) <= 255)
);

-- The two users of the reference fixtures.
INSERT INTO users (id, email) VALUES
    (1, 'user@example.com'),
    (2, 'user-bad-source@example.com');

-- Stripe-style idempotency keys, scoped per user.
CREATE TABLE idempotency_keys (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         INTEGER NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    idempotency_key TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    last_run_at_ms  INTEGER NOT NULL,
    locked_at_ms    INTEGER,
    request_method  TEXT    NOT NULL,
    request_path    TEXT    NOT NULL,
    request_params  TEXT    NOT NULL, -- JSON
    recovery_point  TEXT    NOT NULL CHECK (recovery_point IN
                        ('started', 'ride_created', 'charge_created', 'finished')),
    response_code   INTEGER,
    response_body   TEXT,             -- JSON
    UNIQUE (user_id, idempotency_key)
);

-- The reaper deletes by age.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at_ms);

-- Rides. A reaped key leaves its ride behind with the reference cleared.
CREATE TABLE rides (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            INTEGER NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    idempotency_key_id INTEGER UNIQUE REFERENCES idempotency_keys (id) ON DELETE SET NULL,
    origin_lat         REAL    NOT NULL,
    origin_lon         REAL    NOT NULL,
    target_lat         REAL    NOT NULL,
    target_lon         REAL    NOT NULL,
    distance_mm        INTEGER NOT NULL CHECK (distance_mm >= 0),
    charge_id          TEXT UNIQUE,
    created_at_ms      INTEGER NOT NULL
);

CREATE INDEX rides_user_id ON rides (user_id, id);

-- Audit trail written in the same phase as the ride.
CREATE TABLE audit_records (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    action        TEXT    NOT NULL,
    data          TEXT    NOT NULL, -- JSON
    origin_ip     TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    resource_id   INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);

-- The transactional outbox. AUTOINCREMENT: a sequence is never reused, even after the
-- highest rows were removed, so consumers can dedupe on (producer, seq) forever.
CREATE TABLE staged_records (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL,
    stream         TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    payload        TEXT    NOT NULL, -- JSON
    correlation_id TEXT,
    causation_id   TEXT,
    recorded_at_ms INTEGER NOT NULL
);

-- Store-wide facts, e.g. the producer name (generated once, at the first connect).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Consumers' results and positions, saved together.
CREATE TABLE consumer_checkpoints (
    name          TEXT    PRIMARY KEY,
    position      TEXT    NOT NULL,
    state         TEXT    NOT NULL, -- JSON
    version       INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
