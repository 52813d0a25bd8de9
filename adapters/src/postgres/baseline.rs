//! The baselines of `rides bench` on Postgres (see [`crate::baseline`]): the reference
//! design's tables with this store's column types, its phases at this store's isolation
//! (`READ COMMITTED`, key row `FOR UPDATE`), and the outbox drain.

use ports::StoreError;
use sqlx::Postgres;

use super::PgOptions;
use super::config::Target;
use super::error::PgError;
use crate::baseline::Baseline;
use crate::baseline::sql::{Dialect, SqlBaseline};

static DIALECT: Dialect = Dialect {
    begin: "BEGIN ISOLATION LEVEL READ COMMITTED",
    key_by_text: "SELECT id, request_params, locked_at_ms, recovery_point, response_code \
         FROM baseline_idempotency_keys WHERE user_id = $1 AND idempotency_key = $2 FOR UPDATE",
    point_by_id: "SELECT recovery_point FROM baseline_idempotency_keys WHERE id = $1 FOR UPDATE",
    drop: &[
        "DROP TABLE IF EXISTS baseline_staged_jobs, baseline_audit_records, \
         baseline_rides, baseline_idempotency_keys",
    ],
    // The store's migration 0001, table by table, with the reference's staged_jobs.
    create: &[
        "CREATE TABLE baseline_idempotency_keys (
            id              BIGSERIAL PRIMARY KEY,
            user_id         BIGINT NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
            idempotency_key TEXT NOT NULL CHECK (char_length(idempotency_key) <= 100),
            created_at_ms   BIGINT NOT NULL,
            last_run_at_ms  BIGINT NOT NULL,
            locked_at_ms    BIGINT NULL,
            request_method  TEXT NOT NULL CHECK (char_length(request_method) <= 10),
            request_path    TEXT NOT NULL CHECK (char_length(request_path) <= 100),
            request_params  JSONB NOT NULL,
            recovery_point  TEXT NOT NULL CHECK (char_length(recovery_point) <= 50),
            response_code   INT NULL,
            response_body   JSONB NULL,
            UNIQUE (user_id, idempotency_key)
        )",
        "CREATE TABLE baseline_rides (
            id                 BIGSERIAL PRIMARY KEY,
            user_id            BIGINT NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
            idempotency_key_id BIGINT NULL UNIQUE
                               REFERENCES baseline_idempotency_keys (id) ON DELETE SET NULL,
            origin_lat         DOUBLE PRECISION NOT NULL,
            origin_lon         DOUBLE PRECISION NOT NULL,
            target_lat         DOUBLE PRECISION NOT NULL,
            target_lon         DOUBLE PRECISION NOT NULL,
            distance_mm        BIGINT NOT NULL CHECK (distance_mm >= 0),
            charge_id          TEXT NULL UNIQUE CHECK (char_length(charge_id) <= 50),
            created_at_ms      BIGINT NOT NULL
        )",
        "CREATE INDEX baseline_rides_user_id ON baseline_rides (user_id, id DESC)",
        "CREATE TABLE baseline_audit_records (
            id            BIGSERIAL PRIMARY KEY,
            user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
            action        TEXT NOT NULL CHECK (char_length(action) <= 50),
            data          JSONB NOT NULL,
            origin_ip     TEXT NOT NULL,
            resource_type TEXT NOT NULL CHECK (char_length(resource_type) <= 50),
            resource_id   BIGINT NOT NULL,
            created_at_ms BIGINT NOT NULL
        )",
        "CREATE TABLE baseline_staged_jobs (
            id       BIGSERIAL PRIMARY KEY,
            job_name TEXT NOT NULL,
            job_args JSONB NOT NULL
        )",
    ],
    drain: "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT $1) \
         RETURNING id, record_id::text AS record_id, stream, key, kind, payload::text AS payload, \
           correlation_id::text AS correlation_id, causation_id::text AS causation_id, \
           recorded_at_ms",
};

fn classify(e: sqlx::Error) -> StoreError {
    PgError::from(e).into()
}

/// The baselines on the Postgres store at `url` (with the same options, hence the same
/// schema and pool size, as [`super::PostgresStore::connect`]). Connects lazily; creates
/// nothing until [`Baseline::create_tables`].
///
/// # Errors
/// [`StoreError::Other`] for a bad URL or schema name.
pub fn connect(url: &str, opts: &PgOptions) -> Result<Box<dyn Baseline>, StoreError> {
    let target = Target::new(url, opts)?;
    Ok(Box::new(SqlBaseline::<Postgres> {
        pool: target.pool(opts),
        dialect: &DIALECT,
        describe: target.describe,
        classify,
    }))
}
