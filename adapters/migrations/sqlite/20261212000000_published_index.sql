-- The `published` index: what the store remembers of a record the streamer removed from the
-- outbox (it reached the log), so that `rides log repair` can tell which entity a sequence
-- lost by the log was about and rebuild it from the canonical data. Written by the removal,
-- in the same transaction. Rows are about 40 bytes.
CREATE TABLE published_records (
    seq  INTEGER PRIMARY KEY,
    kind TEXT    NOT NULL,
    key  TEXT    NOT NULL
);
