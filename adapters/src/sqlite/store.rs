//! [`RideStore`] on SQLite: every phase is one `BEGIN IMMEDIATE` transaction.
//!
//! The domain decides ([`KeyRecord::decide`], [`Phase`]); this file only loads what the
//! decision needs and commits what was decided.

use std::collections::HashMap;

use async_trait::async_trait;
use domain::{KeyDecision, KeyRecord, KeyTransition, Phase, RecoveryPoint, RideParams, RideWrite};
use domain::{StoredResponse, Thresholds};
use ports::{BeginRequest, Begun, RideRow, RideStore, StoreError, Truth, User};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use super::SqliteStore;
use super::error::{Error, corrupt};
use super::outbox::insert_staged;

/// The columns [`key_from_row`] reads, in `SELECT` order.
const KEY_COLUMNS: &str = "k.id, k.user_id, k.idempotency_key, k.created_at_ms, \
     k.last_run_at_ms, k.locked_at_ms, k.request_method, k.request_path, k.request_params, \
     k.recovery_point, k.response_code, k.response_body";

/// The columns [`ride_from_row`] reads, in `SELECT` order.
const RIDE_COLUMNS: &str = "id, user_id, idempotency_key_id, origin_lat, origin_lon, \
     target_lat, target_lon, distance_mm, charge_id, created_at_ms";

/// Encodes parameters as the JSON stored in `request_params`.
fn params_to_json(p: &RideParams) -> Result<String, Error> {
    Ok(serde_json::to_string(p)?)
}

/// Decodes `request_params` exactly.
///
/// serde_json's default float parser may be one ULP off for long decimals, which would turn a
/// retry into a parameter mismatch. So the numbers are taken as raw text and parsed by the
/// standard library, whose parser is exact (the JSON was written by the shortest round-trip
/// formatter).
fn params_from_json(text: &str) -> Result<RideParams, Error> {
    let raw: HashMap<&str, &serde_json::value::RawValue> = serde_json::from_str(text)?;
    let get = |name: &str| -> Result<f64, Error> {
        raw.get(name)
            .and_then(|v| v.get().parse::<f64>().ok())
            .ok_or_else(|| corrupt(format!("request_params without a number {name}: {text}")))
    };
    RideParams::new(
        get("origin_lat")?,
        get("origin_lon")?,
        get("target_lat")?,
        get("target_lon")?,
    )
    .map_err(|e| corrupt(format!("request_params {text}: {e}")))
}

fn key_from_row(row: &SqliteRow) -> Result<KeyRecord, Error> {
    let rp: String = row.try_get("recovery_point")?;
    let recovery_point = RecoveryPoint::parse(&rp).map_err(corrupt)?;
    let code: Option<i64> = row.try_get("response_code")?;
    let body: Option<String> = row.try_get("response_body")?;
    let response = match (code, body) {
        (Some(code), Some(body)) => Some(StoredResponse {
            status: u16::try_from(code).map_err(|_| corrupt(format!("response code {code}")))?,
            body: serde_json::from_str(&body)?,
        }),
        _ => None,
    };
    let params: String = row.try_get("request_params")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        key: row.try_get("idempotency_key")?,
        created_at_ms: row.try_get("created_at_ms")?,
        last_run_at_ms: row.try_get("last_run_at_ms")?,
        locked_at_ms: row.try_get("locked_at_ms")?,
        request_method: row.try_get("request_method")?,
        request_path: row.try_get("request_path")?,
        request_params: params_from_json(&params)?,
        recovery_point,
        response,
    })
}

