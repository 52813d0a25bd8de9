-- The event store (ports::EventStore; sourced's backend, part 1): streams of messages with a
-- per-stream seq, one global order, and the documents that commits' sync ops write. The tables
-- live in the store's schema (the URL's `?schema=`) with the fixed prefix `es_`.

-- One row per stream with at least one message: its last seq, when it was last appended to,
-- and the global seq of its last message (recent_streams orders by it). A commit locks the
-- rows of the streams it appends to (an upsert), so appends to one stream run one at a time.
CREATE TABLE es_streams (
    stream_id       TEXT   PRIMARY KEY CHECK (stream_id <> ''),
    seq             BIGINT NOT NULL CHECK (seq >= 0),
    updated_at_ms   BIGINT NOT NULL,
    last_global_seq BIGINT NOT NULL
);

CREATE INDEX es_streams_recent ON es_streams (last_global_seq);

-- The last global seq handed out (one row). A commit takes it with `UPDATE ... RETURNING`
-- and holds its row lock until it commits, so global seqs become visible in the order they
-- were handed out: a reader of `global_seq > n` never skips a later commit (invariant 4).
CREATE TABLE es_global (
    one             BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    last_global_seq BIGINT  NOT NULL
);

INSERT INTO es_global (one, last_global_seq) VALUES (true, 0);

-- Messages (commands and events). Times are milliseconds since the Unix epoch.
CREATE TABLE es_messages (
    global_seq     BIGINT PRIMARY KEY,
    id             UUID   NOT NULL UNIQUE,
    stream_id      TEXT   NOT NULL REFERENCES es_streams (stream_id),
    seq            BIGINT NOT NULL CHECK (seq > 0),
    type           TEXT   NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    causation_id   UUID   NOT NULL,
    correlation_id UUID   NOT NULL,
    metadata       JSONB  NOT NULL,
    payload        JSONB  NOT NULL,
    -- read_stream's index, and the guard against two messages at one place of a stream.
    UNIQUE (stream_id, seq)
);

-- read_correlation_batch, in global order.
CREATE INDEX es_messages_correlation ON es_messages (correlation_id, global_seq);

-- Documents written by sync ops (a small key-value read model).
CREATE TABLE es_documents (
    collection TEXT  NOT NULL,
    doc_id     TEXT  NOT NULL,
    doc        JSONB NOT NULL,
    PRIMARY KEY (collection, doc_id)
);
