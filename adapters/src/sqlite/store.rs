//! [`RideStore`] on SQLite: this dialect's statements for the phase engine
//! ([`crate::phase`]) and the shared reads ([`crate::sql_rows`]); each phase is one
//! `BEGIN IMMEDIATE` transaction on the single writer.
//!
//! Nothing here decides: the domain decides, the engine sequences, this file persists.

use domain::NewRecord;
use ports::{StoreError, User};
use sqlx::{Sqlite, SqliteConnection, Transaction};

use super::SqliteStore;
use super::error::Error;
use super::outbox::insert_staged_rows;
use crate::phase::{Committed, NewAudit};
use crate::sql_rows::{
    FinishSql, SqlDialect, StoreSql, UserRow, bind_staged, sql_phase_tx, sql_ride_store, store_sql,
};

/// Columns of `idempotency_keys AS k` for [`crate::sql_rows::KeyRow`].
macro_rules! key_columns {
    () => {
        "k.id, k.user_id, k.idempotency_key, k.created_at_ms, k.last_run_at_ms, \
         k.locked_at_ms, k.request_method, k.request_path, k.request_params, k.recovery_point, \
         k.response_code, k.response_body, k.ride_id"
    };
}

/// This dialect's statements. `BEGIN IMMEDIATE` already holds the database's one write lock,
/// so the locking reads are plain reads, and JSON is stored as text.
const SQL: StoreSql = store_sql!(key_columns, for_update = "", json = "");

/// JSON array of ride ids → [`crate::sql_rows::RideSqlRow`]s, by id.
const RIDES_BY_IDS: &str = concat!(
    "SELECT ",
    crate::sql_rows::ride_columns!(),
    " FROM rides WHERE id IN (SELECT value FROM json_each($1)) ORDER BY id"
);

/// The most staged records [`SqliteTx`]'s `audit_and_stage` writes in its one call.
const AUDIT_RECORDS_MAX: usize = 4;

/// A phase's audit record and `n` staged records as ONE call on the writer (index = `n`).
/// Binds: the audit record as `StoreSql::insert_audit` (6), then 8 per record.
static AUDIT_AND_STAGE_SQL: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    (0..=AUDIT_RECORDS_MAX)
        .map(|n| {
            let audit = "INSERT INTO audit_records (user_id, action, data, origin_ip, \
                 resource_type, resource_id, created_at_ms) VALUES ($1, $2, $3, $4, 'ride', $5, $6);";
            if n == 0 {
                audit.to_owned()
            } else {
                format!("{audit} {};", SqlDialect::Sqlite.insert_records(7, n))
            }
        })
        .collect()
});

/// A sqlx error, translated once (see [`super::error`]).
fn db(e: impl Into<Error>) -> StoreError {
    e.into().into()
}

/// A phase transaction on the single writer connection.
struct SqliteTx(Transaction<'static, Sqlite>);

impl SqliteTx {
    fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.0
    }
}

/// The charge's commit in one call (consecutive statements).
static FINISH: std::sync::LazyLock<FinishSql> =
    std::sync::LazyLock::new(|| FinishSql::new(SqlDialect::Sqlite));

sql_phase_tx!(SqliteTx, SQL, FINISH, {
    async fn stage(&mut self, records: &[NewRecord]) -> Result<(), StoreError> {
        insert_staged_rows(&mut self.0, records).await.map_err(db)
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.0.commit().await.map_err(db)
    }

    async fn audit_and_stage(
        &mut self,
        audit: Option<&NewAudit<'_>>,
        records: &[NewRecord],
    ) -> Result<(), StoreError> {
        let Some(a) = audit.filter(|_| records.len() <= AUDIT_RECORDS_MAX) else {
            if let Some(a) = audit {
                self.insert_audit(a).await?;
            }
            return insert_staged_rows(&mut self.0, records).await.map_err(db);
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(
            AUDIT_AND_STAGE_SQL[records.len()].as_str(),
        ))
        .bind(a.user_id)
        .bind(a.draft.action.clone())
        .bind(a.draft.data.to_string())
        .bind(a.draft.origin_ip.clone())
        .bind(a.ride_id)
        .bind(a.created_at_ms);
        for r in records {
            q = bind_staged!(q, r);
        }
        q.execute(&mut *self.0).await.map_err(db)?;
        Ok(())
    }

    /// The `rides_set_key_ride_id` trigger does it.
    fn ride_id_set_by_store(&self) -> bool {
        true
    }
});

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

    /// One statement in its own write transaction (every write goes through the writer).
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
}

sql_ride_store!(SqliteStore, SQL, reader, create in a transaction, {
    fn describe(&self) -> String {
        self.inner.url.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        SqliteStore::ping(self).await
    }

    async fn ensure_user(&self, email: &str) -> Result<User, StoreError> {
        let mut tx = self.write().await.map_err(db)?;
        sqlx::query("INSERT OR IGNORE INTO users (email) VALUES (?)")
            .bind(email)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let row = sqlx::query_as::<_, UserRow>(SQL.user_by_email)
            .bind(email)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(row.into())
    }

    async fn unlock(&self, key_id: i64) -> Result<(), StoreError> {
        self.write_one(SQL.unlock, &[key_id]).await.map(drop)
    }

    /// One `BEGIN IMMEDIATE` transaction of set-based statements: the user's rides deleted
    /// (ids and distances returned), then keys, audit records and the user, and the
    /// `ride.deleted` records staged as a phase stages its records.
    async fn forget_user(&self, email: &str, now_ms: i64) -> Result<ports::Forgotten, StoreError> {
        let mut tx = self.write().await.map_err(db)?;
        let (user_id, records, keys) =
            crate::sql_rows::forget_user_deletes!(tx, email, now_ms, "");
        super::outbox::insert_staged_rows(&mut tx, &records)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        if !records.is_empty() {
            self.inner.staged.notify_one();
        }
        Ok(ports::Forgotten {
            user_id,
            rides: records.len() as u64,
            keys,
        })
    }

    /// One statement: the ids travel as one JSON array (`json_each`), whatever their number.
    async fn rides_by_ids(&self, ids: &[i64]) -> Result<Vec<ports::RideRow>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query_as::<_, crate::sql_rows::RideSqlRow>(RIDES_BY_IDS)
            .bind(serde_json::Value::from(ids).to_string())
            .fetch_all(self.reader())
            .await
            .map_err(db)?;
        crate::sql_rows::decode_all(rows)
    }

    async fn reap_keys(
        &self,
        now_ms: i64,
        t: &domain::Thresholds,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let binds = [t.reap_before(now_ms), i64::from(limit)];
        self.write_one(SQL.reap, &binds).await
    }
});
