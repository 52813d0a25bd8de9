//! The canonical store: users, idempotency keys, rides, audit records, and phases.
//!
//! `begin` and `run_phase` are atomic phases: each is one `READ COMMITTED` transaction that
//! first locks its idempotency key row (`SELECT … FOR UPDATE`) and decides only on that row;
//! everything else it does is a write guarded by a unique constraint. Two requests racing on
//! one key are serialized by the row lock, and the loser sees the winner's committed key:
//! `begin` answers `InProgress` (or [`StoreError::Conflict`] when both tried to create the
//! key: unique violation), `run_phase` answers `Conflict` because the key is no longer at
//! `expected`. Requests with different keys never wait for each other. See the "Isolation"
//! section of the module docs for why this is as safe as `SERIALIZABLE` here.

use async_trait::async_trait;
use domain::{
    KeyDecision, KeyRecord, KeyTransition, Phase, RecoveryPoint, RideParams, RideWrite,
    StoredResponse, Thresholds,
};
use ports::{BeginRequest, Begun, RideRow, RideStore, StoreError, Truth, User};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, Row, Transaction};

use super::PostgresStore;
use super::error::PgError;
use super::outbox::stage;

/// Columns of `idempotency_keys AS k`, in the order [`key_from_row`] reads them.
const KEY_COLUMNS: &str = "k.id, k.user_id, k.idempotency_key, k.created_at_ms, \
     k.last_run_at_ms, k.locked_at_ms, k.request_method, k.request_path, k.request_params, \
     k.recovery_point, k.response_code, k.response_body";

/// Columns of `rides`.
const RIDE_COLUMNS: &str = "id, user_id, idempotency_key_id, origin_lat, origin_lon, \
     target_lat, target_lon, distance_mm, charge_id, created_at_ms";

fn key_from_row(row: &PgRow) -> Result<KeyRecord, PgError> {
    let params: serde_json::Value = row.try_get("request_params")?;
    let rp: String = row.try_get("recovery_point")?;
    let code: Option<i32> = row.try_get("response_code")?;
    let body: Option<serde_json::Value> = row.try_get("response_body")?;
    let response = match code {
        Some(code) => Some(StoredResponse {
            status: u16::try_from(code)
                .map_err(|_| PgError::Other(format!("bad response code {code}")))?,
            body: body.unwrap_or(serde_json::Value::Null),
        }),
        None => None,
    };
    Ok(KeyRecord {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        key: row.try_get("idempotency_key")?,
        created_at_ms: row.try_get("created_at_ms")?,
        last_run_at_ms: row.try_get("last_run_at_ms")?,
        locked_at_ms: row.try_get("locked_at_ms")?,
        request_method: row.try_get("request_method")?,
        request_path: row.try_get("request_path")?,
        request_params: serde_json::from_value::<RideParams>(params)?,
        recovery_point: RecoveryPoint::parse(&rp).map_err(PgError::Other)?,
        response,
    })
}

fn ride_from_row(row: &PgRow) -> Result<RideRow, PgError> {
    let coord = |name: &str| row.try_get::<f64, _>(name);
    let params = RideParams::new(
        coord("origin_lat")?,
        coord("origin_lon")?,
        coord("target_lat")?,
        coord("target_lon")?,
    )
    .map_err(|e| PgError::Other(format!("bad ride coordinates in the database: {e}")))?;
    let distance: i64 = row.try_get("distance_mm")?;
    Ok(RideRow {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        idempotency_key_id: row.try_get("idempotency_key_id")?,
        params,
        distance_mm: u64::try_from(distance).unwrap_or_default(),
        charge_id: row.try_get("charge_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

fn user_from_row(row: &PgRow) -> Result<User, PgError> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
    })
}

fn to_i64(v: u64, what: &str) -> Result<i64, PgError> {
    i64::try_from(v).map_err(|_| PgError::Other(format!("{what} out of range: {v}")))
}

/// The key `key_id`, locked until the end of the transaction.
async fn lock_key_by_id(
    conn: &mut PgConnection,
    key_id: i64,
) -> Result<Option<KeyRecord>, PgError> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM idempotency_keys k WHERE k.id = $1 FOR UPDATE");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(key_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(key_from_row).transpose()
}

