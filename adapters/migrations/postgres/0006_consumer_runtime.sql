-- The consumer runtime (ports::ConsumerStore): a typed cursor beside each checkpoint's state,
-- leases with fencing epochs, and per-consumer dead-letter lists.

-- The runtime-owned part of a checkpoint (ports::Cursor as JSON): the log it is on, a pending
-- seal, the duplicate marks and the duplicates count.
ALTER TABLE consumer_checkpoints ADD COLUMN cursor JSONB NOT NULL DEFAULT '{}'::jsonb;

-- Distance consumers written by older versions kept all of that inside their state. Copy it
-- into the cursor (absent or null fields are left out, so they take the cursor's defaults);
-- the state keeps its copy, which newer handlers ignore.
UPDATE consumer_checkpoints
SET cursor = jsonb_strip_nulls(jsonb_build_object(
        'log_url', state -> 'log_url',
        'sealed_to', state -> 'sealed_to',
        'marks', CASE WHEN state ? 'high_water' OR state ? 'floors' THEN
            jsonb_strip_nulls(jsonb_build_object(
                'high_water', state -> 'high_water',
                'floors', state -> 'floors'))
        END,
        'duplicates', state -> 'duplicates'))
WHERE jsonb_typeof(state) = 'object'
  AND state ?| ARRAY['log_url', 'sealed_to', 'high_water', 'floors', 'duplicates'];

-- One row per scope ever leased. A released or expired lease keeps its row, so that epochs
-- only ever grow.
CREATE TABLE consumer_leases (
    scope         TEXT PRIMARY KEY,
    holder        TEXT NOT NULL,
    epoch         BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

-- Dead letters: records a consumer's handler failed on, set aside in the consumer's save.
-- Ids are never reused, so an unpark can only drop what it read.
CREATE TABLE consumer_parked (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT NOT NULL,
    lane         BIGINT NOT NULL,
    record       JSONB NOT NULL,
    error        TEXT NOT NULL,
    parked_at_ms BIGINT NOT NULL
);
CREATE INDEX consumer_parked_by_name ON consumer_parked (name, id);
