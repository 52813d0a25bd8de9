-- Consumer groups over the event store (ports::ReactorStore; sourced's backend, part 2):
-- groups, their handled types, per-(group, stream) offsets with claims and failures, worker
-- heartbeats, and scheduled messages. Times are milliseconds since the Unix epoch.

-- A consumer group. `created_after_ms`: only messages created after it are delivered
-- (StartFrom, fixed at registration). `replay_until`: messages up to this global seq were
-- acknowledged before the last reset and are delivered with `replaying = true`.
-- `retry_at_ms`: the whole group pauses until then (sourced's group retry_at).
CREATE TABLE es_groups (
    group_id         TEXT    PRIMARY KEY CHECK (group_id <> ''),
    status           TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'stopped')),
    reason           TEXT,
    created_after_ms BIGINT  NOT NULL,
    batch_size       BIGINT  NOT NULL CHECK (batch_size > 0),
    retry_at_ms      BIGINT,
    replay_until     BIGINT  NOT NULL DEFAULT 0
);

-- The message types a group handles (a claim joins on it).
CREATE TABLE es_group_types (
    group_id TEXT NOT NULL REFERENCES es_groups (group_id) ON DELETE CASCADE,
    type     TEXT NOT NULL,
    PRIMARY KEY (group_id, type)
);

-- A group's position on a stream: the last acknowledged global seq, the worker holding the
-- stream (at most one per group and stream), and the stream's failures for the group
-- (back-off until `retry_at_ms`, or parked until retried by an operator).
CREATE TABLE es_offsets (
    group_id       TEXT    NOT NULL REFERENCES es_groups (group_id) ON DELETE CASCADE,
    stream_id      TEXT    NOT NULL REFERENCES es_streams (stream_id),
    global_seq     BIGINT  NOT NULL DEFAULT 0,
    claimed_by     TEXT,
    claimed_at_ms  BIGINT,
    retry_count    BIGINT  NOT NULL DEFAULT 0,
    retry_at_ms    BIGINT,
    parked         BOOLEAN NOT NULL DEFAULT false,
    error          TEXT,
    failed_message TEXT,
    PRIMARY KEY (group_id, stream_id)
);

CREATE INDEX es_offsets_claimed ON es_offsets (claimed_at_ms) WHERE claimed_by IS NOT NULL;

-- Workers' heartbeats (stale claims of silent workers are released after a TTL).
CREATE TABLE es_workers (
    worker_id    TEXT   PRIMARY KEY,
    last_seen_ms BIGINT NOT NULL
);

-- Messages appended to their streams when due (the housekeeper promotes them).
CREATE TABLE es_scheduled (
    id              BIGSERIAL PRIMARY KEY,
    available_at_ms BIGINT    NOT NULL,
    message         JSONB     NOT NULL
);

CREATE INDEX es_scheduled_due ON es_scheduled (available_at_ms, id);

-- Claims look for a stream's pending messages in global order.
CREATE INDEX es_messages_stream_global ON es_messages (stream_id, global_seq);