impl PostgresStore {
    /// Starts an atomic phase: a `READ COMMITTED` transaction (named explicitly, so a server
    /// whose `default_transaction_isolation` differs changes nothing). Its first statement
    /// must lock the key row.
    async fn phase_tx(&self) -> Result<Transaction<'static, Postgres>, PgError> {
        Ok(self
            .inner
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?)
    }

    async fn begin_inner(&self, req: &BeginRequest) -> Result<Begun, PgError> {
        let mut tx = self.phase_tx().await?;
        // Locked: a concurrent begin or phase on this key waits here, then reads its commit.
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM idempotency_keys k \
             WHERE k.user_id = $1 AND k.idempotency_key = $2 FOR UPDATE"
        );
        let existing = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(req.user_id)
            .bind(req.key.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(key_from_row)
            .transpose()?;
        let decision =
            KeyRecord::decide(existing.as_ref(), &req.params, req.now_ms, &req.thresholds);
        let begun = match (decision, existing) {
            (KeyDecision::Create, _) => {
                let sql = format!(
                    "INSERT INTO idempotency_keys AS k (user_id, idempotency_key, created_at_ms, \
                       last_run_at_ms, locked_at_ms, request_method, request_path, \
                       request_params, recovery_point) \
                     VALUES ($1, $2, $3, $3, $3, $4, $5, $6, 'started') RETURNING {KEY_COLUMNS}"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(req.user_id)
                    .bind(req.key.as_str())
                    .bind(req.now_ms)
                    .bind(&req.method)
                    .bind(&req.path)
                    .bind(req.params.to_json())
                    .fetch_one(&mut *tx)
                    .await?;
                Begun::Proceed(key_from_row(&row)?)
            }
            (KeyDecision::Resume, Some(key)) => {
                let sql = format!(
                    "UPDATE idempotency_keys AS k SET last_run_at_ms = $2, locked_at_ms = $2 \
                     WHERE k.id = $1 RETURNING {KEY_COLUMNS}"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(key.id)
                    .bind(req.now_ms)
                    .fetch_one(&mut *tx)
                    .await?;
                Begun::Proceed(key_from_row(&row)?)
            }
            (KeyDecision::Resume, None) => {
                return Err(PgError::Other("resume decided without a key".to_owned()));
            }
            (KeyDecision::Replay(r), _) => Begun::Replay(r),
            (KeyDecision::Mismatch, _) => Begun::Mismatch,
            (KeyDecision::InProgress, _) => Begun::InProgress,
        };
        tx.commit().await?;
        Ok(begun)
    }

    async fn run_phase_inner(
        &self,
        key_id: i64,
        expected: RecoveryPoint,
        phase: &Phase,
        now_ms: i64,
    ) -> Result<KeyRecord, PgError> {
        let mut tx = self.phase_tx().await?;
        let key = lock_key_by_id(&mut tx, key_id)
            .await?
            .ok_or_else(|| PgError::NotFound(format!("idempotency key {key_id}")))?;
        if key.recovery_point != expected {
            return Err(PgError::Conflict(format!(
                "idempotency key {key_id} is at {}, not {}",
                key.recovery_point.as_str(),
                expected.as_str()
            )));
        }
        let ride_id = match &phase.ride {
            RideWrite::Insert {
                user_id,
                params,
                distance_mm,
            } => {
                sqlx::query_scalar(
                    "INSERT INTO rides (user_id, idempotency_key_id, origin_lat, origin_lon, \
                       target_lat, target_lon, distance_mm, created_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                )
                .bind(user_id)
                .bind(key_id)
                .bind(params.origin_lat())
                .bind(params.origin_lon())
                .bind(params.target_lat())
                .bind(params.target_lon())
                .bind(to_i64(*distance_mm, "distance")?)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await?
            }
            RideWrite::SetCharge { ride_id, charge_id } => {
                let done = sqlx::query("UPDATE rides SET charge_id = $2 WHERE id = $1")
                    .bind(ride_id)
                    .bind(charge_id)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(PgError::NotFound(format!("ride {ride_id}")));
                }
                *ride_id
            }
            RideWrite::Existing(ride_id) => *ride_id,
        };
        if let Some(audit) = &phase.audit {
            sqlx::query(
                "INSERT INTO audit_records (user_id, action, data, origin_ip, resource_type, \
                   resource_id, created_at_ms) VALUES ($1, $2, $3, $4, 'ride', $5, $6)",
            )
            .bind(key.user_id)
            .bind(&audit.action)
            .bind(&audit.data)
            .bind(&audit.origin_ip)
            .bind(ride_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        let records: Vec<_> = phase
            .records
            .iter()
            .map(|d| d.build(ride_id, now_ms))
            .collect();
        stage(&mut tx, self.inner.wake.channel(), &records).await?;
        let sql = match &phase.then {
            KeyTransition::To(_) => format!(
                "UPDATE idempotency_keys AS k SET recovery_point = $2 \
                 WHERE k.id = $1 RETURNING {KEY_COLUMNS}"
            ),
            KeyTransition::Finish(_) => format!(
                "UPDATE idempotency_keys AS k SET recovery_point = $2, locked_at_ms = NULL, \
                   response_code = $3, response_body = $4 \
                 WHERE k.id = $1 RETURNING {KEY_COLUMNS}"
            ),
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(key_id);
        q = match &phase.then {
            KeyTransition::To(rp) => q.bind(rp.as_str()),
            KeyTransition::Finish(resp) => q
                .bind(RecoveryPoint::Finished.as_str())
                .bind(i32::from(resp.status))
                .bind(&resp.body),
        };
        let row = q.fetch_one(&mut *tx).await?;
        let updated = key_from_row(&row)?;
        tx.commit().await?;
        if !records.is_empty() {
            self.inner.wake.bump();
        }
        Ok(updated)
    }

    async fn ensure_user_inner(&self, email: &str) -> Result<User, PgError> {
        sqlx::query("INSERT INTO users (email) VALUES ($1) ON CONFLICT (email) DO NOTHING")
            .bind(email)
            .execute(self.pool())
            .await?;
        let row = sqlx::query("SELECT id, email FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(self.pool())
            .await?;
        user_from_row(&row)
    }

    async fn one_ride(&self, where_: &'static str, id: i64) -> Result<Option<RideRow>, PgError> {
        let sql = format!("SELECT {RIDE_COLUMNS} FROM rides WHERE {where_} = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(ride_from_row).transpose()
    }
}

#[async_trait]
impl RideStore for PostgresStore {
    fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(self.pool())
            .await
            .map_err(PgError::from)?;
        Ok(())
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT id, email FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(self.pool())
            .await
            .map_err(PgError::from)?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn ensure_user(&self, email: &str) -> Result<User, StoreError> {
        Ok(self.ensure_user_inner(email).await?)
    }

    async fn begin(&self, req: &BeginRequest) -> Result<Begun, StoreError> {
        Ok(self.begin_inner(req).await?)
    }

    async fn run_phase(
        &self,
        key_id: i64,
        expected: RecoveryPoint,
        phase: &Phase,
        now_ms: i64,
    ) -> Result<KeyRecord, StoreError> {
        Ok(self
            .run_phase_inner(key_id, expected, phase, now_ms)
            .await?)
    }

    async fn unlock(&self, key_id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE idempotency_keys SET locked_at_ms = NULL WHERE id = $1")
            .bind(key_id)
            .execute(self.pool())
            .await
            .map_err(PgError::from)?;
        Ok(())
    }

    async fn key(&self, user_id: i64, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM idempotency_keys k \
             WHERE k.user_id = $1 AND k.idempotency_key = $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(key)
            .fetch_optional(self.pool())
            .await
            .map_err(PgError::from)?;
        Ok(row.as_ref().map(key_from_row).transpose()?)
    }

    async fn put_key(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError> {
        let sql = format!(
            "INSERT INTO idempotency_keys AS k (user_id, idempotency_key, created_at_ms, \
               last_run_at_ms, locked_at_ms, request_method, request_path, request_params, \
               recovery_point, response_code, response_body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {KEY_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key.user_id)
            .bind(&key.key)
            .bind(key.created_at_ms)
            .bind(key.last_run_at_ms)
            .bind(key.locked_at_ms)
            .bind(&key.request_method)
            .bind(&key.request_path)
            .bind(key.request_params.to_json())
            .bind(key.recovery_point.as_str())
            .bind(key.response.as_ref().map(|r| i32::from(r.status)))
            .bind(key.response.as_ref().map(|r| &r.body))
            .fetch_one(self.pool())
            .await
            .map_err(PgError::from)?;
        Ok(key_from_row(&row)?)
    }

    async fn ride_for_key(&self, key_id: i64) -> Result<Option<RideRow>, StoreError> {
        Ok(self.one_ride("idempotency_key_id", key_id).await?)
    }

    async fn ride(&self, ride_id: i64) -> Result<Option<RideRow>, StoreError> {
        Ok(self.one_ride("id", ride_id).await?)
    }

    async fn rides_for_user(
        &self,
        user_id: i64,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RideRow>, StoreError> {
        let sql = format!(
            "SELECT {RIDE_COLUMNS} FROM rides WHERE user_id = $1 \
             AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(before_id)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await
            .map_err(PgError::from)?;
        Ok(rows
            .iter()
            .map(ride_from_row)
            .collect::<Result<Vec<_>, _>>()?)
    }

    async fn completable_keys(
        &self,
        now_ms: i64,
        t: &Thresholds,
        limit: u32,
    ) -> Result<Vec<(KeyRecord, User)>, StoreError> {
        // The same rule as `KeyRecord::is_completable`, as SQL.
        let sql = format!(
            "SELECT {KEY_COLUMNS}, u.email FROM idempotency_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.recovery_point <> 'finished' AND k.created_at_ms < $1 - $2 \
               AND k.last_run_at_ms < $1 - $3 \
               AND (k.locked_at_ms IS NULL OR k.locked_at_ms <= $1 - $4) \
             ORDER BY k.id LIMIT $5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(t.completer_grace_ms)
            .bind(t.completer_last_run_ms)
            .bind(t.lock_timeout_ms)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await
            .map_err(PgError::from)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let key = key_from_row(row)?;
            let email: String = row.try_get("email").map_err(PgError::from)?;
            let user = User {
                id: key.user_id,
                email,
            };
            out.push((key, user));
        }
        Ok(out)
    }

    async fn reap_keys(&self, now_ms: i64, t: &Thresholds, limit: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM idempotency_keys WHERE id IN \
             (SELECT id FROM idempotency_keys WHERE created_at_ms < $1 - $2 ORDER BY id LIMIT $3)",
        )
        .bind(now_ms)
        .bind(t.reap_after_ms)
        .bind(i64::from(limit))
        .execute(self.pool())
        .await
        .map_err(PgError::from)?;
        Ok(done.rows_affected())
    }

    async fn truth(&self) -> Result<Truth, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM rides) AS rides, \
               (SELECT coalesce(sum(distance_mm), 0)::bigint FROM rides) AS distance, \
               (SELECT count(*) FROM idempotency_keys WHERE recovery_point <> 'finished') \
                 AS unfinished",
        )
        .fetch_one(self.pool())
        .await
        .map_err(PgError::from)?;
        let get = |name: &str| -> Result<u64, PgError> {
            let v: i64 = row.try_get(name)?;
            Ok(u64::try_from(v).unwrap_or_default())
        };
        Ok(Truth {
            rides: get("rides")?,
            distance_mm: get("distance")?,
            unfinished_keys: get("unfinished")?,
        })
    }
}
