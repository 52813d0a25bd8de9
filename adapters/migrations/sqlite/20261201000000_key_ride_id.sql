-- The ride a key created, set by the commit that creates it, so that the charge's commit
-- needs no lookup of the ride by key. NULL on keys written before (their ride is found by
-- rides.idempotency_key_id).
ALTER TABLE idempotency_keys ADD COLUMN ride_id INTEGER;

-- Set with the ride, inside the ride's INSERT: one statement less on the single writer for
-- every new ride (the phase engine asks `PhaseTx::ride_id_set_by_store`).
CREATE TRIGGER rides_set_key_ride_id AFTER INSERT ON rides
WHEN NEW.idempotency_key_id IS NOT NULL
BEGIN
    UPDATE idempotency_keys SET ride_id = NEW.id WHERE id = NEW.idempotency_key_id;
END;