fn ride_from_row(row: &SqliteRow) -> Result<RideRow, Error> {
    let params = RideParams::new(
        row.try_get("origin_lat")?,
        row.try_get("origin_lon")?,
        row.try_get("target_lat")?,
        row.try_get("target_lon")?,
    )
    .map_err(|e| corrupt(format!("ride coordinates: {e}")))?;
    let distance_mm: i64 = row.try_get("distance_mm")?;
    Ok(RideRow {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        idempotency_key_id: row.try_get("idempotency_key_id")?,
        params,
        distance_mm: u64::try_from(distance_mm)
            .map_err(|_| corrupt(format!("distance {distance_mm}")))?,
        charge_id: row.try_get("charge_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

/// Converts an unsigned quantity for SQLite's signed integers.
fn to_i64(v: u64, what: &str) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| Error::Store(StoreError::Other(format!("{what} too large: {v}"))))
}

async fn key_by_id(
    tx: &mut Transaction<'static, Sqlite>,
    id: i64,
) -> Result<Option<KeyRecord>, Error> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM idempotency_keys k WHERE k.id = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(key_from_row).transpose()
}

async fn key_by_text(
    ex: impl sqlx::SqliteExecutor<'_>,
    user_id: i64,
    key: &str,
) -> Result<Option<KeyRecord>, Error> {
    let sql = format!(
        "SELECT {KEY_COLUMNS} FROM idempotency_keys k \
         WHERE k.user_id = ? AND k.idempotency_key = ?"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .bind(key)
        .fetch_optional(ex)
        .await?;
    row.as_ref().map(key_from_row).transpose()
}

/// Inserts a key as given; returns its new id.
async fn insert_key(tx: &mut Transaction<'static, Sqlite>, k: &KeyRecord) -> Result<i64, Error> {
    let (code, body) = match &k.response {
        Some(r) => (
            Some(i64::from(r.status)),
            Some(serde_json::to_string(&r.body)?),
        ),
        None => (None, None),
    };
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (user_id, idempotency_key, created_at_ms, last_run_at_ms, \
         locked_at_ms, request_method, request_path, request_params, recovery_point, \
         response_code, response_body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(k.user_id)
    .bind(&k.key)
    .bind(k.created_at_ms)
    .bind(k.last_run_at_ms)
    .bind(k.locked_at_ms)
    .bind(&k.request_method)
    .bind(&k.request_path)
    .bind(params_to_json(&k.request_params)?)
    .bind(k.recovery_point.as_str())
    .bind(code)
    .bind(body)
    .fetch_one(&mut **tx)
    .await?;
    Ok(id)
}

impl SqliteStore {
    async fn begin_tx(&self, req: &BeginRequest) -> Result<Begun, Error> {
        let mut tx = self.write().await?;
        let existing = key_by_text(&mut *tx, req.user_id, req.key.as_str()).await?;
        let begun =
            match KeyRecord::decide(existing.as_ref(), &req.params, req.now_ms, &req.thresholds) {
                KeyDecision::Create => {
                    let mut key = KeyRecord {
                        id: 0,
                        user_id: req.user_id,
                        key: req.key.as_str().to_owned(),
                        created_at_ms: req.now_ms,
                        last_run_at_ms: req.now_ms,
                        locked_at_ms: Some(req.now_ms),
                        request_method: req.method.clone(),
                        request_path: req.path.clone(),
                        request_params: req.params,
                        recovery_point: RecoveryPoint::Started,
                        response: None,
                    };
                    key.id = insert_key(&mut tx, &key).await?;
                    Begun::Proceed(key)
                }
                KeyDecision::Resume => {
                    let mut key = existing.ok_or_else(|| corrupt("resume without a key"))?;
                    sqlx::query(
                    "UPDATE idempotency_keys SET locked_at_ms = ?, last_run_at_ms = ? WHERE id = ?",
                )
                .bind(req.now_ms)
                .bind(req.now_ms)
                .bind(key.id)
                .execute(&mut *tx)
                .await?;
                    key.locked_at_ms = Some(req.now_ms);
                    key.last_run_at_ms = req.now_ms;
                    Begun::Proceed(key)
                }
                KeyDecision::Replay(r) => Begun::Replay(r),
                KeyDecision::Mismatch => Begun::Mismatch,
                KeyDecision::InProgress => Begun::InProgress,
            };
        tx.commit().await?;
        Ok(begun)
    }

    async fn run_phase_tx(
        &self,
        key_id: i64,
        expected: RecoveryPoint,
        phase: &Phase,
        now_ms: i64,
    ) -> Result<(KeyRecord, bool), Error> {
        let mut tx = self.write().await?;
        let mut key = key_by_id(&mut tx, key_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("idempotency key {key_id}")))?;
        if key.recovery_point != expected {
            return Err(StoreError::Conflict(format!(
                "idempotency key {key_id} is at {}, not {}",
                key.recovery_point.as_str(),
                expected.as_str()
            ))
            .into());
        }

        let ride_id = match &phase.ride {
            RideWrite::Insert {
                user_id,
                params,
                distance_mm,
            } => {
                sqlx::query_scalar(
                    "INSERT INTO rides (user_id, idempotency_key_id, origin_lat, origin_lon, \
                     target_lat, target_lon, distance_mm, charge_id, created_at_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?) RETURNING id",
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
                let done = sqlx::query("UPDATE rides SET charge_id = ? WHERE id = ?")
                    .bind(charge_id)
                    .bind(ride_id)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("ride {ride_id}")).into());
                }
                *ride_id
            }
            RideWrite::Existing(ride_id) => *ride_id,
        };

        if let Some(audit) = &phase.audit {
            sqlx::query(
                "INSERT INTO audit_records (user_id, action, data, origin_ip, resource_type, \
                 resource_id, created_at_ms) VALUES (?, ?, ?, ?, 'ride', ?, ?)",
            )
            .bind(key.user_id)
            .bind(&audit.action)
            .bind(serde_json::to_string(&audit.data)?)
            .bind(&audit.origin_ip)
            .bind(ride_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }

        for draft in &phase.records {
            insert_staged(&mut tx, &draft.build(ride_id, now_ms)).await?;
        }

        match &phase.then {
            KeyTransition::To(rp) => {
                sqlx::query("UPDATE idempotency_keys SET recovery_point = ? WHERE id = ?")
                    .bind(rp.as_str())
                    .bind(key_id)
                    .execute(&mut *tx)
                    .await?;
                key.recovery_point = *rp;
            }
            KeyTransition::Finish(resp) => {
                sqlx::query(
                    "UPDATE idempotency_keys SET recovery_point = 'finished', response_code = ?, \
                     response_body = ?, locked_at_ms = NULL WHERE id = ?",
                )
                .bind(i64::from(resp.status))
                .bind(serde_json::to_string(&resp.body)?)
                .bind(key_id)
                .execute(&mut *tx)
                .await?;
                key.recovery_point = RecoveryPoint::Finished;
                key.response = Some(resp.clone());
                key.locked_at_ms = None;
            }
        }
        tx.commit().await?;
        Ok((key, !phase.records.is_empty()))
    }

    async fn ensure_user_tx(&self, email: &str) -> Result<User, Error> {
        let mut tx = self.write().await?;
        sqlx::query("INSERT OR IGNORE INTO users (email) VALUES (?)")
            .bind(email)
            .execute(&mut *tx)
            .await?;
        let (id, email): (i64, String) =
            sqlx::query_as("SELECT id, email FROM users WHERE email = ?")
                .bind(email)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(User { id, email })
    }

    async fn put_key_tx(&self, key: &KeyRecord) -> Result<KeyRecord, Error> {
        let mut tx = self.write().await?;
        let id = insert_key(&mut tx, key).await?;
        tx.commit().await?;
        Ok(KeyRecord { id, ..key.clone() })
    }

    async fn unlock_tx(&self, key_id: i64) -> Result<(), Error> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE idempotency_keys SET locked_at_ms = NULL WHERE id = ?")
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rides_where(&self, filter: &str, binds: &[i64]) -> Result<Vec<RideRow>, Error> {
        let sql = format!("SELECT {RIDE_COLUMNS} FROM rides {filter}");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(*b);
        }
        let rows = q.fetch_all(self.reader()).await?;
        rows.iter().map(ride_from_row).collect()
    }

    async fn completable_tx(
        &self,
        now_ms: i64,
        t: &Thresholds,
        limit: u32,
    ) -> Result<Vec<(KeyRecord, User)>, Error> {
        // KeyRecord::is_completable, in SQL: unfinished, older than the grace period, not run
        // recently, and not locked (no lock, or a lock at least lock_timeout old).
        let sql = format!(
            "SELECT {KEY_COLUMNS}, u.email AS user_email FROM idempotency_keys k \
             JOIN users u ON u.id = k.user_id \
             WHERE k.recovery_point <> 'finished' AND k.created_at_ms < ? \
               AND k.last_run_at_ms < ? \
               AND (k.locked_at_ms IS NULL OR k.locked_at_ms <= ?) \
             ORDER BY k.id LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms.saturating_sub(t.completer_grace_ms))
            .bind(now_ms.saturating_sub(t.completer_last_run_ms))
            .bind(now_ms.saturating_sub(t.lock_timeout_ms))
            .bind(i64::from(limit))
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|row| {
                let key = key_from_row(row)?;
                let user = User {
                    id: key.user_id,
                    email: row.try_get("user_email")?,
                };
                Ok((key, user))
            })
            .collect()
    }

    async fn reap_tx(&self, now_ms: i64, t: &Thresholds, limit: u32) -> Result<u64, Error> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "DELETE FROM idempotency_keys WHERE id IN \
             (SELECT id FROM idempotency_keys WHERE created_at_ms < ? ORDER BY id LIMIT ?)",
        )
        .bind(now_ms.saturating_sub(t.reap_after_ms))
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn truth_tx(&self) -> Result<Truth, Error> {
        // One read transaction, so the three numbers come from one snapshot.
        let mut tx = self.reader().begin().await?;
        let (rides, distance): (i64, i64) =
            sqlx::query_as("SELECT count(*), coalesce(sum(distance_mm), 0) FROM rides")
                .fetch_one(&mut *tx)
                .await?;
        let unfinished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM idempotency_keys WHERE recovery_point <> 'finished'",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let n = |v: i64| u64::try_from(v).map_err(|_| corrupt(format!("negative count {v}")));
        Ok(Truth {
            rides: n(rides)?,
            distance_mm: n(distance)?,
            unfinished_keys: n(unfinished)?,
        })
    }
}

