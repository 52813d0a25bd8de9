//! [`RideStore`] on SQLite: the writes of the phase engine ([`crate::phase`]) for this
//! dialect, each phase in one `BEGIN IMMEDIATE` transaction on the single writer.
//!
//! Nothing here decides: the domain decides, the engine sequences, this file persists.

use async_trait::async_trait;
use domain::{KeyRecord, NewRecord, Phase, RecoveryPoint, Thresholds};
use ports::{BeginRequest, Begun, RideRow, RideStore, StoreError, Truth, User};
use sqlx::{Sqlite, Transaction};

use super::SqliteStore;
use super::error::Error;
use super::outbox::insert_staged;
use crate::phase::{self, Committed, NewAudit, NewRide, PhaseTx};
use crate::sql_rows::{
    KEY_COLUMNS, KeyColumns, KeyRow, KeyWithEmail, RIDE_COLUMNS, RideSqlRow, TruthRow, UserRow,
    decode_all, to_i64,
};

/// A sqlx error, translated once (see [`super::error`]).
fn db(e: impl Into<Error>) -> StoreError {
    e.into().into()
}

/// A phase transaction on the single writer connection.
struct SqliteTx(Transaction<'static, Sqlite>);

impl SqliteTx {
    async fn key_where(&mut self, filter: &str, a: i64, b: Option<&str>) -> KeyResult {
        let sql = format!("SELECT {KEY_COLUMNS} FROM idempotency_keys k WHERE {filter}");
        let q = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(sql)).bind(a);
        let q = match b {
            Some(b) => q.bind(b.to_owned()),
            None => q,
        };
        let row = q.fetch_optional(&mut *self.0).await.map_err(db)?;
        row.map(KeyRecord::try_from).transpose()
    }
}

type KeyResult = Result<Option<KeyRecord>, StoreError>;

#[async_trait]
impl PhaseTx for SqliteTx {
    // `BEGIN IMMEDIATE` already holds the database's one write lock: reads lock nothing more.
    async fn lock_key(&mut self, user_id: i64, key: &str) -> KeyResult {
        self.key_where(
            "k.user_id = ? AND k.idempotency_key = ?",
            user_id,
            Some(key),
        )
        .await
    }

    async fn lock_key_by_id(&mut self, key_id: i64) -> KeyResult {
        self.key_where("k.id = ?", key_id, None).await
    }

