-- The `published` index: what the store remembers of a record the streamer removed from the
-- outbox (it reached the log), so that `rides log repair` can tell which entity a sequence
-- lost by the log was about and rebuild it from the canonical data. Written by the removal
-- statement, in the same transaction. `producer` is the record's producer (this store's own
-- name for its own records).
CREATE TABLE outbox_published (
    producer TEXT   NOT NULL,
    seq      BIGINT NOT NULL,
    kind     TEXT   NOT NULL,
    key      TEXT   NOT NULL,
    PRIMARY KEY (producer, seq)
);
