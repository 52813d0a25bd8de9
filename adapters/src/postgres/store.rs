//! [`RideStore`] on Postgres: the writes of the phase engine ([`crate::phase`]) for this
//! dialect.
//!
//! Each phase is one `READ COMMITTED` transaction whose first statement locks its
//! idempotency key row (`SELECT … FOR UPDATE`); everything else it does is a write guarded by a
//! unique constraint. Two requests racing on one key are serialized by the row lock, and the
//! loser sees the winner's commit: `begin` answers `InProgress` (or [`StoreError::Conflict`]
//! when both tried to create the key: unique violation), `run_phase` answers `Conflict`
//! because the key is no longer where it expected. Requests with different keys never wait
//! for each other. See the module docs for why this is as safe as `SERIALIZABLE` here.
//!
//! JSON columns travel as text (cast to `jsonb` on the way in, to `text` on the way out), so
//! both SQL stores share their row structs ([`crate::sql_rows`]).

use async_trait::async_trait;
use domain::{KeyRecord, NewRecord, Phase, RecoveryPoint, Thresholds};
use ports::{BeginRequest, Begun, RideRow, RideStore, StoreError, Truth, User};
use sqlx::{Postgres, Transaction};

use super::PostgresStore;
use super::error::PgError;
use super::outbox::stage;
use crate::phase::{self, Committed, NewAudit, NewRide, PhaseTx};
use crate::sql_rows::{
    KeyColumns, KeyRow, KeyWithEmail, RIDE_COLUMNS, RideSqlRow, TruthRow, UserRow, decode_all,
    to_i64,
};

/// Columns of `idempotency_keys AS k` for [`KeyRow`], JSON as text.
const KEY_COLUMNS: &str = "k.id, k.user_id, k.idempotency_key, k.created_at_ms, \
     k.last_run_at_ms, k.locked_at_ms, k.request_method, k.request_path, \
     k.request_params::text AS request_params, k.recovery_point, \
     k.response_code::bigint AS response_code, k.response_body::text AS response_body";

/// A sqlx error, translated once (see [`super::error`]).
fn db(e: impl Into<PgError>) -> StoreError {
    e.into().into()
}

/// A phase transaction; `channel` is the outbox's `NOTIFY` channel.
struct PgTx<'a> {
    tx: Transaction<'static, Postgres>,
    channel: &'a str,
}

type KeyResult = Result<Option<KeyRecord>, StoreError>;

