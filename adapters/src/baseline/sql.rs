//! The baselines' SQL, generic over the sqlx backend: one engine, one [`Dialect`] per backend.

use async_trait::async_trait;
use domain::idempotency::{RIDE_CHARGE_CENTS, RIDE_CHARGE_CURRENCY};
use domain::{StoredResponse, Thresholds};
use ports::{ChargeRequest, PaymentError, PaymentGateway, StoreError};
use serde_json::{Value, json};
use sqlx::types::Json;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::{Baseline, BaselineRide, Drained};

/// What differs between backends.
#[derive(Debug)]
pub(crate) struct Dialect {
    /// Starts a phase's transaction.
    pub(crate) begin: &'static str,
    /// Phase 1's read of the key by (user, key), locking it: columns of [`KeyRow`].
    pub(crate) key_by_text: &'static str,
    /// Phases 2-4's read of the key by id, locking it: its recovery point.
    pub(crate) point_by_id: &'static str,
    /// Drops the reference tables.
    pub(crate) drop: &'static [&'static str],
    /// Creates the reference tables.
    pub(crate) create: &'static [&'static str],
    /// Takes and deletes the oldest `$1` records of the store's outbox: columns of
    /// [`DrainedRow`].
    pub(crate) drain: &'static str,
}

/// The columns of the key that phase 1 decides on.
#[derive(Debug, FromRow)]
pub(crate) struct KeyRow {
    id: i64,
    request_params: Json<Value>,
    locked_at_ms: Option<i64>,
    recovery_point: String,
    response_code: Option<i32>,
}

/// One record taken from the outbox: every column a relay publishes.
#[derive(Debug, FromRow)]
pub(crate) struct DrainedRow {
    id: i64,
    record_id: String,
    stream: String,
    key: String,
    kind: String,
    payload: String,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    recorded_at_ms: i64,
}

impl DrainedRow {
    /// The bytes of its columns.
    fn bytes(&self) -> u64 {
        let optional = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        (size_of_val(&self.id)
            + size_of_val(&self.recorded_at_ms)
            + self.record_id.len()
            + self.stream.len()
            + self.key.len()
            + self.kind.len()
            + self.payload.len()
            + optional(&self.correlation_id)
            + optional(&self.causation_id)) as u64
    }
}

// The reference's statements, identical on both backends (`$n` placeholders work on both).
const INSERT_KEY: &str = "INSERT INTO baseline_idempotency_keys (user_id, idempotency_key, \
       created_at_ms, last_run_at_ms, locked_at_ms, request_method, request_path, \
       request_params, recovery_point) \
     VALUES ($1, $2, $3, $3, $3, 'POST', '/rides', $4, 'started') RETURNING id";
const RELOCK_KEY: &str = "UPDATE baseline_idempotency_keys SET last_run_at_ms = $2, \
     locked_at_ms = $2 WHERE id = $1";
const INSERT_RIDE: &str = "INSERT INTO baseline_rides (user_id, idempotency_key_id, origin_lat, \
       origin_lon, target_lat, target_lon, distance_mm, created_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id";
const INSERT_AUDIT: &str = "INSERT INTO baseline_audit_records (user_id, action, data, origin_ip, \
       resource_type, resource_id, created_at_ms) \
     VALUES ($1, 'ride.created', $2, $3, 'ride', $4, $5)";
const SET_POINT: &str = "UPDATE baseline_idempotency_keys SET recovery_point = $2 WHERE id = $1";
const RIDE_FOR_KEY: &str = "SELECT id FROM baseline_rides WHERE idempotency_key_id = $1";
const SET_CHARGE: &str = "UPDATE baseline_rides SET charge_id = $2 WHERE id = $1";
const STAGE_JOB: &str = "INSERT INTO baseline_staged_jobs (job_name, job_args) \
     VALUES ('send_ride_receipt', $1)";
const FINISH: &str = "UPDATE baseline_idempotency_keys SET locked_at_ms = NULL, \
     recovery_point = 'finished', response_code = $2, response_body = $3 WHERE id = $1";
const UNLOCK: &str = "UPDATE baseline_idempotency_keys SET locked_at_ms = NULL WHERE id = $1";

/// Why a request stopped early.
enum Failure {
    /// The driver failed (classified by the backend).
    Sql(sqlx::Error),
    /// The key is not where this phase expected it: a concurrent request moved it.
    Moved(String),
    /// The processor could not be reached (nothing was charged).
    Processor(String),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Self::Sql(e)
    }
}

/// Phase 1's outcome.
enum Begun {
    /// The key is ours, at this recovery point.
    Proceed(i64, String),
    /// Answered without running a phase (a stored response, a mismatch, a key in progress).
    Answer(u16),
}

