-- The sequencer as one server-side function, so a sequencer run costs one round trip instead
-- of seven (check, BEGIN, advisory lock, select, counter, update, NOTIFY, COMMIT). The logic
-- is the one the adapter ran statement by statement before (see adapters/src/postgres/mod.rs):
--
-- 1. nothing unsequenced → return 0 without taking the lock;
-- 2. another sequencer holds the transaction-scoped advisory lock → return 0 (it will do it);
-- 3. lock up to `batch` committed unsequenced rows in id order, give them consecutive seqs
--    from the one-row counter, notify `channel`, return how many.
--
-- Called as a single statement outside any transaction, the function runs in its own
-- transaction: the advisory lock is held until that commit, so the whole range becomes
-- visible atomically, after every earlier range. The function is VOLATILE, so at READ
-- COMMITTED every statement inside takes a fresh snapshot: the row selection happens after
-- the lock is taken and sees every earlier sequencer run's commit.
-- Names are unqualified: they resolve through the caller's search_path, i.e. the store's
-- schema, like every other statement of the adapter.
CREATE FUNCTION outbox_sequence(batch BIGINT, channel TEXT) RETURNS BIGINT
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
    FROM (SELECT id FROM outbox WHERE seq IS NULL ORDER BY id LIMIT batch FOR UPDATE) AS u;
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