#[async_trait]
impl PhaseTx for PgTx<'_> {
    async fn lock_key(&mut self, user_id: i64, key: &str) -> KeyResult {
        // A concurrent phase on this key waits here, then reads its commit.
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM idempotency_keys k \
             WHERE k.user_id = $1 AND k.idempotency_key = $2 FOR UPDATE"
        );
        let row = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(db)?;
        row.map(KeyRecord::try_from).transpose()
    }

    async fn lock_key_by_id(&mut self, key_id: i64) -> KeyResult {
        let sql =
            format!("SELECT {KEY_COLUMNS} FROM idempotency_keys k WHERE k.id = $1 FOR UPDATE");
        let row = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(sql))
            .bind(key_id)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(db)?;
        row.map(KeyRecord::try_from).transpose()
    }

    async fn insert_key(&mut self, k: &KeyRecord) -> Result<i64, StoreError> {
        let c = KeyColumns::of(k);
        sqlx::query_scalar(
            "INSERT INTO idempotency_keys (user_id, idempotency_key, created_at_ms, \
               last_run_at_ms, locked_at_ms, request_method, request_path, request_params, \
               recovery_point, response_code, response_body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11::jsonb) RETURNING id",
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
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db)
    }

    async fn update_key(&mut self, k: &KeyRecord) -> Result<(), StoreError> {
        let c = KeyColumns::of(k);
        sqlx::query(
            "UPDATE idempotency_keys SET last_run_at_ms = $2, locked_at_ms = $3, \
               recovery_point = $4, response_code = $5, response_body = $6::jsonb \
             WHERE id = $1",
        )
        .bind(k.id)
        .bind(k.last_run_at_ms)
        .bind(k.locked_at_ms)
        .bind(k.recovery_point.as_str())
        .bind(c.response_code)
        .bind(c.response_body)
        .execute(&mut *self.tx)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn insert_ride(&mut self, r: &NewRide) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO rides (user_id, idempotency_key_id, origin_lat, origin_lon, \
               target_lat, target_lon, distance_mm, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(r.user_id)
        .bind(r.key_id)
        .bind(r.params.origin_lat())
        .bind(r.params.origin_lon())
        .bind(r.params.target_lat())
        .bind(r.params.target_lon())
        .bind(to_i64(r.distance_mm, "distance")?)
        .bind(r.created_at_ms)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db)
    }

    async fn set_charge(&mut self, ride_id: i64, charge_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE rides SET charge_id = $2 WHERE id = $1")
            .bind(ride_id)
            .bind(charge_id)
            .execute(&mut *self.tx)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_audit(&mut self, a: &NewAudit<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_records (user_id, action, data, origin_ip, resource_type, \
               resource_id, created_at_ms) VALUES ($1, $2, $3, $4, 'ride', $5, $6)",
        )
        .bind(a.user_id)
        .bind(&a.draft.action)
        .bind(&a.draft.data)
        .bind(&a.draft.origin_ip)
        .bind(a.ride_id)
        .bind(a.created_at_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn stage(&mut self, records: &[NewRecord]) -> Result<(), StoreError> {
        Ok(stage(&mut self.tx, self.channel, records).await?)
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(db)
    }
}

impl PostgresStore {
    /// Starts a phase: a `READ COMMITTED` transaction (named explicitly, so a server whose
    /// `default_transaction_isolation` differs changes nothing).
    async fn tx(&self) -> Result<PgTx<'_>, StoreError> {
        let tx = self
            .inner
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(db)?;
        Ok(PgTx {
            tx,
            channel: self.inner.wake.channel(),
        })
    }

    /// Wakes this process's waiters after a commit that staged records (others get the
    /// `NOTIFY`).
    fn woke<T>(&self, committed: Committed<T>) -> T {
        if committed.staged {
            self.inner.wake.bump();
        }
        committed.value
    }

    async fn rides_where(&self, filter: &str, binds: &[i64]) -> Result<Vec<RideRow>, StoreError> {
        let sql = format!("SELECT {RIDE_COLUMNS} FROM rides {filter}");
        let mut q = sqlx::query_as::<_, RideSqlRow>(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(*b);
        }
        decode_all(q.fetch_all(self.pool()).await.map_err(db)?)
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
            .map_err(db)?;
        Ok(())
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query_as::<_, UserRow>("SELECT id, email FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(self.pool())
            .await
            .map_err(db)?;
        Ok(row.map(User::from))
    }

    async fn ensure_user(&self, email: &str) -> Result<User, StoreError> {
        sqlx::query("INSERT INTO users (email) VALUES ($1) ON CONFLICT (email) DO NOTHING")
            .bind(email)
            .execute(self.pool())
            .await
            .map_err(db)?;
        let row = sqlx::query_as::<_, UserRow>("SELECT id, email FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
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
        sqlx::query("UPDATE idempotency_keys SET locked_at_ms = NULL WHERE id = $1")
            .bind(key_id)
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn key(&self, user_id: i64, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM idempotency_keys k \
             WHERE k.user_id = $1 AND k.idempotency_key = $2"
        );
        let row = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(key)
            .fetch_optional(self.pool())
            .await
            .map_err(db)?;
        row.map(KeyRecord::try_from).transpose()
    }

    async fn put_key(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError> {
        phase::put_key(self.tx().await?, key).await
    }

    async fn ride_for_key(&self, key_id: i64) -> Result<Option<RideRow>, StoreError> {
        let rides = self
            .rides_where("WHERE idempotency_key_id = $1", &[key_id])
            .await?;
        Ok(rides.into_iter().next())
    }

    async fn ride(&self, ride_id: i64) -> Result<Option<RideRow>, StoreError> {
        Ok(self
            .rides_where("WHERE id = $1", &[ride_id])
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
            "WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
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
             WHERE k.recovery_point <> 'finished' AND k.created_at_ms < $1 \
               AND k.last_run_at_ms < $2 AND (k.locked_at_ms IS NULL OR k.locked_at_ms <= $3) \
             ORDER BY k.id LIMIT $4"
        );
        let rows = sqlx::query_as::<_, KeyWithEmail>(sqlx::AssertSqlSafe(sql))
            .bind(b.created_before)
            .bind(b.last_run_before)
            .bind(b.lock_expired_at_or_before)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
        decode_all(rows)
    }

    async fn reap_keys(&self, now_ms: i64, t: &Thresholds, limit: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM idempotency_keys WHERE id IN \
             (SELECT id FROM idempotency_keys WHERE created_at_ms < $1 ORDER BY id LIMIT $2)",
        )
        .bind(t.reap_before(now_ms))
        .bind(i64::from(limit))
        .execute(self.pool())
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn truth(&self) -> Result<Truth, StoreError> {
        let row = sqlx::query_as::<_, TruthRow>(
            "SELECT (SELECT count(*) FROM rides) AS rides, \
               (SELECT coalesce(sum(distance_mm), 0)::bigint FROM rides) AS distance_mm, \
               (SELECT count(*) FROM idempotency_keys WHERE recovery_point <> 'finished') \
                 AS unfinished_keys",
        )
        .fetch_one(self.pool())
        .await
        .map_err(db)?;
        row.try_into()
    }
}
