-- `Outbox::remove` deletes by the sequence `peek` handed out: `seq` for this store's own
-- records, `producer_seq` for a record appended from another store (it keeps its producer's
-- sequence). `seq` has its unique index; this partial index covers the appended records
-- only, so the sequencer's update of this store's own rows (producer_seq NULL) never writes
-- to it. (An index on `coalesce(producer_seq, seq)` would make every sequencer run write a
-- second index entry per row: it doubled the sequencer's cost.)
CREATE INDEX outbox_producer_seq ON outbox (producer_seq) WHERE producer_seq IS NOT NULL;

-- The sequencer without `FOR UPDATE` on the rows it numbers: the advisory lock already
-- makes it the only writer of unsequenced rows (phases only insert, and every delete —
-- `remove`, the trimmer — touches sequenced rows only), and locking each row before
-- updating it wrote every tuple twice. Otherwise as in 0002.
CREATE OR REPLACE FUNCTION outbox_sequence(batch BIGINT, channel TEXT) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    ids   BIGINT[];
    n     BIGINT;
    first BIGINT;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM outbox WHERE seq IS NULL) THEN
        RETURN 0;
    END IF;
    IF NOT pg_try_advisory_xact_lock(1380533317, hashtext(current_schema())) THEN
        RETURN 0;
    END IF;
    SELECT array_agg(u.id ORDER BY u.id) INTO ids
    FROM (SELECT id FROM outbox WHERE seq IS NULL ORDER BY id LIMIT batch) AS u;
    n := coalesce(array_length(ids, 1), 0);
    IF n = 0 THEN
        RETURN 0;
    END IF;
    UPDATE outbox_counter SET next_seq = next_seq + n RETURNING next_seq - n INTO first;
    UPDATE outbox o SET seq = first + a.ord - 1
    FROM unnest(ids) WITH ORDINALITY AS a(id, ord) WHERE o.id = a.id;
    PERFORM pg_notify(channel, '');
    RETURN n;
END
$$;
