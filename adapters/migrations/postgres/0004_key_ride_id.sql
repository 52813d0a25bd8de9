-- The ride a key created, set by the commit that creates it, so that the charge's commit
-- needs no lookup of the ride by key. NULL on keys written before (their ride is found by
-- rides.idempotency_key_id).
ALTER TABLE idempotency_keys ADD COLUMN ride_id BIGINT NULL;