    async fn insert_key(&mut self, k: &KeyRecord) -> Result<i64, StoreError> {
        let c = KeyColumns::of(k);
        sqlx::query_scalar(
            "INSERT INTO idempotency_keys (user_id, idempotency_key, created_at_ms, \
             last_run_at_ms, locked_at_ms, request_method, request_path, request_params, \
             recovery_point, response_code, response_body) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(k.user_id)
        .bind(&k.key)
        .bind(k.created_at_ms)
        .bind(k.last_run_at_ms)
        .bind(k.locked_at_ms)
        .bind(&k.request_method)
        .bind(&k.request_path)
        .bind(c.request_params)
        .bind(k.recovery_point.as_str())
        .bind(c.response_code)
        .bind(c.response_body)
        .fetch_one(&mut *self.0)
        .await
        .map_err(db)
    }

    async fn update_key(&mut self, k: &KeyRecord) -> Result<(), StoreError> {
        let c = KeyColumns::of(k);
        sqlx::query(
            "UPDATE idempotency_keys SET last_run_at_ms = ?, locked_at_ms = ?, \
             recovery_point = ?, response_code = ?, response_body = ? WHERE id = ?",
        )
        .bind(k.last_run_at_ms)
        .bind(k.locked_at_ms)
        .bind(k.recovery_point.as_str())
        .bind(c.response_code)
        .bind(c.response_body)
        .bind(k.id)
        .execute(&mut *self.0)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn insert_ride(&mut self, r: &NewRide) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO rides (user_id, idempotency_key_id, origin_lat, origin_lon, \
             target_lat, target_lon, distance_mm, created_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(r.user_id)
        .bind(r.key_id)
        .bind(r.params.origin_lat())
        .bind(r.params.origin_lon())
        .bind(r.params.target_lat())
        .bind(r.params.target_lon())
        .bind(to_i64(r.distance_mm, "distance")?)
        .bind(r.created_at_ms)
        .fetch_one(&mut *self.0)
        .await
        .map_err(db)
    }

    async fn set_charge(&mut self, ride_id: i64, charge_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE rides SET charge_id = ? WHERE id = ?")
            .bind(charge_id)
            .bind(ride_id)
            .execute(&mut *self.0)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_audit(&mut self, a: &NewAudit<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_records (user_id, action, data, origin_ip, resource_type, \
             resource_id, created_at_ms) VALUES (?, ?, ?, ?, 'ride', ?, ?)",
        )
        .bind(a.user_id)
        .bind(&a.draft.action)
        .bind(a.draft.data.to_string())
        .bind(&a.draft.origin_ip)
        .bind(a.ride_id)
        .bind(a.created_at_ms)
        .execute(&mut *self.0)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn stage(&mut self, records: &[NewRecord]) -> Result<(), StoreError> {
        for record in records {
            insert_staged(&mut self.0, record).await.map_err(db)?;
        }
        Ok(())
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.0.commit().await.map_err(db)
    }
}

impl SqliteStore {
    async fn tx(&self) -> Result<SqliteTx, StoreError> {
        self.write().await.map(SqliteTx).map_err(db)
    }

    /// Wakes the streamer after a commit that staged records.
    fn woke<T>(&self, committed: Committed<T>) -> T {
        if committed.staged {
            self.inner.staged.notify_one();
        }
        committed.value
    }

    /// One statement in its own write transaction.
    async fn write_one(&self, sql: &'static str, binds: &[i64]) -> Result<u64, StoreError> {
        let mut tx = self.write().await.map_err(db)?;
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(*b);
        }
        let done = q.execute(&mut *tx).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn rides_where(&self, filter: &str, binds: &[i64]) -> Result<Vec<RideRow>, StoreError> {
        let sql = format!("SELECT {RIDE_COLUMNS} FROM rides {filter}");
        let mut q = sqlx::query_as::<_, RideSqlRow>(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(*b);
        }
        decode_all(q.fetch_all(self.reader()).await.map_err(db)?)
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
        let row = sqlx::query_as::<_, UserRow>("SELECT id, email FROM users WHERE email = ?")
            .bind(email)
            .fetch_optional(self.reader())
            .await
            .map_err(db)?;
        Ok(row.map(User::from))
    }

    async fn ensure_user(&self, email: &str) -> Result<User, StoreError> {
        let mut tx = self.write().await.map_err(db)?;
        sqlx::query("INSERT OR IGNORE INTO users (email) VALUES (?)")
            .bind(email)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let row = sqlx::query_as::<_, UserRow>("SELECT id, email FROM users WHERE email = ?")
            .bind(email)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(row.into())
    }

    async fn begin(&self, req: &BeginRequest) -> Result<Begun, StoreError> {
        Ok(self.woke(phase::begin(self.tx().await?, req).await?))
    }

    async fn run_phase(
        &self,
        key_id: i64,
        expected: RecoveryPoint,
        phase: &Phase,
        now_ms: i64,
    ) -> Result<KeyRecord, StoreError> {
        let tx = self.tx().await?;
        Ok(self.woke(phase::run_phase(tx, key_id, expected, phase, now_ms).await?))
    }

    async fn unlock(&self, key_id: i64) -> Result<(), StoreError> {
        let sql = "UPDATE idempotency_keys SET locked_at_ms = NULL WHERE id = ?";
        self.write_one(sql, &[key_id]).await.map(drop)
    }

    async fn key(&self, user_id: i64, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM idempotency_keys k \
             WHERE k.user_id = ? AND k.idempotency_key = ?"
        );
        let row = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(key)
            .fetch_optional(self.reader())
            .await
            .map_err(db)?;
        row.map(KeyRecord::try_from).transpose()
    }

    async fn put_key(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError> {
        phase::put_key(self.tx().await?, key).await
    }

    async fn ride_for_key(&self, key_id: i64) -> Result<Option<RideRow>, StoreError> {
        let rides = self
            .rides_where("WHERE idempotency_key_id = ?", &[key_id])
            .await?;
        Ok(rides.into_iter().next())
    }

    async fn ride(&self, ride_id: i64) -> Result<Option<RideRow>, StoreError> {
        Ok(self
            .rides_where("WHERE id = ?", &[ride_id])
            .await?
            .into_iter()
            .next())
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
    }

    async fn completable_keys(
        &self,
        now_ms: i64,
        t: &Thresholds,
        limit: u32,
    ) -> Result<Vec<(KeyRecord, User)>, StoreError> {
        // The domain's rule (`KeyRecord::is_completable`) as bounds.
        let b = t.completable_bounds(now_ms);
        let sql = format!(
            "SELECT {KEY_COLUMNS}, u.email AS user_email FROM idempotency_keys k \
             JOIN users u ON u.id = k.user_id \
             WHERE k.recovery_point <> 'finished' AND k.created_at_ms < ? \
               AND k.last_run_at_ms < ? AND (k.locked_at_ms IS NULL OR k.locked_at_ms <= ?) \
             ORDER BY k.id LIMIT ?"
        );
        let rows = sqlx::query_as::<_, KeyWithEmail>(sqlx::AssertSqlSafe(sql))
            .bind(b.created_before)
            .bind(b.last_run_before)
            .bind(b.lock_expired_at_or_before)
            .bind(i64::from(limit))
            .fetch_all(self.reader())
            .await
            .map_err(db)?;
        decode_all(rows)
    }

    async fn reap_keys(&self, now_ms: i64, t: &Thresholds, limit: u32) -> Result<u64, StoreError> {
        let sql = "DELETE FROM idempotency_keys WHERE id IN \
             (SELECT id FROM idempotency_keys WHERE created_at_ms < ? ORDER BY id LIMIT ?)";
        self.write_one(sql, &[t.reap_before(now_ms), i64::from(limit)])
            .await
    }

    async fn truth(&self) -> Result<Truth, StoreError> {
        // One statement, so the three numbers come from one snapshot.
        let row = sqlx::query_as::<_, TruthRow>(
            "SELECT (SELECT count(*) FROM rides) AS rides, \
               (SELECT coalesce(sum(distance_mm), 0) FROM rides) AS distance_mm, \
               (SELECT count(*) FROM idempotency_keys WHERE recovery_point <> 'finished') \
                 AS unfinished_keys",
        )
        .fetch_one(self.reader())
        .await
        .map_err(db)?;
        row.try_into()
    }
}