#[async_trait]
impl RideStore for SqliteStore {
    fn describe(&self) -> String {
        self.inner.url.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        SqliteStore::ping(self).await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT id, email FROM users WHERE email = ?")
                .bind(email)
                .fetch_optional(self.reader())
                .await
                .map_err(Error::from)?;
        Ok(row.map(|(id, email)| User { id, email }))
    }

    async fn ensure_user(&self, email: &str) -> Result<User, StoreError> {
        self.ensure_user_tx(email).await.map_err(Into::into)
    }

    async fn begin(&self, req: &BeginRequest) -> Result<Begun, StoreError> {
        self.begin_tx(req).await.map_err(Into::into)
    }

    async fn run_phase(
        &self,
        key_id: i64,
        expected: RecoveryPoint,
        phase: &Phase,
        now_ms: i64,
    ) -> Result<KeyRecord, StoreError> {
        let (key, staged) = self.run_phase_tx(key_id, expected, phase, now_ms).await?;
        if staged {
            self.inner.staged.notify_one();
        }
        Ok(key)
    }

    async fn unlock(&self, key_id: i64) -> Result<(), StoreError> {
        self.unlock_tx(key_id).await.map_err(Into::into)
    }

    async fn key(&self, user_id: i64, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        key_by_text(self.reader(), user_id, key)
            .await
            .map_err(Into::into)
    }

