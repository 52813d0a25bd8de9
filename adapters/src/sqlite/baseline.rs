//! The baselines of `rides bench` on SQLite (see [`crate::baseline`]): the reference design's
//! tables next to the store's in the same file, its phases as `BEGIN IMMEDIATE` transactions
//! on one writer connection (as the store writes), and the outbox drain.

use std::str::FromStr;

use ports::StoreError;
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::BUSY_TIMEOUT;
use super::error::Error;
use crate::baseline::Baseline;
use crate::baseline::sql::{Dialect, SqlBaseline};

static DIALECT: Dialect = Dialect {
    begin: "BEGIN IMMEDIATE",
    // One writer at a time: the transaction itself is the lock.
    key_by_text: "SELECT id, request_params, locked_at_ms, recovery_point, response_code \
         FROM baseline_idempotency_keys WHERE user_id = $1 AND idempotency_key = $2",
    point_by_id: "SELECT recovery_point FROM baseline_idempotency_keys WHERE id = $1",
    drop: &[
        "DROP TABLE IF EXISTS baseline_staged_jobs",
        "DROP TABLE IF EXISTS baseline_audit_records",
        "DROP TABLE IF EXISTS baseline_rides",
        "DROP TABLE IF EXISTS baseline_idempotency_keys",
    ],
    // The store's migration, table by table, with the reference's staged_jobs.
    create: &[
        "CREATE TABLE baseline_idempotency_keys (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id         INTEGER NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
            idempotency_key TEXT    NOT NULL,
            created_at_ms   INTEGER NOT NULL,
            last_run_at_ms  INTEGER NOT NULL,
            locked_at_ms    INTEGER,
            request_method  TEXT    NOT NULL,
            request_path    TEXT    NOT NULL,
            request_params  TEXT    NOT NULL,
            recovery_point  TEXT    NOT NULL CHECK (recovery_point IN
                                ('started', 'ride_created', 'charge_created', 'finished')),
            response_code   INTEGER,
            response_body   TEXT,
            UNIQUE (user_id, idempotency_key)
        )",
        "CREATE INDEX baseline_idempotency_keys_created_at
            ON baseline_idempotency_keys (created_at_ms)",
        "CREATE TABLE baseline_rides (
            id                 INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id            INTEGER NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
            idempotency_key_id INTEGER UNIQUE
                               REFERENCES baseline_idempotency_keys (id) ON DELETE SET NULL,
            origin_lat         REAL    NOT NULL,
            origin_lon         REAL    NOT NULL,
            target_lat         REAL    NOT NULL,
            target_lon         REAL    NOT NULL,
            distance_mm        INTEGER NOT NULL CHECK (distance_mm >= 0),
            charge_id          TEXT UNIQUE,
            created_at_ms      INTEGER NOT NULL
        )",
        "CREATE INDEX baseline_rides_user_id ON baseline_rides (user_id, id)",
        "CREATE TABLE baseline_audit_records (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
            action        TEXT    NOT NULL,
            data          TEXT    NOT NULL,
            origin_ip     TEXT    NOT NULL,
            resource_type TEXT    NOT NULL,
            resource_id   INTEGER NOT NULL,
            created_at_ms INTEGER NOT NULL
        )",
        "CREATE TABLE baseline_staged_jobs (
            id       INTEGER PRIMARY KEY AUTOINCREMENT,
            job_name TEXT NOT NULL,
            job_args TEXT NOT NULL
        )",
    ],
    drain: "DELETE FROM staged_records WHERE seq IN \
           (SELECT seq FROM staged_records ORDER BY seq LIMIT $1) \
         RETURNING seq AS id, id AS record_id, stream, key, kind, payload, correlation_id, \
           causation_id, recorded_at_ms",
};

fn classify(e: sqlx::Error) -> StoreError {
    Error::from(e).into()
}

