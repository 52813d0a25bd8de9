-- The event store (ports::EventStore; sourced's backend, part 1): streams of messages with a
-- per-stream seq, one global order, and the documents that commits' sync ops write. Same
-- tables as on Postgres (prefix `es_`), with UUIDs and JSON as TEXT and times in
-- milliseconds since the Unix epoch.

-- One row per stream with at least one message: its last seq, when it was last appended to,
-- and the global seq of its last message (recent_streams orders by it).
CREATE TABLE es_streams (
    stream_id       TEXT    PRIMARY KEY CHECK (stream_id <> ''),
    seq             INTEGER NOT NULL CHECK (seq >= 0),
    updated_at_ms   INTEGER NOT NULL,
    last_global_seq INTEGER NOT NULL
);

CREATE INDEX es_streams_recent ON es_streams (last_global_seq);

-- The last global seq handed out (one row). Every write transaction holds SQLite's write
-- lock from `BEGIN IMMEDIATE` to its commit, so seqs are handed out in commit order.
CREATE TABLE es_global (
    one             INTEGER PRIMARY KEY CHECK (one = 1),
    last_global_seq INTEGER NOT NULL
);

INSERT INTO es_global (one, last_global_seq) VALUES (1, 0);

-- Messages (commands and events).
CREATE TABLE es_messages (
    global_seq     INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    stream_id      TEXT    NOT NULL REFERENCES es_streams (stream_id),
    seq            INTEGER NOT NULL CHECK (seq > 0),
    type           TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    causation_id   TEXT    NOT NULL,
    correlation_id TEXT    NOT NULL,
    metadata       TEXT    NOT NULL, -- JSON
    payload        TEXT    NOT NULL, -- JSON
    -- read_stream's index, and the guard against two messages at one place of a stream.
    UNIQUE (stream_id, seq)
);

-- read_correlation_batch, in global order.
CREATE INDEX es_messages_correlation ON es_messages (correlation_id, global_seq);

-- Documents written by sync ops (a small key-value read model).
CREATE TABLE es_documents (
    collection TEXT NOT NULL,
    doc_id     TEXT NOT NULL,
    doc        TEXT NOT NULL, -- JSON
    PRIMARY KEY (collection, doc_id)
) WITHOUT ROWID;
