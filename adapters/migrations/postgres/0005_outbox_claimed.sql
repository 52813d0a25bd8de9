-- Sequencing for the relay without a write per record.
--
-- The row sequencer (`outbox_sequence`, 0002/0003) numbers committed staged rows in place, one
-- UPDATE per row, and the streamer then DELETEs each row once the log took it: two writes per
-- record. The claim sequencer below numbers a whole batch with ONE row instead: under the same
-- advisory lock and from the same counter, it deletes up to `batch` committed unsequenced rows
-- (in id order) and inserts them as one `outbox_claimed` row, each element carrying its seq.
-- The streamer's `peek` calls it; the Postgres-only log's readers keep the row sequencer.
--
-- A sequenced record is therefore either an `outbox` row with a seq or an element of an
-- `outbox_claimed` row. Both draw seqs from `outbox_counter` under the one advisory lock, so
-- seqs stay unique, gap-free and commit-ordered, and every reader (peek, the Postgres-only
-- log's read, lag, trim, len) reads the union. Claimed batches are short-lived: the streamer
-- removes their elements once the log accepted them (an emptied batch row is deleted).

CREATE TYPE outbox_record AS (
    id             BIGINT,
    seq            BIGINT,
    producer       TEXT,
    producer_seq   BIGINT,
    record_id      UUID,
    stream         TEXT,
    key            TEXT,
    kind           TEXT,
    payload        JSONB,
    correlation_id UUID,
    causation_id   UUID,
    recorded_at_ms BIGINT
);

CREATE TABLE outbox_claimed (
    first_seq BIGINT PRIMARY KEY,
    last_seq  BIGINT NOT NULL,
    -- Whether the batch is still whole (first_seq..last_seq, every element present) and holds
    -- only this store's own records (none appended from another store's outbox): then a
    -- `remove` naming all its seqs deletes it without reading the array.
    whole     BOOLEAN NOT NULL,
    records   outbox_record[] NOT NULL
);
-- Claimed batches live for one relay round trip: compressing them costs more than it saves.
ALTER TABLE outbox_claimed ALTER COLUMN records SET STORAGE EXTERNAL;

-- Returns how many records it sequenced: 0 when nothing is unsequenced, when another
-- sequencer (row or claim) holds the lock (it is doing the work), or when claimed batches
-- above `after_seq` (and above the streamer's route) already hold `batch` records that are
-- not removed yet, so a streamer whose log is down does not claim the whole outbox, one
-- batch per retry. Called as one statement, so it is its own transaction and the lock is
-- held until its commit, like `outbox_sequence`.
CREATE FUNCTION outbox_claim(batch BIGINT, after_seq BIGINT) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    taken outbox_record[];
    n     BIGINT;
    first BIGINT;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM outbox WHERE seq IS NULL) THEN
        RETURN 0;
    END IF;
    IF (SELECT coalesce(sum(cardinality(records)), 0) FROM outbox_claimed
        WHERE last_seq > greatest(after_seq, coalesce(
            (SELECT (value::jsonb ->> 'after_seq')::bigint FROM meta WHERE name = 'route'), 0)))
       >= batch THEN
        RETURN 0;
    END IF;
    IF NOT pg_try_advisory_xact_lock(1380533317, hashtext(current_schema())) THEN
        RETURN 0;
    END IF;
    WITH picked AS (
        SELECT id FROM outbox WHERE seq IS NULL ORDER BY id LIMIT batch
    ), gone AS (
        DELETE FROM outbox o USING picked p WHERE o.id = p.id RETURNING o.*
    )
    SELECT array_agg(ROW(g.*)::outbox_record ORDER BY g.id) INTO taken FROM gone g;
    n := coalesce(cardinality(taken), 0);
    IF n = 0 THEN
        RETURN 0;
    END IF;
    UPDATE outbox_counter SET next_seq = next_seq + n RETURNING next_seq - n INTO first;
    INSERT INTO outbox_claimed (first_seq, last_seq, whole, records)
    SELECT first, first + n - 1, bool_and(t.producer_seq IS NULL),
           array_agg(ROW(t.id, first + t.ord - 1, t.producer, t.producer_seq, t.record_id,
                         t.stream, t.key, t.kind, t.payload, t.correlation_id, t.causation_id,
                         t.recorded_at_ms)::outbox_record ORDER BY t.ord)
    FROM unnest(taken) WITH ORDINALITY
        AS t(id, seq, producer, producer_seq, record_id, stream, key, kind, payload,
             correlation_id, causation_id, recorded_at_ms, ord);
    RETURN n;
END
$$;