/// The baselines on the SQLite store at `url` (`sqlite://PATH` of a file: an in-memory
/// database cannot be shared with a second pool), through one writer connection opened with
/// the store's settings (WAL, `synchronous = NORMAL`, busy timeout, foreign keys). Creates
/// nothing until [`Baseline::create_tables`].
///
/// # Errors
/// [`StoreError::Other`] for an in-memory or malformed URL; [`StoreError::Unavailable`]
/// when the file cannot be opened.
pub async fn connect(url: &str) -> Result<Box<dyn Baseline>, StoreError> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Err(StoreError::Other(
            "the SQLite baseline needs a database file, not an in-memory database".to_owned(),
        ));
    }
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Other(format!("bad SQLite URL {url:?}: {e}")))?
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        .synchronous(SqliteSynchronous::Normal)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(classify)?;
    Ok(Box::new(SqlBaseline::<Sqlite> {
        pool,
        dialect: &DIALECT,
        describe: url.to_owned(),
        classify,
    }))
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use domain::{RecordDraft, RideEvent, RideParams};
    use ports::{Charge, ChargeRequest, Outbox, PaymentError, PaymentGateway};

    use super::*;
    use crate::baseline::BaselineRide;
    use crate::sqlite::SqliteStore;

    /// Charges every request, or declines every request.
    struct Processor {
        decline: bool,
    }

    #[async_trait]
    impl PaymentGateway for Processor {
        async fn charge(&self, req: &ChargeRequest) -> Result<Charge, PaymentError> {
            if self.decline {
                return Err(PaymentError::CardDeclined("Your card was declined.".into()));
            }
            Ok(Charge {
                id: format!("ch_{}", req.idempotency_key),
                amount_cents: req.amount_cents,
            })
        }
    }

    async fn count(pool: &sqlx::SqlitePool, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
    }

    #[tokio::test]
    async fn the_reference_design_runs_four_phases_and_replays_finished_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("rides.db").display());
        let _store = SqliteStore::connect(&url).await.expect("store");
        let baseline = connect(&url).await.expect("baseline");
        baseline.create_tables().await.expect("create");
        let params = RideParams::new(48.85, 2.35, 48.80, 2.30).expect("params");
        let ride = |key| BaselineRide {
            user_id: 1,
            email: "user@example.com",
            key,
            params: &params,
            origin_ip: "127.0.0.1",
            now_ms: 1_000,
        };
        let ok = Processor { decline: false };
        let key = "baseline-key-0000000001";
        assert_eq!(baseline.create_ride(&ride(key), &ok).await, Ok(201));
        assert_eq!(baseline.create_ride(&ride(key), &ok).await, Ok(201));
        let other = RideParams::new(1.0, 1.0, 1.0, 1.0).expect("params");
        let mismatch = BaselineRide {
            params: &other,
            ..ride(key)
        };
        assert_eq!(baseline.create_ride(&mismatch, &ok).await, Ok(409));
        let declined = Processor { decline: true };
        let key2 = "baseline-key-0000000002";
        assert_eq!(baseline.create_ride(&ride(key2), &declined).await, Ok(402));

        let pool = sqlx::SqlitePool::connect(&url).await.expect("pool");
        assert_eq!(count(&pool, "SELECT count(*) FROM baseline_rides").await, 2);
        assert_eq!(
            count(
                &pool,
                "SELECT count(*) FROM baseline_rides WHERE charge_id IS NOT NULL"
            )
            .await,
            1
        );
        assert_eq!(
            count(&pool, "SELECT count(*) FROM baseline_audit_records").await,
            2
        );
        assert_eq!(
            count(&pool, "SELECT count(*) FROM baseline_staged_jobs").await,
            1
        );
        assert_eq!(
            count(
                &pool,
                "SELECT count(*) FROM baseline_idempotency_keys \
                 WHERE recovery_point = 'finished' AND locked_at_ms IS NULL"
            )
            .await,
            2
        );
        baseline.drop_tables().await.expect("drop");
        assert_eq!(
            count(
                &pool,
                "SELECT count(*) FROM sqlite_master WHERE name LIKE 'baseline_%'"
            )
            .await,
            0
        );
    }

    #[tokio::test]
    async fn the_drain_takes_and_deletes_the_oldest_records_in_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("rides.db").display());
        let store = SqliteStore::connect(&url).await.expect("store");
        let records: Vec<_> = (1..=2_500)
            .map(|i| {
                let event = RideEvent::Requested {
                    user_id: 1,
                    distance_mm: i,
                };
                RecordDraft::from_event(&event, None).build(i as i64, 0)
            })
            .collect();
        for chunk in records.chunks(1000) {
            store.stage(chunk).await.expect("stage");
        }
        let baseline = connect(&url).await.expect("baseline");
        let mut taken = Vec::new();
        loop {
            let d = baseline.drain_outbox(1000).await.expect("drain");
            if d.records == 0 {
                break;
            }
            assert!(d.bytes > 0);
            taken.push(d.records);
        }
        assert_eq!(taken, vec![1000, 1000, 500]);
        assert_eq!(store.staged().await.expect("staged"), 0);
    }

    #[tokio::test]
    async fn an_in_memory_database_has_no_baseline() {
        assert!(connect("sqlite::memory:").await.is_err());
    }
}
