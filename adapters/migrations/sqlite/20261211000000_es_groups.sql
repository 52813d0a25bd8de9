-- Consumer groups over the event store (ports::ReactorStore; sourced's backend, part 2).
-- Same tables as on Postgres (migration 0011_es_groups.sql, which documents them), with
-- booleans as 0/1 and JSON as TEXT.

CREATE TABLE es_groups (
    group_id         TEXT    PRIMARY KEY CHECK (group_id <> ''),
    status           TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'stopped')),
    reason           TEXT,
    created_after_ms INTEGER NOT NULL,
    batch_size       INTEGER NOT NULL CHECK (batch_size > 0),
    retry_at_ms      INTEGER,
    replay_until     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE es_group_types (
    group_id TEXT NOT NULL REFERENCES es_groups (group_id) ON DELETE CASCADE,
    type     TEXT NOT NULL,
    PRIMARY KEY (group_id, type)
);

CREATE TABLE es_offsets (
    group_id       TEXT    NOT NULL REFERENCES es_groups (group_id) ON DELETE CASCADE,
    stream_id      TEXT    NOT NULL REFERENCES es_streams (stream_id),
    global_seq     INTEGER NOT NULL DEFAULT 0,
    claimed_by     TEXT,
    claimed_at_ms  INTEGER,
    retry_count    INTEGER NOT NULL DEFAULT 0,
    retry_at_ms    INTEGER,
    parked         BOOLEAN NOT NULL DEFAULT false,
    error          TEXT,
    failed_message TEXT,
    PRIMARY KEY (group_id, stream_id)
);

CREATE INDEX es_offsets_claimed ON es_offsets (claimed_at_ms) WHERE claimed_by IS NOT NULL;

CREATE TABLE es_workers (
    worker_id    TEXT    PRIMARY KEY,
    last_seen_ms INTEGER NOT NULL
);

CREATE TABLE es_scheduled (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    available_at_ms INTEGER NOT NULL,
    message         TEXT    NOT NULL
);

CREATE INDEX es_scheduled_due ON es_scheduled (available_at_ms, id);

CREATE INDEX es_messages_stream_global ON es_messages (stream_id, global_seq);
