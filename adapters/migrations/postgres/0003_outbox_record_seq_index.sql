-- `Outbox::remove` deletes by the sequence `peek` handed out, `coalesce(producer_seq, seq)`
-- (a record appended from another store keeps its producer's sequence). Without an index on
-- that expression every remove scanned the whole outbox table, which is also the
-- Postgres-only log and its dead rows; with it a remove of a 1000-record batch is one index
-- scan. Rows get into the index when the sequencer numbers them (unsequenced rows have no
-- sequence to remove by).
CREATE INDEX outbox_record_seq ON outbox ((coalesce(producer_seq, seq))) WHERE seq IS NOT NULL;