/// The baselines of one SQL store.
pub(crate) struct SqlBaseline<DB: Database> {
    /// The pool every statement runs on (SQLite: the one writer connection).
    pub(crate) pool: Pool<DB>,
    /// The backend's statements.
    pub(crate) dialect: &'static Dialect,
    /// The store's description.
    pub(crate) describe: String,
    /// The backend's classification of driver errors.
    pub(crate) classify: fn(sqlx::Error) -> StoreError,
}

impl<DB> SqlBaseline<DB>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Type<DB>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
    (String,): for<'r> FromRow<'r, DB::Row>,
    KeyRow: for<'r> FromRow<'r, DB::Row>,
    DrainedRow: for<'r> FromRow<'r, DB::Row>,
{
    fn error(&self, f: Failure) -> StoreError {
        match f {
            Failure::Sql(e) => (self.classify)(e),
            Failure::Moved(m) => StoreError::Conflict(m),
            Failure::Processor(m) => StoreError::Unavailable(m),
        }
    }

    /// Runs `statements` one by one (DDL).
    async fn run_all(&self, statements: &[&'static str]) -> Result<(), StoreError> {
        for sql in statements {
            sqlx::query::<DB>(*sql)
                .execute(&self.pool)
                .await
                .map_err(self.classify)?;
        }
        Ok(())
    }

    /// Transaction 1: lock the key, or insert it at `started`.
    async fn begin(&self, r: &BaselineRide<'_>) -> Result<Begun, Failure> {
        let params = Json(r.params.to_json());
        let mut tx = self.pool.begin_with(self.dialect.begin).await?;
        let existing: Option<KeyRow> = sqlx::query_as(self.dialect.key_by_text)
            .bind(r.user_id)
            .bind(r.key)
            .fetch_optional(&mut *tx)
            .await?;
        let begun = match existing {
            None => {
                let (id,): (i64,) = sqlx::query_as(INSERT_KEY)
                    .bind(r.user_id)
                    .bind(r.key)
                    .bind(r.now_ms)
                    .bind(params)
                    .fetch_one(&mut *tx)
                    .await?;
                Begun::Proceed(id, "started".to_owned())
            }
            Some(k) if k.request_params != params => Begun::Answer(409),
            Some(k)
                if k.locked_at_ms
                    .is_some_and(|at| at > r.now_ms - Thresholds::default().lock_timeout_ms) =>
            {
                Begun::Answer(409)
            }
            Some(k) if k.recovery_point == "finished" => Begun::Answer(
                k.response_code
                    .map_or(500, |c| u16::try_from(c).unwrap_or(500)),
            ),
            Some(k) => {
                sqlx::query(RELOCK_KEY)
                    .bind(k.id)
                    .bind(r.now_ms)
                    .execute(&mut *tx)
                    .await?;
                Begun::Proceed(k.id, k.recovery_point)
            }
        };
        tx.commit().await?;
        Ok(begun)
    }

    /// Starts a phase of key `key_id`: a transaction holding the key, which must be at
    /// `expected`.
    async fn phase(
        &self,
        key_id: i64,
        expected: &str,
    ) -> Result<sqlx::Transaction<'static, DB>, Failure> {
        let mut tx = self.pool.begin_with(self.dialect.begin).await?;
        let (point,): (String,) = sqlx::query_as(self.dialect.point_by_id)
            .bind(key_id)
            .fetch_one(&mut *tx)
            .await?;
        if point != expected {
            return Err(Failure::Moved(format!(
                "idempotency key {key_id} is at {point}, not {expected}"
            )));
        }
        Ok(tx)
    }

    /// Transaction 2: the ride and its audit record; returns the ride's id.
    async fn create(&self, key_id: i64, r: &BaselineRide<'_>) -> Result<i64, Failure> {
        let mut tx = self.phase(key_id, "started").await?;
        let p = r.params;
        let distance = i64::try_from(p.distance_mm()).unwrap_or(i64::MAX);
        let (ride_id,): (i64,) = sqlx::query_as(INSERT_RIDE)
            .bind(r.user_id)
            .bind(key_id)
            .bind(p.origin_lat())
            .bind(p.origin_lon())
            .bind(p.target_lat())
            .bind(p.target_lon())
            .bind(distance)
            .bind(r.now_ms)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(INSERT_AUDIT)
            .bind(r.user_id)
            .bind(Json(p.to_json()))
            .bind(r.origin_ip)
            .bind(ride_id)
            .bind(r.now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query(SET_POINT)
            .bind(key_id)
            .bind("ride_created")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ride_id)
    }

    /// Transaction 3: the charge id on the ride.
    async fn charged(&self, key_id: i64, ride_id: i64, charge_id: &str) -> Result<(), Failure> {
        let mut tx = self.phase(key_id, "ride_created").await?;
        sqlx::query(SET_CHARGE)
            .bind(ride_id)
            .bind(charge_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(SET_POINT)
            .bind(key_id)
            .bind("charge_created")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The last transaction: optionally stage the receipt job, store the response, finish.
    async fn finish(
        &self,
        key_id: i64,
        expected: &str,
        job: Option<Value>,
        response: StoredResponse,
    ) -> Result<u16, Failure> {
        let mut tx = self.phase(key_id, expected).await?;
        if let Some(args) = job {
            sqlx::query(STAGE_JOB)
                .bind(Json(args))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(FINISH)
            .bind(key_id)
            .bind(i32::from(response.status))
            .bind(Json(response.body))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(response.status)
    }

    /// Runs the phases from `point` until the key is finished; returns the status.
    async fn drive(
        &self,
        key_id: i64,
        mut point: String,
        r: &BaselineRide<'_>,
        payments: &dyn PaymentGateway,
    ) -> Result<u16, Failure> {
        let mut ride_id = None;
        loop {
            match point.as_str() {
                "started" => {
                    ride_id = Some(self.create(key_id, r).await?);
                    point = "ride_created".to_owned();
                }
                "ride_created" => {
                    let ride = match ride_id {
                        Some(id) => id,
                        None => {
                            let (id,): (i64,) = sqlx::query_as(RIDE_FOR_KEY)
                                .bind(key_id)
                                .fetch_one(&self.pool)
                                .await?;
                            id
                        }
                    };
                    let charge = payments
                        .charge(&ChargeRequest {
                            idempotency_key: format!("rocket-rides-atomic-{key_id}"),
                            customer: r.email.to_owned(),
                            amount_cents: RIDE_CHARGE_CENTS,
                            currency: RIDE_CHARGE_CURRENCY.to_owned(),
                            description: format!("Charge for ride {ride}"),
                        })
                        .await;
                    match charge {
                        Ok(c) => {
                            self.charged(key_id, ride, &c.id).await?;
                            ride_id = Some(ride);
                            point = "charge_created".to_owned();
                        }
                        Err(PaymentError::CardDeclined(m)) => {
                            let declined = StoredResponse::card_declined(&m);
                            return self.finish(key_id, &point, None, declined).await;
                        }
                        Err(PaymentError::Processor(_)) => {
                            let failed = StoredResponse::processor_error();
                            return self.finish(key_id, &point, None, failed).await;
                        }
                        Err(e) => return Err(Failure::Processor(e.to_string())),
                    }
                }
                "charge_created" => {
                    let job = json!({
                        "amount": RIDE_CHARGE_CENTS,
                        "currency": RIDE_CHARGE_CURRENCY,
                        "user_id": r.user_id,
                    });
                    let created = StoredResponse::created();
                    return self.finish(key_id, &point, Some(job), created).await;
                }
                other => {
                    return Err(Failure::Moved(format!(
                        "idempotency key {key_id} is at {other}"
                    )));
                }
            }
        }
    }
}

// The same bounds as the inherent impl above: what the statements bind and read.
#[async_trait]
impl<DB> Baseline for SqlBaseline<DB>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Type<DB>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
    (String,): for<'r> FromRow<'r, DB::Row>,
    KeyRow: for<'r> FromRow<'r, DB::Row>,
    DrainedRow: for<'r> FromRow<'r, DB::Row>,
{
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn create_tables(&self) -> Result<(), StoreError> {
        self.run_all(self.dialect.create).await
    }

    async fn drop_tables(&self) -> Result<(), StoreError> {
        self.run_all(self.dialect.drop).await
    }

    async fn create_ride(
        &self,
        r: &BaselineRide<'_>,
        payments: &dyn PaymentGateway,
    ) -> Result<u16, StoreError> {
        let (key_id, point) = match self.begin(r).await {
            Ok(Begun::Proceed(id, point)) => (id, point),
            Ok(Begun::Answer(status)) => return Ok(status),
            // Nothing of ours to unlock yet (the reference's first phase has no key).
            Err(f) => {
                return match self.error(f) {
                    StoreError::Conflict(_) => Ok(409),
                    other => Err(other),
                };
            }
        };
        match self.drive(key_id, point, r, payments).await {
            Ok(status) => Ok(status),
            Err(f) => {
                // As the reference's `ensure`: unlock right away, errors swallowed.
                let _ = sqlx::query(UNLOCK).bind(key_id).execute(&self.pool).await;
                match self.error(f) {
                    StoreError::Conflict(_) => Ok(409),
                    other => Err(other),
                }
            }
        }
    }

    async fn drain_outbox(&self, max: usize) -> Result<Drained, StoreError> {
        let rows: Vec<DrainedRow> = sqlx::query_as(self.dialect.drain)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(self.classify)?;
        Ok(Drained {
            records: rows.len() as u64,
            bytes: rows.iter().map(DrainedRow::bytes).sum(),
        })
    }
}
