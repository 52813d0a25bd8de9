//! [`RideStore`] on Postgres: this dialect's statements for the phase engine
//! ([`crate::phase`]) and the shared reads ([`crate::sql_rows`]).
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
//! both SQL stores share their row structs and statements' bind order.

use domain::NewRecord;
use ports::{StoreError, User};
use sqlx::{PgConnection, Postgres, Transaction};

use super::PostgresStore;
use super::error::PgError;
use super::outbox::stage_in_phase;
use crate::phase::Committed;
use crate::sql_rows::{StoreSql, UserRow, sql_phase_tx, sql_ride_store, store_sql};

/// Columns of `idempotency_keys AS k` for [`crate::sql_rows::KeyRow`], JSON as text.
macro_rules! key_columns {
    () => {
        "k.id, k.user_id, k.idempotency_key, k.created_at_ms, k.last_run_at_ms, \
         k.locked_at_ms, k.request_method, k.request_path, \
         k.request_params::text AS request_params, k.recovery_point, \
         k.response_code::bigint AS response_code, k.response_body::text AS response_body"
    };
}

/// This dialect's statements: a locking read locks the key row until the end of the phase (a
/// concurrent phase on the key waits there, then reads its commit).
const SQL: StoreSql = store_sql!(key_columns, for_update = " FOR UPDATE", json = "::jsonb");

/// A sqlx error, translated once (see [`super::error`]).
fn db(e: impl Into<PgError>) -> StoreError {
    e.into().into()
}

/// A phase transaction.
struct PgTx {
    tx: Transaction<'static, Postgres>,
}

impl PgTx {
    fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

sql_phase_tx!(PgTx, SQL, {
    async fn stage(&mut self, records: &[NewRecord]) -> Result<(), StoreError> {
        Ok(stage_in_phase(&mut self.tx, records).await?)
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(db)
    }
});

impl PostgresStore {
    /// Starts a phase: a `READ COMMITTED` transaction (named explicitly, so a server whose
    /// `default_transaction_isolation` differs changes nothing).
    async fn tx(&self) -> Result<PgTx, StoreError> {
        let tx = self
            .inner
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(db)?;
        Ok(PgTx { tx })
    }

    /// Wakes every process's waiters after a commit that staged records (see
    /// [`super::notify`]: phases do not `NOTIFY` in their transaction).
    fn woke<T>(&self, committed: Committed<T>) -> T {
        if committed.staged {
            self.inner.wake.announce();
        }
        committed.value
    }
}

sql_ride_store!(PostgresStore, SQL, pool, {
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

    async fn ensure_user(&self, email: &str) -> Result<User, StoreError> {
        sqlx::query("INSERT INTO users (email) VALUES ($1) ON CONFLICT (email) DO NOTHING")
            .bind(email)
            .execute(self.pool())
            .await
            .map_err(db)?;
        let row = sqlx::query_as::<_, UserRow>(SQL.user_by_email)
            .bind(email)
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
        Ok(row.into())
    }

    async fn unlock(&self, key_id: i64) -> Result<(), StoreError> {
        sqlx::query(SQL.unlock)
            .bind(key_id)
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn reap_keys(
        &self,
        now_ms: i64,
        t: &domain::Thresholds,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(SQL.reap)
            .bind(t.reap_before(now_ms))
            .bind(i64::from(limit))
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(done.rows_affected())
    }
});