    async fn put_key(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError> {
        self.put_key_tx(key).await.map_err(Into::into)
    }

    async fn ride_for_key(&self, key_id: i64) -> Result<Option<RideRow>, StoreError> {
        let rides = self
            .rides_where("WHERE idempotency_key_id = ?", &[key_id])
            .await?;
        Ok(rides.into_iter().next())
    }

    async fn ride(&self, ride_id: i64) -> Result<Option<RideRow>, StoreError> {
        let rides = self.rides_where("WHERE id = ?", &[ride_id]).await?;
        Ok(rides.into_iter().next())
    }

    async fn rides_for_user(
        &self,
        user_id: i64,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RideRow>, StoreError> {
        let before = before_id.unwrap_or(i64::MAX);
        self.rides_where(
            "WHERE user_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            &[user_id, before, i64::from(limit)],
        )
        .await
        .map_err(Into::into)
    }

    async fn completable_keys(
        &self,
        now_ms: i64,
        thresholds: &Thresholds,
        limit: u32,
    ) -> Result<Vec<(KeyRecord, User)>, StoreError> {
        self.completable_tx(now_ms, thresholds, limit)
            .await
            .map_err(Into::into)
    }

    async fn reap_keys(
        &self,
        now_ms: i64,
        thresholds: &Thresholds,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.reap_tx(now_ms, thresholds, limit)
            .await
            .map_err(Into::into)
    }

    async fn truth(&self) -> Result<Truth, StoreError> {
        self.truth_tx().await.map_err(Into::into)
    }
}
