-- The consumer runtime (ports::ConsumerStore): a typed cursor beside each checkpoint's state,
-- leases with fencing epochs, and per-consumer dead-letter lists.

-- The runtime-owned part of a checkpoint (ports::Cursor as JSON): the log it is on, a pending
-- seal, the duplicate marks and the duplicates count.
ALTER TABLE consumer_checkpoints ADD COLUMN cursor TEXT NOT NULL DEFAULT '{}'; -- JSON

-- Distance consumers written by older versions kept all of that inside their state. Copy it
-- into the cursor; the state keeps its copy, which newer handlers ignore. `json_patch` onto
-- '{}' leaves out absent and null fields (a merge patch deletes what it sets to null), so
-- they take the cursor's defaults.
UPDATE consumer_checkpoints
SET cursor = json_patch('{}', json_object(
        'log_url', state -> '$.log_url',
        'sealed_to', state -> '$.sealed_to',
        'duplicates', state -> '$.duplicates'))
WHERE CASE WHEN json_valid(state) THEN json_type(state) = 'object' ELSE 0 END
  AND (state -> '$.log_url' IS NOT NULL OR state -> '$.sealed_to' IS NOT NULL
       OR state -> '$.high_water' IS NOT NULL OR state -> '$.floors' IS NOT NULL
       OR state -> '$.duplicates' IS NOT NULL);

UPDATE consumer_checkpoints
SET cursor = json_set(cursor, '$.marks', json_patch('{}', json_object(
        'high_water', state -> '$.high_water',
        'floors', state -> '$.floors')))
WHERE CASE WHEN json_valid(state) THEN json_type(state) = 'object' ELSE 0 END
  AND (state -> '$.high_water' IS NOT NULL OR state -> '$.floors' IS NOT NULL);

-- One row per scope ever leased. A released or expired lease keeps its row, so that epochs
-- only ever grow.
CREATE TABLE consumer_leases (
    scope         TEXT    PRIMARY KEY,
    holder        TEXT    NOT NULL,
    epoch         INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);

-- Dead letters: records a consumer's handler failed on, set aside in the consumer's save.
-- AUTOINCREMENT: ids are never reused, so an unpark can only drop what it read.
CREATE TABLE consumer_parked (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL,
    lane         INTEGER NOT NULL,
    record       TEXT    NOT NULL, -- JSON (domain::LogRecord)
    error        TEXT    NOT NULL,
    parked_at_ms INTEGER NOT NULL
);
CREATE INDEX consumer_parked_by_name ON consumer_parked (name, id);
