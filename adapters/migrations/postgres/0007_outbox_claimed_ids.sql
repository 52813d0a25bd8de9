-- Claimed batches name their rows instead of holding copies of them.
--
-- 0005 moved a claimed batch's rows into one `outbox_claimed` row (an `outbox_record[]` of
-- about 300 KB per 1000 records, written as ~150 TOAST chunks): the claim cost more than the
-- per-row UPDATE it replaced. Here the rows stay in `outbox`, unsequenced (`seq` NULL), and a
-- claimed batch is ONE small row listing their ids in order: the element at ordinality k has
-- seq `first_seq + k - 1`. The claim writes nothing per record, the streamer's read joins the
-- ids to their rows, and `remove` deletes the rows by id (the one write per record that any
-- relay needs) and the batch row once `remaining` reaches 0.
--
-- An outbox row is therefore: unsequenced (seq NULL, id in no batch), sequenced in place by
-- the row sequencer (seq set), or claimed (seq NULL, id in exactly one batch). Both
-- sequencers take only unsequenced unclaimed rows, under the one advisory lock and from the
-- one counter, so seqs stay unique, gap-free and commit-ordered.
--
-- `foreign` marks a batch that holds records appended from another store's outbox: `remove`
-- matches those by their producer seq, which can lie outside `first_seq..last_seq`.

-- Batches claimed by 0005 become row-sequenced rows with the same seqs.
INSERT INTO outbox (id, seq, producer, producer_seq, record_id, stream, key, kind, payload,
                    correlation_id, causation_id, recorded_at_ms)
SELECT r.id, r.seq, r.producer, r.producer_seq, r.record_id, r.stream, r.key, r.kind,
       r.payload, r.correlation_id, r.causation_id, r.recorded_at_ms
FROM outbox_claimed c, unnest(c.records) r;
DELETE FROM outbox_claimed;

DROP FUNCTION outbox_claim(BIGINT, BIGINT);
ALTER TABLE outbox_claimed
    DROP COLUMN records,
    DROP COLUMN whole,
    ADD COLUMN ids BIGINT[] NOT NULL,
    ADD COLUMN remaining BIGINT NOT NULL,
    ADD COLUMN "foreign" BOOLEAN NOT NULL;
ALTER TABLE outbox_claimed ALTER COLUMN ids SET STORAGE PLAIN;
DROP TYPE outbox_record;

-- The row sequencer of 0003, skipping claimed rows.
CREATE OR REPLACE FUNCTION outbox_sequence(batch BIGINT, channel TEXT) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    ids   BIGINT[];
    n     BIGINT;
    first BIGINT;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM outbox WHERE seq IS NULL
                   AND id NOT IN (SELECT unnest(c.ids) FROM outbox_claimed c)) THEN
        RETURN 0;
    END IF;
    IF NOT pg_try_advisory_xact_lock(1380533317, hashtext(current_schema())) THEN
        RETURN 0;
    END IF;
    SELECT array_agg(u.id ORDER BY u.id) INTO ids
    FROM (SELECT id FROM outbox WHERE seq IS NULL
          AND id NOT IN (SELECT unnest(c.ids) FROM outbox_claimed c)
          ORDER BY id LIMIT batch) AS u;
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

-- Returns how many records it sequenced: 0 when nothing is unsequenced, when another
-- sequencer holds the lock (it is doing the work), or when claimed batches above `after_seq`
-- (and above the streamer's route) still hold `batch` records that are not removed, so a
-- streamer whose log is down does not claim the whole outbox, one batch per retry. One
-- statement, so its own transaction: the lock is held until its commit.
CREATE FUNCTION outbox_claim(batch BIGINT, after_seq BIGINT) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    taken BIGINT[];
    frn   BOOLEAN;
    n     BIGINT;
    first BIGINT;
BEGIN
    IF (SELECT coalesce(sum(remaining), 0) FROM outbox_claimed
        WHERE last_seq > greatest(after_seq, coalesce(
            (SELECT (value::jsonb ->> 'after_seq')::bigint FROM meta WHERE name = 'route'), 0)))
       >= batch THEN
        RETURN 0;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM outbox WHERE seq IS NULL
                   AND id NOT IN (SELECT unnest(c.ids) FROM outbox_claimed c)) THEN
        RETURN 0;
    END IF;
    IF NOT pg_try_advisory_xact_lock(1380533317, hashtext(current_schema())) THEN
        RETURN 0;
    END IF;
    SELECT array_agg(u.id ORDER BY u.id), coalesce(bool_or(u.producer_seq IS NOT NULL), false)
    INTO taken, frn
    FROM (SELECT id, producer_seq FROM outbox WHERE seq IS NULL
          AND id NOT IN (SELECT unnest(c.ids) FROM outbox_claimed c)
          ORDER BY id LIMIT batch) AS u;
    n := coalesce(cardinality(taken), 0);
    IF n = 0 THEN
        RETURN 0;
    END IF;
    UPDATE outbox_counter SET next_seq = next_seq + n RETURNING next_seq - n INTO first;
    INSERT INTO outbox_claimed (first_seq, last_seq, ids, remaining, "foreign")
    VALUES (first, first + n - 1, taken, n, frn);
    RETURN n;
END
$$;
